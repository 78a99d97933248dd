// The write-behind engine of keel::cache::Cache<T> (keel/cache/write_behind.h): the pending set,
// the flusher and the ordering against write-through. Not part of keel's API.
//
// In-process pending set. Invariants (whenever mu_ is free):
// - a key is in pending_ iff it is in order_, under the entry's `order`; order_ runs oldest
//   first (a coalesced write keeps its key's place and first-write time: the lag counts from the
//   oldest write not yet written);
// - in_flight_ holds the batch being written (at most one batch: flushing_ is true while it is),
//   so no two writes of one key ever reach the source of truth at the same time, and the next
//   write of a key in flight waits in pending_ for the batch after;
// - through_ counts write-through Puts in progress per key; the flusher skips those keys, and a
//   write-through waits for its key to leave in_flight_ first, so the source of truth sees one
//   writer per key at a time and the writes in the order their versions were taken.
// Every write (PutBehind or write-through) takes a version from version_ under mu_; a
// write-through's end drops a pending write older than itself (its value is in the source of
// truth now) and leaves a newer one, which is then written after it.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/cache/internal/cache_support.h"
#include "keel/cache/write_behind.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/internal/exception.h"
#include "keel/internal/format.h"
#include "keel/internal/strings.h"
#include "keel/resilience/retry.h"
#include "keel/status.h"
#include "keel/sync.h"

namespace keel::cache::internal {

template <typename T>
class WriteBehindEngine {
 public:
  using Config = WriteBehind<T>;
  using Write = PendingWrite<T>;

  // REQUIRES: `config` validated; `clock` and `counters` outlive the engine.
  WriteBehindEngine(Config config, Retry retry, std::string prefix, Clock& clock,
                    CacheCounters& counters)
      : config_(std::move(config)),
        retry_(std::move(retry)),
        prefix_(std::move(prefix)),
        clock_(clock),
        counters_(counters) {
    if (config_.flusher_thread) thread_ = std::thread([this] { Loop(); });
  }
  ~WriteBehindEngine() { Shutdown(); }
  WriteBehindEngine(const WriteBehindEngine&) = delete;
  WriteBehindEngine& operator=(const WriteBehindEngine&) = delete;

  // Stops the flusher thread, then flushes what is pending within flush_timeout. Idempotent.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_) {
    {
      MutexLock lock(mu_);
      if (stop_) return;
      stop_ = true;
      SignalLocked();
    }
    if (thread_.joinable()) thread_.join();
    Flush(Deadline::After(config_.flush_timeout, clock_)).IgnoreError();
  }

  DurablePending<T>* durable() const { return config_.durable.get(); }

  // Records `value` as the pending write of `key` (the durable set also writes its covered tier,
  // for `ttl`). Errors: RESOURCE_EXHAUSTED at max_pending (kReject), DEADLINE_EXCEEDED (kWait),
  // the durable set's errors (nothing was recorded).
  absl::Status Add(Deadline deadline, std::string_view key, const T& value, Duration ttl)
      ABSL_LOCKS_EXCLUDED(mu_) {
    if (durable() != nullptr) return AddDurable(deadline, key, value, ttl);
    const absl::string_view k = keel::internal::ToAbsl(key);
    MutexLock lock(mu_);
    auto it = pending_.find(k);
    if (it == pending_.end()) {
      const auto fits = [&] {
        mu_.AssertHeld();
        return stop_ || pending_.size() + in_flight_.size() < config_.max_pending ||
               pending_.contains(k);
      };
      if (!fits()) {
        if (config_.when_full == WhenFull::kReject) {
          counters_.wb_rejected.fetch_add(1, std::memory_order_relaxed);
          return WithRetryAfter(absl::ResourceExhaustedError(keel::internal::StrCat(
                                    prefix_, "write-behind full: ", config_.max_pending,
                                    " keys pending (max_pending)")),
                                config_.flush_interval);
        }
        if (!deadline.clock().WaitUntil(mu_, cv_, deadline.time(), fits)) {
          counters_.wb_rejected.fetch_add(1, std::memory_order_relaxed);
          return absl::DeadlineExceededError(keel::internal::StrCat(
              prefix_, "deadline passed waiting for room in the write-behind pending set (",
              config_.max_pending, " keys pending)"));
        }
        it = pending_.find(k);
      }
    }
    counters_.wb_writes.fetch_add(1, std::memory_order_relaxed);
    if (it != pending_.end()) {
      // Coalesced: the newest value, in the key's old place.
      it->second.value = value;
      it->second.version = ++version_;
      counters_.wb_coalesced.fetch_add(1, std::memory_order_relaxed);
      return absl::OkStatus();
    }
    const uint64_t order = ++order_seq_;
    pending_.emplace(std::string(key), Entry{value, ++version_, order, clock_.Now()});
    order_.emplace(order, std::string(key));
    UpdateGaugesLocked();
    if (pending_.size() == 1 || pending_.size() >= config_.batch_size) SignalLocked();
    return absl::OkStatus();
  }

  // The pending value of `key` (waiting or being written), nullopt when none.
  absl::StatusOr<std::optional<T>> Lookup(Deadline deadline, std::string_view key)
      ABSL_LOCKS_EXCLUDED(mu_) {
    if (durable() != nullptr) {
      absl::StatusOr<std::optional<T>> v = durable()->Lookup(deadline, key);
      if (!v.ok()) counters_.wb_errors.fetch_add(1, std::memory_order_relaxed);
      return v;
    }
    const absl::string_view k = keel::internal::ToAbsl(key);
    MutexLock lock(mu_);
    if (auto it = pending_.find(k); it != pending_.end()) return std::optional<T>(it->second.value);
    if (auto it = in_flight_.find(k); it != in_flight_.end()) {
      return std::optional<T>(it->second.value);
    }
    return std::optional<T>();
  }

  // A write-through of `key` begins: waits until no flush of the key is in flight (within
  // `deadline`) and holds the flusher off the key until EndThrough. Returns the write's version.
  // Errors: DEADLINE_EXCEEDED; the durable set's errors (nothing must be written then).
  absl::StatusOr<uint64_t> BeginThrough(Deadline deadline, std::string_view key)
      ABSL_LOCKS_EXCLUDED(mu_) {
    if (durable() != nullptr) {
      absl::StatusOr<uint64_t> v = durable()->Version(deadline, key);
      if (!v.ok()) {
        counters_.wb_errors.fetch_add(1, std::memory_order_relaxed);
        return absl::Status(v.status().code(),
                            keel::internal::StrCat(prefix_,
                                                   "not written: the write-behind pending set "
                                                   "could not be read to order this write: ",
                                                   v.status().message()));
      }
      return v;
    }
    const absl::string_view k = keel::internal::ToAbsl(key);
    MutexLock lock(mu_);
    if (!deadline.clock().WaitUntil(mu_, cv_, deadline.time(), [&] {
          mu_.AssertHeld();
          return !in_flight_.contains(k);
        })) {
      return absl::DeadlineExceededError(keel::internal::StrCat(
          prefix_, "not written: deadline passed waiting for the write-behind flush of the key"));
    }
    ++through_[std::string(key)];
    return ++version_;
  }

  // The write-through that BeginThrough returned `version` for ended; `written`: the source of
  // truth has `value`. Returns true when a newer pending write exists (the tiers hold it: the
  // caller must not overwrite them with `value`). Errors: the durable set's (the source of truth
  // was written, but an older pending write may still be flushed over it).
  absl::StatusOr<bool> EndThrough(Deadline deadline, std::string_view key, const T& value,
                                  uint64_t version, bool written) ABSL_LOCKS_EXCLUDED(mu_) {
    if (durable() != nullptr) {
      if (!written) return false;
      absl::StatusOr<bool> newer = durable()->Supersede(deadline, key, value, version);
      if (!newer.ok()) counters_.wb_errors.fetch_add(1, std::memory_order_relaxed);
      return newer;
    }
    const absl::string_view k = keel::internal::ToAbsl(key);
    MutexLock lock(mu_);
    auto t = through_.find(k);
    if (t != through_.end() && --t->second == 0) through_.erase(t);
    bool newer = false;
    if (auto it = pending_.find(k); it != pending_.end()) {
      if (it->second.version > version) {
        newer = true;
      } else if (written) {
        order_.erase(it->second.order);
        pending_.erase(it);
        counters_.wb_superseded.fetch_add(1, std::memory_order_relaxed);
        UpdateGaugesLocked();
      }
    }
    SignalLocked();
    return newer;
  }

  // Writes every write pending when called, batch after batch, within `deadline`. Errors: the
  // first failed batch's (it stays pending), DEADLINE_EXCEEDED.
  absl::Status Flush(Deadline deadline) ABSL_LOCKS_EXCLUDED(mu_) {
    if (durable() != nullptr) return FlushDurable(deadline, Duration::zero(), /*all=*/true);
    uint64_t limit;
    {
      MutexLock lock(mu_);
      limit = order_seq_;
    }
    for (;;) {
      std::vector<Write> batch;
      {
        MutexLock lock(mu_);
        // One flush at a time; and keys held by a write-through wait for it.
        const auto ready = [&] {
          mu_.AssertHeld();
          return !flushing_ && (NothingBeforeLocked(limit) || TakeableBeforeLocked(limit));
        };
        if (!deadline.clock().WaitUntil(mu_, cv_, deadline.time(), ready)) {
          return absl::DeadlineExceededError(keel::internal::StrCat(
              prefix_, "deadline passed flushing the write-behind pending set"));
        }
        if (NothingBeforeLocked(limit)) return absl::OkStatus();
        batch = TakeLocked(limit);
      }
      if (absl::Status s = WriteAndFinish(deadline, std::move(batch)); !s.ok()) return s;
    }
  }

  // Writes the batches due now (batch_size keys waiting, or the oldest waiting flush_interval);
  // returns how many writes were written. Does nothing while another flush runs.
  size_t FlushDue() ABSL_LOCKS_EXCLUDED(mu_) {
    if (durable() != nullptr) {
      const uint64_t before = counters_.wb_flushed.load(std::memory_order_relaxed);
      FlushDurable(Deadline::After(config_.flush_timeout, clock_), config_.flush_interval,
                   /*all=*/false)
          .IgnoreError();
      return counters_.wb_flushed.load(std::memory_order_relaxed) - before;
    }
    size_t written = 0;
    for (;;) {
      std::vector<Write> batch;
      {
        MutexLock lock(mu_);
        if (flushing_ || !DueLocked(clock_.Now())) return written;
        batch = TakeLocked(order_seq_);
      }
      const size_t n = batch.size();
      const uint64_t before = counters_.wb_flushed.load(std::memory_order_relaxed);
      const bool ok =
          WriteAndFinish(Deadline::After(config_.flush_timeout, clock_), std::move(batch)).ok();
      written += counters_.wb_flushed.load(std::memory_order_relaxed) - before;
      if (!ok || n == 0) return written;  // a failed batch waits for the next flush
    }
  }

 private:
  struct Entry {
    T value;
    uint64_t version;
    uint64_t order;
    TimePoint since;  // the first write not yet written
  };

  void SignalLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++signals_;
    cv_.SignalAll();
  }

  void UpdateGaugesLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    // Relaxed: gauges for Stats and metrics, ordering nothing.
    counters_.wb_pending.store(pending_.size() + in_flight_.size(), std::memory_order_relaxed);
    std::optional<TimePoint> oldest;
    if (!order_.empty()) oldest = pending_.find(order_.begin()->second)->second.since;
    if (!in_flight_.empty() && (!oldest || in_flight_oldest_ < *oldest)) {
      oldest = in_flight_oldest_;
    }
    counters_.wb_oldest_ns.store(
        oldest ? std::max<int64_t>(1, oldest->time_since_epoch().count()) : 0,
        std::memory_order_relaxed);
  }

  // The oldest entry the flusher may take (not held by a write-through), or nullptr.
  const Entry* OldestTakeableLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (const auto& [order, key] : order_) {
      if (!through_.contains(key)) return &pending_.find(key)->second;
    }
    return nullptr;
  }
  size_t TakeableCountLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    size_t held = 0;
    for (const auto& [key, n] : through_) held += pending_.contains(key) ? 1 : 0;
    return pending_.size() - held;
  }
  bool DueLocked(TimePoint now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (TakeableCountLocked() >= config_.batch_size) return true;
    const Entry* oldest = OldestTakeableLocked();
    return oldest != nullptr && now - oldest->since >= config_.flush_interval;
  }
  // When the oldest takeable write becomes due (TimePoint::max() when there is none).
  TimePoint NextDueLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const Entry* oldest = OldestTakeableLocked();
    return oldest == nullptr ? TimePoint::max() : oldest->since + config_.flush_interval;
  }
  bool NothingBeforeLocked(uint64_t limit) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return order_.empty() || order_.begin()->first > limit;
  }
  bool TakeableBeforeLocked(uint64_t limit) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto it = order_.begin(); it != order_.end() && it->first <= limit; ++it) {
      if (!through_.contains(it->second)) return true;
    }
    return false;
  }

  // Moves up to batch_size takeable writes of order <= `limit`, oldest first, into in_flight_.
  std::vector<Write> TakeLocked(uint64_t limit) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    std::vector<Write> batch;
    in_flight_oldest_ = TimePoint::max();
    for (auto it = order_.begin();
         it != order_.end() && it->first <= limit && batch.size() < config_.batch_size;) {
      if (through_.contains(it->second)) {
        ++it;
        continue;
      }
      auto node = pending_.extract(it->second);
      batch.push_back({node.key(), node.mapped().value});
      in_flight_oldest_ = std::min(in_flight_oldest_, node.mapped().since);
      in_flight_.insert(std::move(node));
      it = order_.erase(it);
    }
    flushing_ = true;
    UpdateGaugesLocked();
    return batch;
  }

  absl::Status CallWriter(Deadline deadline, std::span<const Write> writes) const {
    return retry_.Run(CallContext{.deadline = deadline}, [&](const CallContext& ctx) {
      try {
        return config_.writer_batch(ctx.deadline, writes);
      } catch (...) {
        return absl::InternalError(
            keel::internal::StrCat(prefix_, "the write-behind writer threw ",
                                   keel::internal::DescribeException(std::current_exception())));
      }
    });
  }

  // Writes a batch taken by TakeLocked and settles each write: written, kept pending (in its
  // place, unless a newer write of its key came meanwhile), or dropped (drop_on).
  absl::Status WriteAndFinish(Deadline deadline, std::vector<Write> batch)
      ABSL_LOCKS_EXCLUDED(mu_) {
    if (batch.empty()) {
      MutexLock lock(mu_);
      flushing_ = false;
      SignalLocked();
      return absl::OkStatus();
    }
    const Deadline bound = Deadline::Min(deadline, Deadline::After(config_.flush_timeout, clock_));
    absl::Status status = CallWriter(bound, batch);
    std::vector<absl::Status> each;  // per write, when the batch was written one at a time
    if (!status.ok() && config_.drop_on(status) && batch.size() > 1) {
      for (const Write& w : batch) each.push_back(CallWriter(bound, std::span<const Write>(&w, 1)));
    }
    std::vector<std::pair<const Write*, absl::Status>> dropped;
    absl::Status first;
    {
      MutexLock lock(mu_);
      for (size_t i = 0; i < batch.size(); ++i) {
        const absl::Status& s = each.empty() ? status : each[i];
        auto node = in_flight_.extract(batch[i].key);
        if (s.ok()) {
          counters_.wb_flushed.fetch_add(1, std::memory_order_relaxed);
        } else if (config_.drop_on(s)) {
          counters_.wb_dropped.fetch_add(1, std::memory_order_relaxed);
          dropped.emplace_back(&batch[i], s);
        } else {
          KeepLocked(std::move(node));
          if (first.ok()) first = s;
        }
      }
      counters_.wb_batches.fetch_add(1, std::memory_order_relaxed);
      if (!first.ok()) counters_.wb_failures.fetch_add(1, std::memory_order_relaxed);
      flushing_ = false;
      UpdateGaugesLocked();
      SignalLocked();
    }
    for (const auto& [write, why] : dropped) {
      if (!config_.on_dropped) continue;
      try {
        config_.on_dropped(*write, why);
      } catch (...) {
      }
    }
    if (first.ok()) return absl::OkStatus();
    return absl::Status(
        first.code(),
        keel::internal::StrCat(prefix_, "write-behind batch kept pending: ", first.message()));
  }

  template <typename Node>
  void KeepLocked(Node node) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (node.empty()) return;
    Entry& old = node.mapped();
    auto newer = pending_.find(node.key());
    if (newer != pending_.end()) {
      // A newer write of the key waits: it takes the failed write's place and age.
      order_.erase(newer->second.order);
      newer->second.order = old.order;
      newer->second.since = std::min(newer->second.since, old.since);
      order_.emplace(old.order, node.key());
      return;
    }
    order_.emplace(old.order, node.key());
    pending_.insert(std::move(node));
  }

  absl::Status AddDurable(Deadline deadline, std::string_view key, const T& value, Duration ttl)
      ABSL_LOCKS_EXCLUDED(mu_) {
    absl::StatusOr<bool> replaced =
        durable()->Append(deadline, key, value, ttl, config_.max_pending);
    if (!replaced.ok()) {
      if (absl::IsResourceExhausted(replaced.status())) {
        counters_.wb_rejected.fetch_add(1, std::memory_order_relaxed);
        return WithRetryAfter(absl::ResourceExhaustedError(keel::internal::StrCat(
                                  prefix_, "write-behind full: ", replaced.status().message())),
                              config_.flush_interval);
      }
      counters_.wb_errors.fetch_add(1, std::memory_order_relaxed);
      return absl::Status(replaced.status().code(),
                          keel::internal::StrCat(prefix_, "write-behind write not recorded: ",
                                                 replaced.status().message()));
    }
    counters_.wb_writes.fetch_add(1, std::memory_order_relaxed);
    if (*replaced) counters_.wb_coalesced.fetch_add(1, std::memory_order_relaxed);
    MutexLock lock(mu_);
    if (++own_appends_ >= config_.batch_size) {
      own_appends_ = 0;
      own_signal_ = true;
      SignalLocked();
    }
    return absl::OkStatus();
  }

  // Claims batches from the durable set and writes them until a claim comes back short (or,
  // with `all`, empty), the deadline passes or a batch fails.
  absl::Status FlushDurable(Deadline deadline, Duration min_age, bool all)
      ABSL_LOCKS_EXCLUDED(mu_) {
    {
      MutexLock lock(mu_);
      if (!deadline.clock().WaitUntil(mu_, cv_, deadline.time(), [&] {
            mu_.AssertHeld();
            return !flushing_;
          })) {
        return absl::DeadlineExceededError(keel::internal::StrCat(
            prefix_, "deadline passed flushing the write-behind pending set"));
      }
      flushing_ = true;
    }
    absl::Status result = FlushDurableLoop(deadline, min_age, all);
    MutexLock lock(mu_);
    flushing_ = false;
    SignalLocked();
    return result;
  }

  absl::Status FlushDurableLoop(Deadline deadline, Duration min_age, bool all) {
    DurablePending<T>& set = *durable();
    // With `all`: until a claim comes back empty, but at most the batches the first claim's
    // count needs and one more, so writers that keep appending cannot hold Flush forever.
    std::optional<uint64_t> budget;
    for (;;) {
      if (deadline.Expired()) {
        return absl::DeadlineExceededError(keel::internal::StrCat(
            prefix_, "deadline passed flushing the write-behind pending set"));
      }
      const Deadline bound =
          Deadline::Min(deadline, Deadline::After(config_.flush_timeout, clock_));
      absl::StatusOr<typename DurablePending<T>::Batch> claimed =
          set.Claim(bound, config_.batch_size, min_age, config_.flush_timeout);
      if (!claimed.ok()) {
        counters_.wb_errors.fetch_add(1, std::memory_order_relaxed);
        return absl::Status(claimed.status().code(),
                            keel::internal::StrCat(prefix_, "write-behind claim failed: ",
                                                   claimed.status().message()));
      }
      counters_.wb_pending.store(claimed->pending, std::memory_order_relaxed);
      counters_.wb_oldest_ns.store(
          claimed->oldest_age
              ? std::max<int64_t>(1,
                                  (clock_.Now() - *claimed->oldest_age).time_since_epoch().count())
              : 0,
          std::memory_order_relaxed);
      counters_.wb_dropped.fetch_add(claimed->undecodable.size(), std::memory_order_relaxed);
      std::vector<typename DurablePending<T>::Claimed>& writes = claimed->writes;
      if (writes.empty()) return absl::OkStatus();
      if (!budget) budget = claimed->pending / config_.batch_size + 2;
      std::vector<Write> batch;
      batch.reserve(writes.size());
      for (const auto& c : writes) batch.push_back({c.key, c.value});
      absl::Status status = CallWriter(bound, batch);
      std::vector<absl::Status> each;
      if (!status.ok() && config_.drop_on(status) && batch.size() > 1) {
        for (const Write& w : batch) {
          each.push_back(CallWriter(bound, std::span<const Write>(&w, 1)));
        }
      }
      std::vector<typename DurablePending<T>::Claimed> done, kept;
      absl::Status first;
      for (size_t i = 0; i < writes.size(); ++i) {
        const absl::Status& s = each.empty() ? status : each[i];
        if (s.ok()) {
          counters_.wb_flushed.fetch_add(1, std::memory_order_relaxed);
          done.push_back(std::move(writes[i]));
        } else if (config_.drop_on(s)) {
          counters_.wb_dropped.fetch_add(1, std::memory_order_relaxed);
          if (config_.on_dropped) {
            try {
              config_.on_dropped(batch[i], s);
            } catch (...) {
            }
          }
          done.push_back(std::move(writes[i]));
        } else {
          if (first.ok()) first = s;
          kept.push_back(std::move(writes[i]));
        }
      }
      counters_.wb_batches.fetch_add(1, std::memory_order_relaxed);
      // Settled on the flush's own deadline: a settle that fails leaves the claim to its lease.
      const Deadline settle = Deadline::After(config_.flush_timeout, clock_);
      if (!done.empty() && !set.Complete(settle, done).ok()) {
        counters_.wb_errors.fetch_add(1, std::memory_order_relaxed);
      }
      if (!kept.empty()) {
        counters_.wb_failures.fetch_add(1, std::memory_order_relaxed);
        if (!set.Release(settle, kept).ok()) {
          counters_.wb_errors.fetch_add(1, std::memory_order_relaxed);
        }
        return absl::Status(
            first.code(),
            keel::internal::StrCat(prefix_, "write-behind batch kept pending: ", first.message()));
      }
      if (all ? --*budget == 0 : writes.size() < config_.batch_size) return absl::OkStatus();
    }
  }

  void Loop() ABSL_LOCKS_EXCLUDED(mu_) {
    for (;;) {
      {
        MutexLock lock(mu_);
        for (;;) {
          if (stop_) return;
          if (durable() == nullptr && !flushing_ && DueLocked(clock_.Now())) break;
          const uint64_t seen = signals_;
          TimePoint wake;
          if (durable() != nullptr) {
            wake = clock_.Now() + config_.flush_interval;
          } else {
            wake = flushing_ ? TimePoint::max() : NextDueLocked();
          }
          const bool signalled = clock_.WaitUntil(mu_, cv_, wake, [&] {
            mu_.AssertHeld();
            return stop_ || signals_ != seen;
          });
          // The durable set flushes on every tick, and when this process alone appended a batch.
          if (durable() != nullptr && !stop_ && (!signalled || own_signal_)) {
            own_signal_ = false;
            break;
          }
        }
      }
      FlushDue();
    }
  }

  const Config config_;
  const Retry retry_;
  const std::string prefix_;
  Clock& clock_;
  CacheCounters& counters_;

  Mutex mu_;
  CondVar cv_;
  absl::flat_hash_map<std::string, Entry> pending_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, std::string> order_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<std::string, Entry> in_flight_ ABSL_GUARDED_BY(mu_);
  TimePoint in_flight_oldest_ ABSL_GUARDED_BY(mu_) = TimePoint::max();
  absl::flat_hash_map<std::string, int> through_ ABSL_GUARDED_BY(mu_);
  bool flushing_ ABSL_GUARDED_BY(mu_) = false;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool own_signal_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t signals_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t order_seq_ ABSL_GUARDED_BY(mu_) = 0;
  size_t own_appends_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;  // last: started once everything above is constructed
};

}  // namespace keel::cache::internal
