// keel/pool/internal/pool_impl.h: the implementation of keel::Pool<T> (included by
// keel/pool/pool.h). Not part of keel's API.
//
// Invariants, all under Core::mu_:
//   total_ == in_use_ + idle_.size() + checking_       (open resources)
//   total_ + connecting_ <= max_size
//   !waiters_.empty() implies idle_.empty()             (a resource put back goes to the oldest
//                                                        waiter first, so none sits idle while
//                                                        someone waits)
// An Entry belongs to exactly one place: idle_, a Lease (in_use_), the maintainer's local list
// (checking_), or a thread that is about to destroy it outside the lock.
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/bit_gen_ref.h"
#include "absl/random/random.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "keel/pool/internal/pool_support.h"
#include "keel/sync.h"

namespace keel::pool_internal {

template <typename T>
struct Entry {
  std::unique_ptr<T> resource;
  TimePoint retire_at;     // max_lifetime minus jitter after creation
  TimePoint idle_since;    // when it last went idle (idle_timeout)
  TimePoint last_checked;  // last use or validation (validation_bypass, keepalive)
  TimePoint leased_at;
  std::string label;  // for leak reports
  bool leak_reported = false;
  size_t leased_pos = 0;  // index in Core::leased_ (leak detection only)
};

template <typename T>
class Core {
 public:
  Core(PoolOptions options, PoolHooks<T> hooks, Clock& clock, std::optional<absl::BitGenRef> random)
      : options_(std::move(options)),
        hooks_(std::move(hooks)),
        clock_(clock),
        min_idle_(options_.min_idle.value_or(options_.max_size)),
        random_(random ? *random : absl::BitGenRef(own_random_)) {
    if (!options_.on_leak) options_.on_leak = &WriteLeakReportToStderr;
  }

  void StartMaintainer() ABSL_LOCKS_EXCLUDED(join_mu_) {
    MutexLock lock(join_mu_);
    if (options_.background_maintenance) maintainer_ = std::thread([this] { MaintainerLoop(); });
  }

  // The maintainer reads labels for leak reports, hence the lock.
  void SetLabel(Entry<T>* e, std::string label) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(mu_);
    e->label = std::move(label);
  }

  void set_histogram(Histogram* h) { histogram_ = h; }
  const PoolOptions& options() const { return options_; }

  absl::StatusOr<Lease<T>> Acquire(Deadline caller_deadline, bool wait) ABSL_LOCKS_EXCLUDED(mu_);
  void Return(Entry<T>* e, bool broken) ABSL_LOCKS_EXCLUDED(mu_);
  void RunMaintenance() ABSL_LOCKS_EXCLUDED(mu_);
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_, join_mu_);
  PoolStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);

  // Called by ~Pool after Shutdown: deletes the core now, or lets the last lease do it.
  void Orphan() ABSL_LOCKS_EXCLUDED(mu_) {
    bool last;
    {
      MutexLock lock(mu_);
      orphaned_ = true;
      last = in_use_ == 0;
    }
    if (last) delete this;
  }

 private:
  struct Waiter {
    CondVar cv;
    Entry<T>* entry = nullptr;  // handed over by Put
    bool cancelled = false;     // by Shutdown
  };

  bool CanCreate() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return !shutdown_ && idle_.empty() && total_ + connecting_ < options_.max_size &&
           connecting_ < options_.max_connecting && connecting_ < static_cast<int>(waiters_.size());
  }

  Entry<T>* NewEntry(std::unique_ptr<T> resource, TimePoint now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto* e = new Entry<T>;
    e->resource = std::move(resource);
    // Retire at a uniformly random point in the last 2.5% of the lifetime (HikariCP's variance).
    const Duration lifetime = options_.max_lifetime;
    const Duration jitter(absl::Uniform<int64_t>(random_, 0, lifetime.count() / 40 + 1));
    e->retire_at = AddSaturating(now, lifetime - jitter);
    e->idle_since = now;
    e->last_checked = now;
    ++total_;
    ++created_;
    return e;
  }

  void MarkLeased(Entry<T>* e, TimePoint now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++in_use_;
    ++acquired_;
    e->leased_at = now;
    if (options_.leak_detection_threshold) {
      e->label.clear();
      e->leak_reported = false;
      e->leased_pos = leased_.size();
      leased_.push_back(e);
    }
  }

  void UnmarkLeased(Entry<T>* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    --in_use_;
    if (options_.leak_detection_threshold) {
      Entry<T>* last = leased_.back();
      leased_[e->leased_pos] = last;
      last->leased_pos = e->leased_pos;
      leased_.pop_back();
    }
  }

  // Puts an open, unleased entry back into service: to the oldest waiter, else idle. Returns the
  // entry when the pool is shut down (the caller destroys it outside the lock).
  Entry<T>* Put(Entry<T>* e, TimePoint now, bool keep_idle_since = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (shutdown_) {
      --total_;
      ++destroyed_;
      return e;
    }
    if (!waiters_.empty()) {
      Waiter* w = waiters_.front();
      waiters_.pop_front();
      w->entry = e;
      MarkLeased(e, now);
      w->cv.Signal();
      return nullptr;
    }
    if (!keep_idle_since) e->idle_since = now;
    idle_.push_back(e);
    return nullptr;
  }

  // A resource was closed or a creation ended: room for a creation, and maybe a refill.
  void OnCapacityFreed() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (Waiter* w : waiters_) w->cv.Signal();
    if (total_ < min_idle_ && !fill_requested_) {
      fill_requested_ = true;
      maintainer_cv_.Signal();
    }
  }

  void Destroyed(int n = 1) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    total_ -= n;
    destroyed_ += n;
    OnCapacityFreed();
  }

  void RecordCreateFailure(const absl::Status& s, TimePoint now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++create_failures_;
    // Kept as text, not as a Status: an absl::Status shares its heap rep between copies through
    // a reference count inside Debian's Abseil, which is not TSan-instrumented, so sharing one
    // across threads reads as a race under TSan.
    last_create_error_ = std::string(s.message());
    last_create_error_at_ = now;
  }

  Snapshot SnapshotLocked(TimePoint now) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Snapshot s{.in_use = in_use_,
               .max_size = options_.max_size,
               .waiting = static_cast<int>(waiters_.size()),
               .connecting = connecting_};
    if (last_create_error_.has_value()) {
      s.last_create_error = DescribeCreateError(*last_create_error_, now - last_create_error_at_);
    }
    return s;
  }

  void MaintainerLoop() ABSL_LOCKS_EXCLUDED(mu_);

  // The hooks are user code and may throw. An exception is caught here, at the boundary, and
  // counted in hook_exceptions_total; the resource it concerned is treated as failed (a create or
  // validation failure, broken, or not clean enough to reuse), so the pool never terminates the
  // process and never loses track of a slot.
  absl::StatusOr<std::unique_ptr<T>> CallCreate(Deadline deadline) ABSL_LOCKS_EXCLUDED(mu_) {
    try {
      absl::StatusOr<std::unique_ptr<T>> created = hooks_.create(deadline);
      if (created.ok() && *created == nullptr) {
        return absl::InternalError("create hook returned a null resource");
      }
      return created;
    } catch (...) {
      return HookThrew("create");
    }
  }
  absl::Status CallValidate(T& resource, Deadline deadline) ABSL_LOCKS_EXCLUDED(mu_) {
    try {
      return hooks_.validate(resource, deadline);
    } catch (...) {
      return HookThrew("validate");
    }
  }
  // True when the resource must not be handed out.
  bool CallIsBroken(const T& resource) ABSL_LOCKS_EXCLUDED(mu_) {
    if (!hooks_.is_broken) return false;
    try {
      return hooks_.is_broken(resource);
    } catch (...) {
      (void)HookThrew("is_broken");
      return true;
    }
  }
  // False when the reset failed: the resource is in an unknown state and is closed.
  bool CallOnReturn(T& resource) ABSL_LOCKS_EXCLUDED(mu_) {
    if (!hooks_.on_return) return true;
    try {
      hooks_.on_return(resource);
      return true;
    } catch (...) {
      (void)HookThrew("on_return");
      return false;
    }
  }
  absl::Status HookThrew(std::string_view hook) {
    // Relaxed: an independent statistic, read by Stats and metrics.
    hook_exceptions_.fetch_add(1, std::memory_order_relaxed);
    return HookExceptionError(options_, hook, std::current_exception());
  }

  PoolOptions options_;
  const PoolHooks<T> hooks_;
  Clock& clock_;
  const int min_idle_;
  Histogram* histogram_ = nullptr;
  absl::BitGen own_random_;
  absl::BitGenRef random_ ABSL_GUARDED_BY(mu_);

  mutable Mutex mu_;
  std::vector<Entry<T>*> idle_ ABSL_GUARDED_BY(mu_);    // LIFO: back is the most recently used
  std::list<Waiter*> waiters_ ABSL_GUARDED_BY(mu_);     // FIFO: front is the oldest
  std::vector<Entry<T>*> leased_ ABSL_GUARDED_BY(mu_);  // only with leak detection
  int total_ ABSL_GUARDED_BY(mu_) = 0;
  int in_use_ ABSL_GUARDED_BY(mu_) = 0;
  int checking_ ABSL_GUARDED_BY(mu_) = 0;
  int connecting_ ABSL_GUARDED_BY(mu_) = 0;
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool orphaned_ ABSL_GUARDED_BY(mu_) = false;
  bool fill_requested_ ABSL_GUARDED_BY(mu_) = true;  // the first pass fills the pool
  std::optional<std::string> last_create_error_ ABSL_GUARDED_BY(mu_);
  TimePoint last_create_error_at_ ABSL_GUARDED_BY(mu_);
  uint64_t acquired_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t created_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t destroyed_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t timeouts_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t create_failures_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t validation_failures_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t leaks_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t maintenance_runs_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<uint64_t> hook_exceptions_{0};  // written outside mu_: hooks run unlocked
  // Returns past their shutdown check, still using hooks_ and clock_: Shutdown (and so ~Pool)
  // waits for them, so that nothing touches the user's clock once the Pool is gone.
  int returning_ ABSL_GUARDED_BY(mu_) = 0;
  CondVar returned_cv_;  // signalled when returning_ drops to zero during shutdown
  CondVar maintainer_cv_;

  Mutex join_mu_;  // serializes joining the maintainer when Shutdown races with itself
  std::thread maintainer_ ABSL_GUARDED_BY(join_mu_);
};

template <typename T>
absl::StatusOr<Lease<T>> Core<T>::Acquire(Deadline caller_deadline, bool wait) {
  const TimePoint start = clock_.Now();
  // The wait is measured on the caller's deadline's own clock (a ManualClock deadline in a test,
  // a steady one in production), with acquire_timeout as a cap on the same clock. An infinite
  // deadline carries no clock of its own worth honouring: acquire_timeout runs on the pool's.
  const Deadline limit =
      caller_deadline.IsInfinite()
          ? Deadline::At(AddSaturating(start, options_.acquire_timeout), clock_)
          : Deadline::Min(caller_deadline,
                          Deadline::After(options_.acquire_timeout, caller_deadline.clock()));
  // What the caller allowed, on the deadline's clock: the timeout message names this budget
  // rather than the wait measured on the pool's clock, which may be another timeline and, under
  // load, overshoots the budget by the wake-up latency.
  const Duration budget = limit.Remaining();
  TimePoint now = start;
  mu_.Lock();
  // Fast path: an idle resource and nobody ahead of us.
  while (!shutdown_ && waiters_.empty() && !idle_.empty()) {
    Entry<T>* e = idle_.back();
    idle_.pop_back();
    if (now >= e->retire_at) {
      Destroyed();
      mu_.Unlock();
      delete e;
      now = clock_.Now();
      mu_.Lock();
      continue;
    }
    MarkLeased(e, now);
    const bool validate = hooks_.validate && now - e->last_checked >= options_.validation_bypass;
    mu_.Unlock();
    const bool broken = CallIsBroken(*e->resource);
    if (!broken && !validate) {
      if (histogram_ != nullptr) histogram_->ObserveDuration(clock_.Now() - start);
      return Lease<T>(this, e);
    }
    absl::Status valid = absl::UnavailableError("is_broken");
    if (!broken) {
      const Deadline check_by = Deadline::Min(
          limit, Deadline::At(AddSaturating(now, options_.validation_timeout), clock_));
      valid = CallValidate(*e->resource, check_by);
    }
    now = clock_.Now();
    mu_.Lock();
    if (valid.ok()) {
      e->last_checked = now;
      mu_.Unlock();
      if (histogram_ != nullptr) histogram_->ObserveDuration(now - start);
      return Lease<T>(this, e);
    }
    UnmarkLeased(e);
    --acquired_;
    ++validation_failures_;
    Destroyed();
    mu_.Unlock();
    delete e;
    now = clock_.Now();
    mu_.Lock();
  }
  if (shutdown_) {
    mu_.Unlock();
    return ShutDownError(options_);
  }
  if (!wait) {
    const int in_use = in_use_;
    const int waiting = static_cast<int>(waiters_.size());
    mu_.Unlock();
    return ExhaustedError(options_, in_use, waiting);
  }

  Waiter self;
  waiters_.push_back(&self);
  auto position = std::prev(waiters_.end());
  for (;;) {
    if (self.entry != nullptr) {
      Entry<T>* e = self.entry;
      mu_.Unlock();
      // Handed over by Put straight after its last use or creation: no validation needed, only
      // the cheap local check.
      if (!CallIsBroken(*e->resource)) {
        now = clock_.Now();
        if (histogram_ != nullptr) histogram_->ObserveDuration(now - start);
        return Lease<T>(this, e);
      }
      mu_.Lock();
      UnmarkLeased(e);
      --acquired_;
      ++validation_failures_;
      self.entry = nullptr;
      waiters_.push_front(&self);  // still the oldest: keep our place
      position = waiters_.begin();
      Destroyed();
      mu_.Unlock();
      delete e;
      mu_.Lock();
      continue;
    }
    if (self.cancelled) {
      mu_.Unlock();
      return CancelledError(options_);
    }
    if (CanCreate()) {
      now = clock_.Now();
      if (limit.Expired()) {  // e.g. our own creation just went to an older waiter
        Snapshot snap = SnapshotLocked(now);
        waiters_.erase(position);
        ++timeouts_;
        mu_.Unlock();
        return AcquireTimeoutError(options_, budget, snap);
      }
      ++connecting_;
      mu_.Unlock();
      absl::StatusOr<std::unique_ptr<T>> created = CallCreate(limit);
      now = clock_.Now();
      mu_.Lock();
      --connecting_;
      if (created.ok()) {
        Entry<T>* e = NewEntry(std::move(*created), now);
        // To the oldest waiter (perhaps us), keeping FIFO order.
        if (Entry<T>* dead = Put(e, now)) {
          mu_.Unlock();
          delete dead;
          mu_.Lock();
        }
        continue;
      }
      const absl::Status cause = created.status();
      RecordCreateFailure(cause, now);
      OnCapacityFreed();  // another waiter may try
      if (self.entry != nullptr || self.cancelled) continue;
      waiters_.erase(position);
      if (limit.Expired()) {
        ++timeouts_;
        const Snapshot snap = SnapshotLocked(now);
        mu_.Unlock();
        return AcquireTimeoutError(options_, budget, snap);
      }
      mu_.Unlock();
      return CreateFailedError(options_, cause);
    }
    if (!limit.clock().WaitUntil(mu_, self.cv, limit.time(), [&] {
          mu_.AssertHeld();  // WaitUntil calls pred with its `mu` (this mu_) held
          return self.entry != nullptr || self.cancelled || CanCreate();
        })) {
      now = clock_.Now();
      Snapshot snap = SnapshotLocked(now);
      waiters_.erase(position);
      ++timeouts_;
      mu_.Unlock();
      return AcquireTimeoutError(options_, budget, snap);
    }
  }
}

template <typename T>
void Core<T>::Return(Entry<T>* e, bool broken) {
  // After Shutdown (and so after ~Pool) a returned resource is closed without calling a hook or
  // reading the clock: both belong to the user and may be gone. Without an on_return hook to run
  // the clock is read under the lock (a few nanoseconds, no I/O), which keeps the return to one
  // critical section. With one, the return registers in returning_ before running the hook
  // unlocked, and Shutdown waits until no return needs the hook or the clock any more.
  bool close = broken;
  bool registered = false;  // in returning_, with `now` read outside the lock
  TimePoint now{};
  if (!broken && hooks_.on_return) {
    {
      MutexLock lock(mu_);
      registered = !shutdown_;
      if (registered) ++returning_;
    }
    if (registered) {
      close = !CallOnReturn(*e->resource);
      now = clock_.Now();
    }
  }
  Entry<T>* dead = nullptr;
  bool delete_core = false;
  {
    MutexLock lock(mu_);
    if (registered && --returning_ == 0) returned_cv_.SignalAll();
    if (!registered && !close && !shutdown_) now = clock_.Now();
    UnmarkLeased(e);
    if (close || shutdown_ || now >= e->retire_at) {
      dead = e;
      Destroyed();
    } else {
      e->last_checked = now;
      dead = Put(e, now);
    }
    delete_core = orphaned_ && in_use_ == 0;
  }
  delete dead;  // closes the resource outside the lock
  if (delete_core) delete this;
}

template <typename T>
void Core<T>::RunMaintenance() {
  TimePoint now = clock_.Now();
  std::vector<Entry<T>*> retire;
  std::vector<Entry<T>*> check;
  std::vector<std::string> leaks;
  {
    MutexLock lock(mu_);
    if (shutdown_) return;
    ++maintenance_runs_;
    // Oldest idle first (front), so idle_timeout closes the least recently used.
    int removable = static_cast<int>(idle_.size()) - min_idle_;
    std::vector<Entry<T>*> keep;
    keep.reserve(idle_.size());
    for (Entry<T>* e : idle_) {
      if (now >= e->retire_at) {
        retire.push_back(e);
        --removable;
      } else if (removable > 0 && now - e->idle_since >= options_.idle_timeout) {
        retire.push_back(e);
        --removable;
      } else if (hooks_.validate && now - e->last_checked >= options_.keepalive_interval) {
        check.push_back(e);
      } else {
        keep.push_back(e);
      }
    }
    idle_.swap(keep);
    checking_ += static_cast<int>(check.size());
    if (!retire.empty()) Destroyed(static_cast<int>(retire.size()));
    if (options_.leak_detection_threshold) {
      for (Entry<T>* e : leased_) {
        const Duration held = now - e->leased_at;
        if (!e->leak_reported && held >= *options_.leak_detection_threshold) {
          e->leak_reported = true;
          ++leaks_;
          leaks.push_back(LeakReport(options_, e->label, held));
        }
      }
    }
  }
  for (Entry<T>* e : retire) delete e;
  for (const std::string& report : leaks) options_.on_leak(report);
  for (Entry<T>* e : check) {
    const absl::Status valid = CallValidate(
        *e->resource, Deadline::At(AddSaturating(now, options_.validation_timeout), clock_));
    now = clock_.Now();
    Entry<T>* dead = nullptr;
    {
      MutexLock lock(mu_);
      --checking_;
      if (valid.ok()) {
        e->last_checked = now;
        dead = Put(e, now, /*keep_idle_since=*/true);
      } else {
        ++validation_failures_;
        dead = e;
        Destroyed();
      }
    }
    delete dead;
  }
  // Fill up to min_idle, one creation at a time; stop at the first failure (the next pass or an
  // Acquire tries again) so a down backend is not hammered.
  for (;;) {
    {
      MutexLock lock(mu_);
      fill_requested_ = false;
      const bool want = !shutdown_ && static_cast<int>(idle_.size()) + connecting_ < min_idle_ &&
                        total_ + connecting_ < options_.max_size &&
                        connecting_ < options_.max_connecting;
      if (!want) break;
      ++connecting_;
    }
    absl::StatusOr<std::unique_ptr<T>> created =
        CallCreate(Deadline::At(AddSaturating(now, options_.acquire_timeout), clock_));
    now = clock_.Now();
    Entry<T>* dead = nullptr;
    {
      MutexLock lock(mu_);
      --connecting_;
      if (!created.ok()) {
        RecordCreateFailure(created.status(), now);
        for (Waiter* w : waiters_) w->cv.Signal();
        fill_requested_ = false;  // don't spin: retry at the next interval
        break;
      }
      dead = Put(NewEntry(std::move(*created), now), now);
    }
    delete dead;
  }
}

template <typename T>
void Core<T>::MaintainerLoop() {
  for (;;) {
    {
      MutexLock lock(mu_);
      const TimePoint next = AddSaturating(clock_.Now(), options_.maintenance_interval);
      clock_.WaitUntil(mu_, maintainer_cv_, next, [&] {
        mu_.AssertHeld();  // WaitUntil calls pred with its `mu` (this mu_) held
        return shutdown_ || fill_requested_;
      });
      if (shutdown_) return;
    }
    RunMaintenance();
  }
}

template <typename T>
void Core<T>::Shutdown() {
  std::vector<Entry<T>*> idle;
  {
    MutexLock lock(mu_);
    if (!shutdown_) {
      shutdown_ = true;
      for (Waiter* w : waiters_) {
        w->cancelled = true;
        w->cv.Signal();
      }
      waiters_.clear();
      idle.swap(idle_);
      total_ -= static_cast<int>(idle.size());
      destroyed_ += idle.size();
      maintainer_cv_.SignalAll();
    }
    // Returns in flight still call on_return and read the clock: wait for them (a plain wait,
    // not through the clock, which is what they are using).
    while (returning_ > 0) returned_cv_.Wait(mu_);
  }
  {
    MutexLock lock(join_mu_);
    if (maintainer_.joinable()) maintainer_.join();
  }
  for (Entry<T>* e : idle) delete e;
}

template <typename T>
PoolStats Core<T>::Stats() const {
  MutexLock lock(mu_);
  return PoolStats{.max_size = options_.max_size,
                   .in_use = in_use_,
                   .idle = static_cast<int>(idle_.size()),
                   .pending = static_cast<int>(waiters_.size()),
                   .connecting = connecting_,
                   .total = total_,
                   .acquired_total = acquired_,
                   .created_total = created_,
                   .destroyed_total = destroyed_,
                   .timeouts_total = timeouts_,
                   .create_failures_total = create_failures_,
                   .validation_failures_total = validation_failures_,
                   .leaks_detected_total = leaks_,
                   .maintenance_runs_total = maintenance_runs_,
                   .hook_exceptions_total = hook_exceptions_.load(std::memory_order_relaxed)};
}

}  // namespace keel::pool_internal

namespace keel {

template <typename T>
T* Lease<T>::get() const {
  return entry_->resource.get();
}

template <typename T>
void Lease<T>::Release() {
  if (entry_ == nullptr) return;
  pool_internal::Entry<T>* e = std::exchange(entry_, nullptr);
  std::exchange(core_, nullptr)->Return(e, /*broken=*/false);
}

template <typename T>
void Lease<T>::Invalidate() {
  if (entry_ == nullptr) return;
  pool_internal::Entry<T>* e = std::exchange(entry_, nullptr);
  std::exchange(core_, nullptr)->Return(e, /*broken=*/true);
}

template <typename T>
void Lease<T>::SetLabel(std::string label) {
  core_->SetLabel(entry_, std::move(label));
}

template <typename T>
absl::StatusOr<std::unique_ptr<Pool<T>>> Pool<T>::Create(PoolOptions options, PoolHooks<T> hooks,
                                                         Clock& clock, MetricsRegistry* metrics) {
  return CreateImpl(std::move(options), std::move(hooks), clock, metrics, std::nullopt);
}

template <typename T>
absl::StatusOr<std::unique_ptr<Pool<T>>> Pool<T>::Create(PoolOptions options, PoolHooks<T> hooks,
                                                         Clock& clock, MetricsRegistry* metrics,
                                                         absl::BitGenRef random) {
  return CreateImpl(std::move(options), std::move(hooks), clock, metrics,
                    std::optional<absl::BitGenRef>(random));
}

template <typename T>
absl::StatusOr<std::unique_ptr<Pool<T>>> Pool<T>::CreateImpl(
    PoolOptions options, PoolHooks<T> hooks, Clock& clock, MetricsRegistry* metrics,
    std::optional<absl::BitGenRef> random) {
  if (auto s = pool_internal::ValidateOptions(options); !s.ok()) return s;
  if (auto s = internal::RequireSet({"pool", options.name}, "hooks.create", bool(hooks.create));
      !s.ok()) {
    return s;
  }
  std::unique_ptr<Pool<T>> pool(
      new Pool<T>(new pool_internal::Core<T>(std::move(options), std::move(hooks), clock, random)));
  if (metrics != nullptr) {
    Histogram* histogram = nullptr;
    pool_internal::Core<T>* core = pool->core_;
    auto registrations = pool_internal::RegisterMetrics(
        *metrics, core->options().name, [core] { return core->Stats(); }, &histogram);
    if (!registrations.ok()) return registrations.status();  // ~Pool cleans up
    pool->registrations_ = std::move(*registrations);
    core->set_histogram(histogram);
  }
  pool->core_->StartMaintainer();
  return pool;
}

template <typename T>
Pool<T>::~Pool() {
  core_->Shutdown();
  registrations_.clear();  // before the core may go: the callbacks read it
  core_->Orphan();
}

template <typename T>
absl::StatusOr<Lease<T>> Pool<T>::Acquire(Deadline deadline) {
  return core_->Acquire(deadline, /*wait=*/true);
}

template <typename T>
absl::StatusOr<Lease<T>> Pool<T>::TryAcquire() {
  return core_->Acquire(Deadline::Infinite(), /*wait=*/false);
}

template <typename T>
void Pool<T>::RunMaintenance() {
  core_->RunMaintenance();
}

template <typename T>
PoolStats Pool<T>::Stats() const {
  return core_->Stats();
}

template <typename T>
const PoolOptions& Pool<T>::options() const {
  return core_->options();
}

template <typename T>
void Pool<T>::Shutdown() {
  core_->Shutdown();
}

}  // namespace keel
