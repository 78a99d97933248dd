// keel/cache/write_behind.h: the configuration of a write-behind `keel::cache::Cache<T>`.
//
// Defines `keel::cache::WriteBehind<T>` (the batch writer and the knobs, passed to
// Cache<T>::Create), `keel::cache::PendingWrite<T>` (one write the batch writer receives),
// `keel::cache::WhenFull` and `keel::cache::DurablePending<T>` (a pending set kept outside the
// process, so a crash loses nothing acknowledged: keel::redis::WriteBehindLog).
//
// Write-behind: Cache::PutBehind stores the value in the tiers at once and records it in a
// pending set that coalesces by key (the last write wins); a flusher writes the pending set to the
// source of truth in batches of at most batch_size, oldest first, through the batch writer and
// keel's Retry. A batch is due when batch_size writes wait or the oldest has waited
// flush_interval. Flush(deadline) writes everything pending; the cache's destructor does too.
// docs/caching.md says what each mode can lose.
//
// Thread safety: plain values; DurablePending implementations must be thread-safe.
//
//   keel::cache::WriteBehind<std::string> wb{
//       .writer_batch = [&](keel::Deadline d, std::span<const keel::cache::PendingWrite<
//                                                 std::string>> writes) {
//         return db.UpsertProfiles(d, writes);  // must be idempotent: last write wins per key
//       },
//       .flush_interval = 1s, .batch_size = 50, .max_pending = 10'000};
//   auto cache = keel::cache::Cache<std::string>::Create({.name = "profiles"}, std::move(tiers),
//                                                        std::move(wb)).value();
//   KEEL_RETURN_IF_ERROR(cache->PutBehind(deadline, "user:42", json));  // in the tiers now
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/cache/tier.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/resilience/retry.h"

namespace keel::cache {

// One write the batch writer must apply to the source of truth.
template <typename T>
struct PendingWrite {
  std::string key;
  T value;
};

// What PutBehind does when max_pending keys are waiting.
enum class WhenFull {
  kReject,  // RESOURCE_EXHAUSTED at once (the caller sheds or retries)
  kWait,    // waits for a flush to make room, until the caller's deadline (DEADLINE_EXCEEDED)
};

// A pending set outside the process (keel::redis::WriteBehindLog): writes survive this process,
// and any instance sharing it flushes them. Each key has a version that every Append bumps; a
// claimed key is leased to one flusher until Complete, Release or the lease's end.
template <typename T>
class DurablePending {
 public:
  struct Claimed {
    std::string key;
    T value;
    uint64_t version;  // the key's version when claimed
  };
  struct Batch {
    std::vector<Claimed> writes;           // oldest first
    uint64_t pending = 0;                  // keys pending after the claim (claimed included)
    std::optional<Duration> oldest_age;    // age of the oldest pending write, if any
    std::vector<std::string> undecodable;  // keys whose stored value did not decode
  };
  virtual ~DurablePending() = default;

  // True when Append writes `tier`'s entry itself (atomically with the pending write): the cache
  // then does not write that tier in PutBehind.
  virtual bool Covers(const Tier<T>& tier) const = 0;
  // Records `value` as `key`'s pending write (replacing an older one) together with the covered
  // tier's entry (for `ttl`); true when it replaced one. RESOURCE_EXHAUSTED when `max_pending`
  // keys wait and `key` is not one of them.
  virtual absl::StatusOr<bool> Append(Deadline deadline, std::string_view key, const T& value,
                                      Duration ttl, size_t max_pending) = 0;
  // The pending value of `key`, claimed or not; nullopt when none.
  virtual absl::StatusOr<std::optional<T>> Lookup(Deadline deadline, std::string_view key) = 0;
  // The version of `key`'s pending write, 0 when none.
  virtual absl::StatusOr<uint64_t> Version(Deadline deadline, std::string_view key) = 0;
  // After a write-through of `value` that started when `key`'s version was `version`: drops the
  // pending write when it is still that version and unclaimed (the source of truth has a newer
  // value); when it is claimed (a flush of an older value is in flight), replaces it by `value`
  // so that `value` is written again after that flush. A newer version is left alone: then it
  // returns true (the tiers already hold that newer value).
  virtual absl::StatusOr<bool> Supersede(Deadline deadline, std::string_view key, const T& value,
                                         uint64_t version) = 0;
  // Leases up to `max` unclaimed keys whose write has waited at least `min_age` to this caller
  // for `lease`, oldest first. Leases that ran out (a flusher that died) are unclaimed first.
  virtual absl::StatusOr<Batch> Claim(Deadline deadline, size_t max, Duration min_age,
                                      Duration lease) = 0;
  // The claimed writes reached the source of truth: each is removed unless its key was written
  // again since the claim (then it is pending again, with the newer value).
  virtual absl::Status Complete(Deadline deadline, std::span<const Claimed> writes) = 0;
  // The claimed writes were not written: they are unclaimed, pending as before.
  virtual absl::Status Release(Deadline deadline, std::span<const Claimed> writes) = 0;
};

template <typename T>
struct WriteBehind {
  using BatchWriter =
      std::function<absl::Status(Deadline, std::span<const PendingWrite<T>> writes)>;

  // Writes a batch to the source of truth within the deadline (flush_timeout, or what is left of
  // Flush's). Must be idempotent per key (a batch may be written twice: after a failure that
  // happened after the write, or, with a durable pending set, by a second instance after a
  // lease ran out); writing each key's value as given (an upsert) is. Each key appears once.
  // Required.
  BatchWriter writer_batch;
  // A batch is due when its oldest write has waited this long (the lag's bound with a flusher
  // thread, plus the write itself). Must be > 0. Default: 1 s.
  Duration flush_interval = std::chrono::seconds(1);
  // Most writes per batch; a batch is also due as soon as this many keys wait. Must be >= 1.
  // Default: 50.
  size_t batch_size = 50;
  // Most keys pending (the batch being written included); a write to a key already pending
  // always fits (it replaces the value). Must be >= batch_size. Default: 10,000.
  size_t max_pending = 10'000;
  // At max_pending: reject (RESOURCE_EXHAUSTED) or wait within the caller's deadline. kWait needs
  // the in-process pending set. Default: kReject.
  WhenFull when_full = WhenFull::kReject;
  // How each batch is retried (keel/resilience/retry.h). Default: 3 attempts, full jitter from
  // 100 ms, on keel::IsRetryable failures.
  Retry::Options retry = {};
  // The deadline of each batch (its retries included), and of the flush the destructor does.
  // With a durable pending set it is also the claim's lease, so it must exceed what a batch
  // takes: a flusher slower than its lease may see its batch written by another instance too.
  // Must be > 0. Default: 10 s.
  Duration flush_timeout = std::chrono::seconds(10);
  // Whether the cache starts a thread that flushes batches when they are due. Without it nothing
  // is flushed on time: call Cache::FlushDue() (a test on a ManualClock, or a service that drives
  // flushing from its own loop) or Flush(). Default: true.
  bool flusher_thread = true;
  // Failures after which a batch is dropped rather than kept pending: the writer says these
  // writes can never succeed. A multi-write batch failing so is written again one write at a
  // time, and only the writes failing alone are dropped. Every other failure (the source of truth
  // down, slow, or the writer throwing) keeps the batch pending, in its place, for the next flush.
  // Default: INVALID_ARGUMENT and OUT_OF_RANGE.
  std::function<bool(const absl::Status&)> drop_on = [](const absl::Status& s) {
    return absl::IsInvalidArgument(s) || absl::IsOutOfRange(s);
  };
  // Called (never under a keel lock) with each write that was dropped and why. Exceptions are
  // caught. Default: none.
  std::function<void(const PendingWrite<T>& write, const absl::Status& why)> on_dropped;
  // Where pending writes live: null keeps them in this process (lost if it dies before the
  // flush); a DurablePending (keel::redis::WriteBehindLog) keeps them outside. Default: null.
  std::shared_ptr<DurablePending<T>> durable = nullptr;
};

}  // namespace keel::cache
