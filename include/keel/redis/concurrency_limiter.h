// keel/redis/concurrency_limiter.h: "at most N in flight" shared by every process through Redis,
// with leases so that permits held by a process that died come back on their own.
//
// Defines `keel::redis::ConcurrencyLimiter`, its move-only `Permit` and
// `keel::redis::ConcurrencyLimiterStats`.
//
// Semantics: the shared counterpart of keel::limit::ConcurrencyLimiter. For each key, a sorted set
// `{<name>:<key>}:cc` holds the ids of the permits held, scored by when their lease expires
// (server time, TIME). TryAcquire is one Lua script: it first drops the permits whose lease has
// run out (their holder died, or stalled longer than `lease` without Renew), then grants a permit
// if fewer than `max` remain. Releasing removes the id (ZREM). The set expires `lease` after the
// last grant or renewal, so idle keys vanish.
//
// Difference from in-process: a holder that lives longer than `lease` must Renew() its permit,
// or its slot is handed to someone else (Renew then reports ABORTED).
//
// Failures follow `fail_mode` (keel/redis/fail_mode.h): kOpen hands out a permit that is
// not recorded in Redis (held() is true, releasing it does nothing); kClosed returns
// UNAVAILABLE. A Permit's destructor releases with `release_timeout`; a release that fails is
// reclaimed by the lease.
//
// Thread safety: thread-safe. A Permit is not (move it, do not share it). REQUIRES: the limiter
// outlives its permits.
//
//   auto chats = keel::redis::ConcurrencyLimiter::Create(
//       {.name = "chat", .max = 5, .lease = 2min}, *client).value();
//   auto permit = chats->TryAcquire(Deadline::After(20ms), user_id);
//   if (!permit.ok()) return permit.status();   // UNAVAILABLE (kClosed), INVALID_ARGUMENT
//   if (!*permit) return TooManyRequests();
//   Stream(reply);                                // released when `*permit` goes out of scope
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "keel/async/future.h"
#include "keel/deadline.h"
#include "keel/redis/client.h"
#include "keel/redis/fail_mode.h"

namespace keel::redis {

struct ConcurrencyLimiterStats {
  uint64_t acquired_total = 0;     // permits granted by Redis
  uint64_t rejected_total = 0;     // refused by Redis: the key already held `max`
  uint64_t fail_open_total = 0;    // unrecorded permits handed out because Redis failed (kOpen)
  uint64_t fail_closed_total = 0;  // refused with UNAVAILABLE because Redis failed (kClosed)
};

class ConcurrencyLimiter {
 public:
  struct Options {
    // Names the limit (hash tag `{name:key}`, errors). Required: 1 to 128 bytes.
    std::string name;
    // The most permits held at once per key. Required: must be >= 1.
    int64_t max = 0;
    // How long a permit stays held without Renew(): the time after which a dead holder's slot is
    // reclaimed. Longer than the work a permit guards (or renew within it); shorter means faster
    // recovery after a crash. Must be >= 1 ms. Default: 60 s.
    Duration lease = std::chrono::seconds(60);
    // When Redis fails. Default: kOpen.
    FailMode fail_mode = FailMode::kOpen;
    // Deadline of the release a Permit's destructor sends. Default: 100 ms.
    Duration release_timeout = std::chrono::milliseconds(100);
  };

  class Permit {
   public:
    Permit(Permit&& other) noexcept { *this = std::move(other); }
    Permit& operator=(Permit&& other) noexcept;
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;
    ~Permit() { Release(); }

    // Gives the slot back now (ZREM); later calls and the destructor do nothing. Best effort: if
    // Redis cannot be reached the lease reclaims the slot.
    void Release();
    // Extends the lease to `lease` from now (server time).
    // Errors: ABORTED if the lease had already run out and the slot may have been handed on;
    // FAILED_PRECONDITION if released; UNAVAILABLE / DEADLINE_EXCEEDED from Redis.
    absl::Status Renew(Deadline deadline = Deadline::Infinite());
    bool held() const { return owner_ != nullptr; }
    // The permit's id in Redis; empty for a fail-open permit.
    const std::string& id() const { return id_; }

   private:
    friend class ConcurrencyLimiter;
    Permit(ConcurrencyLimiter* owner, std::string key, std::string id)
        : owner_(owner), key_(std::move(key)), id_(std::move(id)) {}
    ConcurrencyLimiter* owner_ = nullptr;
    std::string key_;  // the Redis key
    std::string id_;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field). No I/O. `client` must outlive it.
  static absl::StatusOr<std::unique_ptr<ConcurrencyLimiter>> Create(Options options,
                                                                    Client& client);

  // A permit if fewer than `max` are held for `key` (after reclaiming expired leases), else
  // nullopt. Never waits for a slot.
  // Returns within `deadline` (Infinite: the client's command_timeout).
  // Errors: INVALID_ARGUMENT for an empty key or one over limit::kMaxKeyBytes; UNAVAILABLE when
  // Redis failed and fail_mode is kClosed.
  absl::StatusOr<std::optional<Permit>> TryAcquire(Deadline deadline, std::string_view key);

  // TryAcquire without a thread waiting: returns at once; the future completes on the client's
  // I/O thread (docs/async.md: never block there) with what TryAcquire would have returned. A
  // permit released on the I/O thread sends its ZREM without waiting for the reply. The limiter
  // must outlive the future's completion and its permits. Requires the multiplexed transport
  // (else FAILED_PRECONDITION).
  Future<std::optional<Permit>> TryAcquireAsync(Deadline deadline, std::string_view key);

  // TryAcquire with the script's clock set to `server_time` (microseconds since the epoch)
  // instead of TIME. For tests of lease expiry.
  absl::StatusOr<std::optional<Permit>> TryAcquireAtForTesting(
      Deadline deadline, std::string_view key, std::chrono::microseconds server_time);

  // The Redis key holding `key`'s permits.
  std::string RedisKey(std::string_view key) const;
  // A snapshot of the counters (relaxed loads: each exact, not taken together).
  ConcurrencyLimiterStats Stats() const;

 private:
  ConcurrencyLimiter(Options options, Client& client)
      : options_(std::move(options)), client_(client) {}
  absl::StatusOr<std::optional<Permit>> Acquire(std::string_view key, const std::string& now,
                                                Deadline deadline);
  absl::Status ValidateKey(std::string_view key) const;
  // The permit (or refusal, or fail_mode's answer) the acquire script's reply stands for.
  absl::StatusOr<std::optional<Permit>> Decide(absl::StatusOr<Reply> reply, std::string redis_key,
                                               std::string id);
  std::string NewId();

  const Options options_;
  Client& client_;
  std::atomic<uint64_t> sequence_{0};
  // Relaxed counters: they order nothing.
  std::atomic<uint64_t> acquired_{0};
  std::atomic<uint64_t> rejected_{0};
  std::atomic<uint64_t> fail_open_{0};
  std::atomic<uint64_t> fail_closed_{0};
  // Random, set in Create: permit ids never collide across processes.
  std::string instance_id_;
};

}  // namespace keel::redis
