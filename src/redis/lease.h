// What keel::redis::Lock and keel::redis::Redlock share: the state behind a LockGuard, the
// watchdog that extends it, release, and the lease arithmetic. Private to keel::redis.
//
// Invariants of a Lease (all under `mu`):
//   - state goes kHeld -> kReleased or kHeld -> kLost -> kReleased, never back;
//   - `busy` while the watchdog works on the lease (one extension in flight, or the on_lost of
//     its answer running), and no watchdog extension starts once the state is not kHeld:
//     Release sets kReleased first, then waits until the watchdog is not busy, then deletes the
//     key; so Redis sees no extension of a guard after its release, and once Release returned
//     the watchdog touches nothing but the Lease itself (the Lock may be destroyed);
//   - `timer_id` is the pending watchdog tick, 0 when none; only a kHeld lease has one.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/random/bit_gen_ref.h"
#include "absl/status/status.h"
#include "keel/async/future.h"
#include "keel/async/timer.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/internal/validate.h"
#include "keel/metrics.h"
#include "keel/redis/lock.h"
#include "keel/resilience/backoff.h"
#include "keel/resilience/cancellation.h"
#include "keel/sync.h"

namespace keel::redis::internal {

// The margin Validity subtracts for clock drift between this process and Redis: ttl * 0.01 +
// 2 ms (the Redlock paper's allowance).
Duration DriftAllowance(Duration ttl);
// ttl - elapsed - DriftAllowance(ttl), or zero when that is not positive.
Duration LeaseValidity(Duration ttl, Duration elapsed);
// How many of `nodes` must grant a Redlock: a strict majority.
size_t Quorum(size_t nodes);
// Whether a Redlock attempt that `granted` of `nodes` holds, `elapsed` after it started, holds
// the lock: a majority, with validity left.
bool RedlockHolds(size_t granted, size_t nodes, Duration ttl, Duration elapsed);
// The checks Lock and Redlock share (name 1 to 128 bytes, ttl whole milliseconds in
// [10ms, 365 days], positive timeouts, the retry backoff, a timer on the lock's clock); returns
// the backoff.
absl::StatusOr<Backoff> ValidateLockOptions(const keel::internal::OptionsOf& of,
                                            std::string_view name, Duration ttl,
                                            Duration acquire_timeout, Duration release_timeout,
                                            const Backoff::Options& retry, const Timer* timer,
                                            const Clock& clock);
int64_t TtlMillis(Duration ttl);
// A 128-bit random token, as 32 lowercase hex digits.
std::string NewLockToken();

// The counters behind LockStats (relaxed: they order nothing).
struct LockCounters {
  std::atomic<uint64_t> acquired{0};
  std::atomic<uint64_t> contended{0};
  std::atomic<uint64_t> errors{0};
  std::atomic<uint64_t> released{0};
  std::atomic<uint64_t> release_aborted{0};
  std::atomic<uint64_t> extended{0};
  std::atomic<uint64_t> extend_failures{0};
  std::atomic<uint64_t> lost{0};
  std::atomic<uint64_t> on_lost_exceptions{0};
  LockStats Snapshot() const;
  // Registers keel_lock_*_total{name, backend} mirrors of the counters.
  absl::Status Register(MetricsRegistry& metrics, std::string_view name, std::string_view backend,
                        std::vector<MetricsRegistry::Registration>& out) const;
};

// What a lock does on Redis for its guards: one node (Lock) or a majority of nodes (Redlock).
class LeaseBackend {
 public:
  virtual ~LeaseBackend() = default;

  // Extends the lease of `token` to ttl. Completes OK, ABORTED when the token is gone, or an
  // error, on whatever thread answers; must not block. The watchdog's path.
  virtual Future<void> AsyncExtend(Deadline deadline, const std::string& token) = 0;
  // The blocking forms (LockGuard::Extend and Release), with the same outcomes.
  virtual absl::Status Extend(Deadline deadline, const std::string& token) = 0;
  virtual absl::Status Release(Deadline deadline, const std::string& token) = 0;
  // One acquire attempt (Lock::TryAcquire, Redlock::TryAcquire).
  virtual absl::StatusOr<std::optional<LockGuard>> TryAcquire(Deadline deadline) = 0;

  // Acquire's loop: TryAcquire until it gives a guard or `deadline` passes (Infinite:
  // acquire_timeout), sleeping `backoff`'s delays in between; Redis errors are retried too.
  // Errors: DEADLINE_EXCEEDED saying whether the lock was held, or the last attempt's error.
  absl::StatusOr<LockGuard> Acquire(Deadline deadline, const Backoff& backoff,
                                    absl::BitGenRef random);
  const Backoff& backoff() const { return backoff_; }

  // `<type> "<name>": `, the prefix of every error.
  const std::string& prefix() const { return prefix_; }
  std::string_view name() const { return name_; }
  Duration ttl() const { return ttl_; }
  Clock& clock() const { return clock_; }
  LockCounters& counters() { return counters_; }
  const LockCounters& counters() const { return counters_; }

  // The guard of a lease acquired with `token` by an attempt that started at `started`; starts
  // its watchdog when the lock has one.
  LockGuard MakeGuard(std::string token, std::optional<int64_t> fencing, TimePoint started);

 protected:
  struct Config {
    std::string_view type;  // "redis lock", "redlock"
    std::string name;
    Duration ttl;
    Duration release_timeout;
    std::function<void(const LockLost&)> on_lost;
    bool watchdog = false;
    Duration acquire_timeout;
    Backoff backoff;
  };
  LeaseBackend(Config config, Clock& clock, Timer* timer);
  // The Config of Lock::Options or Redlock::Options (the same fields).
  template <typename LockOptions>
  static Config ConfigOf(std::string_view type, const LockOptions& o, const Backoff& backoff) {
    return Config{
        .type = type,
        .name = o.name,
        .ttl = o.ttl,
        .release_timeout = o.release_timeout,
        .on_lost = o.on_lost,
        .watchdog = o.watchdog,
        .acquire_timeout = o.acquire_timeout,
        .backoff = backoff,
    };
  }

 public:
  // Creates the lock's own timer when the watchdog is on and none was given, and registers the
  // counters as keel_lock_*_total{name, backend=<metrics_backend>} when `metrics` is set. Once,
  // from Create.
  absl::Status Init(MetricsRegistry* metrics, std::string_view metrics_backend);

 private:
  friend struct Lease;
  friend class keel::redis::LockGuard;
  std::string name_;
  std::string prefix_;
  Duration ttl_;
  Duration release_timeout_;
  Duration acquire_timeout_;
  Backoff backoff_;
  std::function<void(const LockLost&)> on_lost_;
  bool watchdog_;
  Clock& clock_;
  std::unique_ptr<Timer> own_timer_;
  Timer* timer_;  // the watchdog's: given or own_timer_; null without a watchdog
  LockCounters counters_;
  std::vector<MetricsRegistry::Registration> registrations_;  // last: before what they read
};

// The state of one held lease, shared by its LockGuard and the watchdog's callbacks.
struct Lease : std::enable_shared_from_this<Lease> {
  enum class State { kHeld, kLost, kReleased };

  Lease(LeaseBackend& b, std::string t, std::optional<int64_t> f, TimePoint started)
      : backend(b), token(std::move(t)), fencing(f), valid_from(started) {}

  // Schedules the next watchdog tick at `at`. REQUIRES: state == kHeld.
  void ScheduleTick(TimePoint at) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);
  // The timer callback: sends one extension (async) unless the lease is no longer held.
  void Tick() ABSL_LOCKS_EXCLUDED(mu);
  // The extension sent at `sent` was answered with `status`: reschedule, retry or mark lost.
  void Extended(TimePoint sent, absl::Status status) ABSL_LOCKS_EXCLUDED(mu);
  // Runs on_lost and cancels the token (outside the lock).
  void ReportLost(absl::Status reason) ABSL_LOCKS_EXCLUDED(mu);

  Duration Validity() const ABSL_LOCKS_EXCLUDED(mu);
  absl::Status Extend(Deadline deadline) ABSL_LOCKS_EXCLUDED(mu);
  absl::Status Release(Deadline deadline) ABSL_LOCKS_EXCLUDED(mu);

  LeaseBackend& backend;
  const std::string token;
  const std::optional<int64_t> fencing;
  CancellationSource cancel;

  mutable Mutex mu;
  CondVar cv;  // signalled when `busy` becomes false
  State state ABSL_GUARDED_BY(mu) = State::kHeld;
  TimePoint valid_from ABSL_GUARDED_BY(mu);  // start of the last successful acquire / extend
  bool busy ABSL_GUARDED_BY(mu) = false;
  // The first failure of the watchdog's extensions since the last success: the reason reported
  // when the lease runs out while they keep failing (the last one, cut short by the lease's end,
  // would only say DEADLINE_EXCEEDED).
  absl::Status first_failure ABSL_GUARDED_BY(mu);
  TimerId timer_id ABSL_GUARDED_BY(mu) = 0;
};

}  // namespace keel::redis::internal
