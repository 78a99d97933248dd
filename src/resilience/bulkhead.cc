#include "keel/resilience/bulkhead.h"

#include <string>

#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

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
  return absl::OkStatus();
}

absl::Status SemaphoreBulkhead::FullError() const {
  return absl::ResourceExhaustedError(internal::StrCat("bulkhead \"", options_.name, "\": full (",
                                                       in_use_, "/", options_.max_concurrent,
                                                       " in use, ", waiters_.size(), " waiting)"));
}

absl::Status SemaphoreBulkhead::CancelledError() const {
  return absl::CancelledError(internal::StrCat("bulkhead \"", options_.name, "\": shut down"));
}

absl::StatusOr<SemaphoreBulkhead::Permit> SemaphoreBulkhead::TryAcquire() {
  MutexLock lock(mu_);
  if (shut_down_) return CancelledError();
  // No barging: a free permit is only taken when nobody queued before us.
  if (in_use_ < options_.max_concurrent && waiters_.empty()) {
    ++in_use_;
    Set(in_use_view_, in_use_);
    Bump(acquired_);
    return Permit(this);
  }
  Bump(rejected_full_);
  return FullError();
}

absl::StatusOr<SemaphoreBulkhead::Permit> SemaphoreBulkhead::Acquire(Deadline deadline) {
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

void SemaphoreBulkhead::ReleaseOne() {
  MutexLock lock(mu_);
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
}

SemaphoreBulkheadStats SemaphoreBulkhead::Stats() const {
  SemaphoreBulkheadStats s;
  {
    MutexLock lock(mu_);
    s.in_use = in_use_;
    s.waiting = static_cast<int>(waiters_.size());
    s.shut_down = shut_down_;
  }
  s.max_concurrent = options_.max_concurrent;
  s.acquired_total = acquired_.load(std::memory_order_relaxed);
  s.rejected_total = rejected_full_.load(std::memory_order_relaxed);
  s.timed_out_total = rejected_deadline_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace keel
