#include "keel/resilience/bulkhead.h"

#include <string>

#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "keel/status.h"

namespace keel {
namespace {

// Counters below are only written under the bulkhead's mutex, so a relaxed load + store is a
// race-free increment; readers (Stats, metrics) need no ordering with anything else.
template <typename T>
void Set(std::atomic<T>& a, T v) {
  a.store(v, std::memory_order_relaxed);
}
void Bump(std::atomic<uint64_t>& a) { Set(a, a.load(std::memory_order_relaxed) + 1); }

}  // namespace

absl::StatusOr<std::unique_ptr<SemaphoreBulkhead>> SemaphoreBulkhead::Create(
    Options options, Clock& clock, MetricsRegistry* metrics) {
  const internal::OptionsOf of("bulkhead", options.name);
  if (options.name.empty()) return internal::InvalidOption(of, "name", "non-empty", "\"\"");
  KEEL_RETURN_IF_ERROR(internal::RequireAtLeast(of, "max_concurrent", options.max_concurrent, 1));
  KEEL_RETURN_IF_ERROR(internal::RequireNonNegative(of, "max_wait", options.max_wait));
  if (options.queue) {
    if (options.max_wait != Duration::zero()) {
      return internal::InvalidOption(of, "max_wait", "0 with a queue", options.max_wait);
    }
    KEEL_RETURN_IF_ERROR(overload::CodelQueue::Validate(of, *options.queue));
  }
  std::unique_ptr<SemaphoreBulkhead> b(new SemaphoreBulkhead(std::move(options), clock));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(b->RegisterMetrics(*metrics));
  return b;
}

SemaphoreBulkhead::~SemaphoreBulkhead() = default;

absl::Status SemaphoreBulkhead::RegisterMetrics(MetricsRegistry& metrics) {
  const Labels name = {{"name", options_.name}};
  auto keep = [&](absl::StatusOr<MetricsRegistry::Registration> r) -> absl::Status {
    if (!r.ok()) return r.status();
    registrations_.push_back(std::move(r).value());
    return absl::OkStatus();
  };
  KEEL_RETURN_IF_ERROR(
      keep(metrics.AddGaugeCallback("keel_bulkhead_in_use", "Permits held.", name, [this] {
        return static_cast<double>(in_use_view_.load(std::memory_order_relaxed));
      })));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddGaugeCallback(
      "keel_bulkhead_waiting", "Callers waiting for a permit.", name,
      [this] { return static_cast<double>(waiting_view_.load(std::memory_order_relaxed)); })));
  KEEL_RETURN_IF_ERROR(
      keep(metrics.AddGaugeCallback("keel_bulkhead_max_concurrent", "Capacity.", name,
                                    [this] { return double(options_.max_concurrent); })));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_bulkhead_acquired_total", "Permits granted.", name,
      [this] { return static_cast<double>(acquired_.load(std::memory_order_relaxed)); })));
  const char* help = "Acquisitions that failed: full (or max_wait ran out) or deadline.";
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_bulkhead_rejected_total", help, {{"name", options_.name}, {"reason", "full"}},
      [this] { return static_cast<double>(rejected_full_.load(std::memory_order_relaxed)); })));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_bulkhead_rejected_total", help, {{"name", options_.name}, {"reason", "deadline"}},
      [this] { return static_cast<double>(rejected_deadline_.load(std::memory_order_relaxed)); })));
  if (options_.queue) {
    KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
        "keel_bulkhead_rejected_total", help,
        {{"name", options_.name}, {"reason", "queue_timeout"}}, [this] {
          return static_cast<double>(rejected_queue_timeout_.load(std::memory_order_relaxed));
        })));
  }
  return absl::OkStatus();
}

absl::Status SemaphoreBulkhead::FullError() const {
  const size_t waiting = queue_ ? queue_->size() : waiters_.size();
  return absl::ResourceExhaustedError(internal::StrCat("bulkhead \"", options_.name, "\": full (",
                                                       in_use_, "/", options_.max_concurrent,
                                                       " in use, ", waiting, " waiting)"));
}

absl::Status SemaphoreBulkhead::CancelledError() const {
  return absl::CancelledError(internal::StrCat("bulkhead \"", options_.name, "\": shut down"));
}

absl::StatusOr<SemaphoreBulkhead::Permit> SemaphoreBulkhead::TryAcquire() {
  MutexLock lock(mu_);
  if (shut_down_) return CancelledError();
  // No barging: a free permit is only taken when nobody queued before us.
  if (in_use_ < options_.max_concurrent && NobodyWaits()) {
    ++in_use_;
    Set(in_use_view_, in_use_);
    Bump(acquired_);
    return Permit(this);
  }
  Bump(rejected_full_);
  return FullError();
}

absl::StatusOr<SemaphoreBulkhead::Permit> SemaphoreBulkhead::Acquire(Deadline deadline,
                                                                     Criticality criticality) {
  if (options_.queue) {
    MutexLock lock(mu_);
    return AcquireQueued(deadline, criticality);
  }
  // The wait is measured on the deadline's own clock, max_wait included, so a caller's
  // ManualClock deadline (or any other timeline) is honoured whatever clock the bulkhead has; an
  // infinite deadline has no clock worth honouring and max_wait runs on the bulkhead's.
  const Clock& wait_clock = deadline.IsInfinite() ? clock_ : deadline.clock();
  const TimePoint now = wait_clock.Now();
  // The wait ends at the earlier of the caller's deadline and max_wait; remember which.
  const TimePoint own_limit =
      options_.max_wait >= TimePoint::max() - now ? TimePoint::max() : now + options_.max_wait;
  const bool deadline_first = deadline.time() <= own_limit;
  const TimePoint until = deadline_first ? deadline.time() : own_limit;

  MutexLock lock(mu_);
  if (shut_down_) return CancelledError();
  if (in_use_ < options_.max_concurrent && waiters_.empty()) {
    ++in_use_;
    Set(in_use_view_, in_use_);
    Bump(acquired_);
    return Permit(this);
  }
  auto fail = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::Status {
    if (deadline_first) {
      Bump(rejected_deadline_);
      return absl::DeadlineExceededError(internal::StrCat(
          "bulkhead \"", options_.name, "\": deadline passed while waiting for a permit (", in_use_,
          "/", options_.max_concurrent, " in use)"));
    }
    Bump(rejected_full_);
    return FullError();
  };
  if (until <= now) return fail();

  Waiter me;
  const auto it = waiters_.insert(waiters_.end(), &me);
  Set(waiting_view_, static_cast<int>(waiters_.size()));
  wait_clock.WaitUntil(mu_, me.cv, until, [&] {
    mu_.AssertHeld();  // WaitUntil calls the predicate with mu_ held
    return me.granted || shut_down_;
  });
  if (me.granted) {
    // ReleaseOne() handed its permit to us and removed us from the queue; in_use_ already
    // counts it. This wins over a shutdown or a timeout that raced with the hand-over.
    Bump(acquired_);
    return Permit(this);
  }
  waiters_.erase(it);
  Set(waiting_view_, static_cast<int>(waiters_.size()));
  if (shut_down_) return CancelledError();
  return fail();
}

absl::StatusOr<SemaphoreBulkhead::Permit> SemaphoreBulkhead::AcquireQueued(Deadline deadline,
                                                                           Criticality c) {
  if (shut_down_) return CancelledError();
  if (in_use_ < options_.max_concurrent && queue_->empty()) {
    ++in_use_;
    Set(in_use_view_, in_use_);
    Bump(acquired_);
    return Permit(this);
  }
  using WaitEnd = overload::CodelQueue::WaitEnd;
  const TimePoint now = clock_.Now();
  const Duration timeout = queue_->TimeoutFor(now);
  overload::CodelQueue::Waiter me(c);
  if (!queue_->Push(me, now)) {
    Bump(rejected_full_);
    return FullError();
  }
  Set(waiting_view_, static_cast<int>(queue_->size()));
  const WaitEnd end = queue_->Wait(mu_, me, timeout, deadline, clock_, shut_down_);
  Set(waiting_view_, static_cast<int>(queue_->size()));
  const Duration retry_after = options_.queue->interval;
  switch (end) {
    case WaitEnd::kGranted:
      // ReleaseOne() handed its permit over; in_use_ already counts it.
      Bump(acquired_);
      return Permit(this);
    case WaitEnd::kShutdown:
      return CancelledError();
    case WaitEnd::kDeadline:
      Bump(rejected_deadline_);
      return absl::DeadlineExceededError(internal::StrCat(
          "bulkhead \"", options_.name, "\": deadline passed while waiting for a permit (", in_use_,
          "/", options_.max_concurrent, " in use)"));
    case WaitEnd::kShed:
      Bump(rejected_queue_timeout_);
      return WithRetryAfter(absl::ResourceExhaustedError(internal::StrCat(
                                "bulkhead \"", options_.name,
                                "\": shed from the queue for a more critical call, "
                                "retry after ",
                                internal::FormatDuration(retry_after))),
                            retry_after);
    case WaitEnd::kQueueTimeout:
      break;
  }
  Bump(rejected_queue_timeout_);
  return WithRetryAfter(
      absl::ResourceExhaustedError(internal::StrCat(
          "bulkhead \"", options_.name, "\": no permit within the queue timeout of ",
          internal::FormatDuration(timeout), ", retry after ",
          internal::FormatDuration(retry_after))),
      retry_after);
}

void SemaphoreBulkhead::ReleaseOne() {
  MutexLock lock(mu_);
  if (queue_ && !queue_->empty()) {
    const TimePoint now = clock_.Now();
    overload::CodelQueue::Waiter* next = queue_->Next(now);
    queue_->Grant(*next, now);
    Set(waiting_view_, static_cast<int>(queue_->size()));
    // Signalled under the lock: the waiter lives on its stack (see below).
    next->cv.Signal();
    return;
  }
  if (!waiters_.empty()) {
    Waiter* next = waiters_.front();
    waiters_.pop_front();
    Set(waiting_view_, static_cast<int>(waiters_.size()));
    next->granted = true;
    // Signalled under the lock: the waiter's node (and its cv) lives on its stack and may be
    // gone as soon as we unlock.
    next->cv.Signal();
    return;
  }
  --in_use_;
  Set(in_use_view_, in_use_);
}

void SemaphoreBulkhead::Shutdown() {
  MutexLock lock(mu_);
  shut_down_ = true;
  // Each waiter removes itself when it wakes; signal under the lock for the same lifetime reason
  // as in ReleaseOne().
  for (Waiter* w : waiters_) w->cv.SignalAll();
  if (queue_) queue_->ForEach([](overload::CodelQueue::Waiter& w) { w.cv.SignalAll(); });
}

SemaphoreBulkheadStats SemaphoreBulkhead::Stats() const {
  SemaphoreBulkheadStats s;
  {
    MutexLock lock(mu_);
    s.in_use = in_use_;
    s.waiting = static_cast<int>(queue_ ? queue_->size() : waiters_.size());
    s.shut_down = shut_down_;
  }
  s.max_concurrent = options_.max_concurrent;
  s.acquired_total = acquired_.load(std::memory_order_relaxed);
  s.rejected_total = rejected_full_.load(std::memory_order_relaxed);
  s.timed_out_total = rejected_deadline_.load(std::memory_order_relaxed);
  s.queue_timed_out_total = rejected_queue_timeout_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace keel
