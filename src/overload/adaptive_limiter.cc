#include "keel/overload/adaptive_limiter.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "keel/status.h"
#include "overload/criticality_share.h"

namespace keel::overload {
namespace {

void Bump(std::atomic<uint64_t>& a) { a.fetch_add(1, std::memory_order_relaxed); }

}  // namespace

absl::StatusOr<std::unique_ptr<AdaptiveLimiter>> AdaptiveLimiter::Create(
    Options options, std::unique_ptr<LimitAlgorithm> algorithm, Clock& clock,
    MetricsRegistry* metrics) {
  namespace ki = keel::internal;
  const ki::OptionsOf of("adaptive limiter", options.name);
  if (options.name.empty()) return ki::InvalidOption(of, "name", "non-empty", "\"\"");
  KEEL_RETURN_IF_ERROR(ki::RequireSet(of, "algorithm", algorithm != nullptr));
  KEEL_RETURN_IF_ERROR(ki::ValidateCriticalityShare(of, options.criticality_share));
  if (options.queue) KEEL_RETURN_IF_ERROR(CodelQueue::Validate(of, *options.queue));
  std::unique_ptr<AdaptiveLimiter> l(
      new AdaptiveLimiter(std::move(options), std::move(algorithm), clock));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(l->RegisterMetrics(*metrics));
  return l;
}

AdaptiveLimiter::AdaptiveLimiter(Options options, std::unique_ptr<LimitAlgorithm> algorithm,
                                 Clock& clock)
    : options_(std::move(options)),
      clock_(clock),
      queued_(options_.queue.has_value()),
      algorithm_name_(algorithm->name()),
      limit_(algorithm->limit()),
      algorithm_(std::move(algorithm)),
      delivered_limit_(limit_.load(std::memory_order_relaxed)) {
  if (queued_) queue_.emplace(*options_.queue, clock_.Now());
}

AdaptiveLimiter::~AdaptiveLimiter() = default;

absl::Status AdaptiveLimiter::RegisterMetrics(MetricsRegistry& metrics) {
  const std::string algorithm = algorithm_name();
  const Labels labels = {{"name", options_.name}, {"algorithm", algorithm}};
  auto with = [&](const char* key, const char* value) {
    Labels l = labels;
    l.emplace_back(key, value);
    return l;
  };
  auto keep = [&](absl::StatusOr<MetricsRegistry::Registration> r) -> absl::Status {
    if (!r.ok()) return r.status();
    registrations_.push_back(std::move(r).value());
    return absl::OkStatus();
  };
  auto gauge = [&](const char* family, const char* help, Labels l, std::function<double()> read) {
    return keep(metrics.AddGaugeCallback(family, help, l, std::move(read)));
  };
  auto counter = [&](const char* family, const char* help, Labels l, std::function<double()> read) {
    return keep(metrics.AddCounterCallback(family, help, l, std::move(read)));
  };
  KEEL_RETURN_IF_ERROR(gauge("keel_adaptive_limit", "The current concurrency limit.", labels,
                             [this] { return double(limit()); }));
  KEEL_RETURN_IF_ERROR(gauge("keel_adaptive_limit_in_flight", "Permits held.", labels,
                             [this] { return double(in_flight()); }));
  KEEL_RETURN_IF_ERROR(gauge("keel_adaptive_limit_waiting", "Callers in the queue.", labels,
                             [this] { return double(waiting_.load(std::memory_order_relaxed)); }));
  const char* rtt_help = "The algorithm's latency estimates.";
  KEEL_RETURN_IF_ERROR(
      gauge("keel_adaptive_limit_rtt_seconds", rtt_help, with("estimate", "no_load"),
            [this] { return std::chrono::duration<double>(Stats().rtt.no_load).count(); }));
  KEEL_RETURN_IF_ERROR(
      gauge("keel_adaptive_limit_rtt_seconds", rtt_help, with("estimate", "sample"),
            [this] { return std::chrono::duration<double>(Stats().rtt.sample).count(); }));
  const char* calls_help = "Admitted calls by recorded outcome.";
  KEEL_RETURN_IF_ERROR(counter("keel_adaptive_limit_calls_total", calls_help,
                               with("outcome", "success"),
                               [this] { return double(Stats().success_total); }));
  KEEL_RETURN_IF_ERROR(counter("keel_adaptive_limit_calls_total", calls_help,
                               with("outcome", "dropped"),
                               [this] { return double(Stats().dropped_total); }));
  KEEL_RETURN_IF_ERROR(
      counter("keel_adaptive_limit_calls_total", calls_help, with("outcome", "ignored"),
              [this] { return double(ignored_.load(std::memory_order_relaxed)); }));
  const char* rejected_help = "Calls refused a permit, by reason.";
  const std::pair<const char*, const std::atomic<uint64_t>*> reasons[] = {
      {"limit", &rejected_limit_},
      {"queue_timeout", &rejected_queue_timeout_},
      {"queue_full", &rejected_queue_full_},
      {"shed", &rejected_shed_},
      {"deadline", &rejected_deadline_}};
  for (const auto& [reason, value] : reasons) {
    KEEL_RETURN_IF_ERROR(
        counter("keel_adaptive_limit_rejected_total", rejected_help, with("reason", reason),
                [value = value] { return double(value->load(std::memory_order_relaxed)); }));
  }
  return absl::OkStatus();
}

int AdaptiveLimiter::Cap(int limit, Criticality c) const {
  const double share = options_.criticality_share[static_cast<size_t>(c)];
  if (share >= 1.0) return limit;
  return std::max(1, static_cast<int>(std::floor(limit * share)));
}

std::optional<int> AdaptiveLimiter::TakeSlot(Criticality c) {
  const int cap = Cap(limit_.load(std::memory_order_relaxed), c);
  // seq_cst, the load as well as the CAS: after Acquire's waiting_ store, this read must not see
  // an in-flight count older than a release that did not see the waiter (the Dekker pair with
  // Complete). A plain load on x86.
  int cur = in_flight_.load(std::memory_order_seq_cst);
  while (cur < cap) {
    if (in_flight_.compare_exchange_weak(cur, cur + 1, std::memory_order_seq_cst,
                                         std::memory_order_relaxed)) {
      return cur + 1;
    }
  }
  return std::nullopt;
}

absl::Status AdaptiveLimiter::LimitError(Criticality c) const {
  const int limit = limit_.load(std::memory_order_relaxed);
  const int in_flight = in_flight_.load(std::memory_order_relaxed);
  const double share = options_.criticality_share[static_cast<size_t>(c)];
  if (share >= 1.0) {
    return absl::ResourceExhaustedError(internal::StrCat("adaptive limiter \"", options_.name,
                                                         "\": limit reached (", in_flight, "/",
                                                         limit, " in flight)"));
  }
  return absl::ResourceExhaustedError(
      internal::StrCat("adaptive limiter \"", options_.name, "\": limit reached for ",
                       CriticalityName(c), " calls (", in_flight, "/", limit, " in flight, ",
                       CriticalityName(c), " may use ", Cap(limit, c), ")"));
}

absl::Status AdaptiveLimiter::CancelledError() const {
  return absl::CancelledError(
      internal::StrCat("adaptive limiter \"", options_.name, "\": shut down"));
}

absl::StatusOr<AdaptiveLimiter::Permit> AdaptiveLimiter::TryAcquire(Criticality c) {
  // Relaxed: a TryAcquire racing Shutdown may still succeed, as if it came first.
  if (shut_down_view_.load(std::memory_order_relaxed)) return CancelledError();
  // No barging past waiters (acquire: a plain load on x86).
  if (!queued_ || waiting_.load(std::memory_order_acquire) == 0) {
    if (std::optional<int> slot = TakeSlot(c)) return Permit(this, clock_.Now(), *slot);
  }
  Bump(rejected_limit_);
  return LimitError(c);
}

void AdaptiveLimiter::GrantWaiters() {
  MutexLock lock(mu_);
  GrantLocked(clock_.Now());
}

void AdaptiveLimiter::GrantLocked(TimePoint now) {
  if (!queue_) return;
  while (CodelQueue::Waiter* w = queue_->Next(now)) {
    // Shares shrink with criticality: if the most critical waiter does not fit, none does.
    std::optional<int> slot = TakeSlot(w->criticality);
    if (!slot) break;
    queue_->Grant(*w, now);
    w->granted_at = now;
    w->grant_token = *slot;
    // Signalled under the lock: the waiter's node lives on its stack.
    w->cv.Signal();
  }
  waiting_.store(static_cast<int>(queue_->size()), std::memory_order_seq_cst);
}

absl::StatusOr<AdaptiveLimiter::Permit> AdaptiveLimiter::Acquire(Deadline deadline, Criticality c) {
  if (!queued_) return TryAcquire(c);
  if (shut_down_view_.load(std::memory_order_relaxed)) return CancelledError();
  if (waiting_.load(std::memory_order_acquire) == 0) {
    if (std::optional<int> slot = TakeSlot(c)) return Permit(this, clock_.Now(), *slot);
  }
  using WaitEnd = CodelQueue::WaitEnd;
  CodelQueue::Waiter me(c);
  WaitEnd end;
  Duration timeout;
  {
    MutexLock lock(mu_);
    if (shut_down_) return CancelledError();
    const TimePoint now = clock_.Now();
    timeout = queue_->TimeoutFor(now);
    if (!queue_->Push(me, now)) {
      Bump(rejected_queue_full_);
      return absl::ResourceExhaustedError(internal::StrCat(
          "adaptive limiter \"", options_.name, "\": queue full (", queue_->size(), " waiting)"));
    }
    // Announce the waiter (GrantLocked's store) before trying for a slot once more: a release
    // whose decrement this attempt misses comes after that store in the seq_cst order, so it
    // sees waiting_ > 0 and grants (Complete). Nobody is left waiting beside a free slot.
    waiting_.store(static_cast<int>(queue_->size()), std::memory_order_seq_cst);
    GrantLocked(now);  // grants us if we are the most critical waiter and a slot is free
    if (me.granted) {
      end = WaitEnd::kGranted;
    } else {
      Bump(queued_total_);
      end = queue_->Wait(mu_, me, timeout, deadline, clock_, shut_down_);
      waiting_.store(static_cast<int>(queue_->size()), std::memory_order_seq_cst);
    }
  }
  using internal::FormatDuration;
  using internal::StrCat;
  const Duration retry_after = options_.queue->interval;
  switch (end) {
    case WaitEnd::kGranted:
      return Permit(this, me.granted_at, me.grant_token);
    case WaitEnd::kShutdown:
      return CancelledError();
    case WaitEnd::kDeadline:
      Bump(rejected_deadline_);
      return absl::DeadlineExceededError(
          StrCat("adaptive limiter \"", options_.name,
                 "\": deadline passed while waiting for a permit (limit ", limit(), ")"));
    case WaitEnd::kShed:
      Bump(rejected_shed_);
      return WithRetryAfter(
          absl::ResourceExhaustedError(StrCat("adaptive limiter \"", options_.name,
                                              "\": shed from the queue for a more critical call, "
                                              "retry after ",
                                              FormatDuration(retry_after))),
          retry_after);
    case WaitEnd::kQueueTimeout:
      break;
  }
  Bump(rejected_queue_timeout_);
  return WithRetryAfter(
      absl::ResourceExhaustedError(
          StrCat("adaptive limiter \"", options_.name, "\": no permit within the queue timeout of ",
                 FormatDuration(timeout), ", retry after ", FormatDuration(retry_after))),
      retry_after);
}

void AdaptiveLimiter::Complete(const Permit& permit, Outcome outcome) {
  if (outcome == Outcome::kIgnored) {
    Bump(ignored_);
    // seq_cst: the other half of the Dekker pair with waiting_ (see Acquire).
    in_flight_.fetch_sub(1, std::memory_order_seq_cst);
  } else {
    const TimePoint now = clock_.Now();
    LimitSample sample;
    sample.start = permit.start_;
    sample.now = now;
    sample.rtt = std::max(now - permit.start_, Duration(1));
    sample.in_flight = permit.in_flight_;
    sample.dropped = outcome == Outcome::kDropped;
    in_flight_.fetch_sub(1, std::memory_order_seq_cst);
    bool notify = false;
    {
      internal::SpinLockGuard guard(algo_mu_);
      const int next = algorithm_->Update(sample);
      if (outcome == Outcome::kSuccess) {
        ++success_;
      } else {
        ++dropped_;
      }
      if (next != limit_.load(std::memory_order_relaxed)) {
        limit_.store(next, std::memory_order_relaxed);
        if (options_.on_limit_change) notify = change_pending_ = true;
      }
    }
    if (notify) DeliverLimitChanges();
  }
  if (queued_ && waiting_.load(std::memory_order_seq_cst) > 0) GrantWaiters();
}

void AdaptiveLimiter::DeliverLimitChanges() {
  algo_mu_.Lock();
  // One deliverer at a time keeps the calls in order; changes made meanwhile are merged.
  if (delivering_ || !change_pending_) {
    algo_mu_.Unlock();
    return;
  }
  delivering_ = true;
  while (change_pending_) {
    change_pending_ = false;
    const int from = delivered_limit_;
    const int to = limit_.load(std::memory_order_relaxed);
    delivered_limit_ = to;
    algo_mu_.Unlock();
    if (from != to) {
      // User code: an exception is counted and dropped, never left to wedge delivery.
      try {
        options_.on_limit_change(from, to);
      } catch (...) {
        Bump(listener_exceptions_);
      }
    }
    algo_mu_.Lock();
  }
  delivering_ = false;
  algo_mu_.Unlock();
}

void AdaptiveLimiter::Shutdown() {
  MutexLock lock(mu_);
  shut_down_ = true;
  shut_down_view_.store(true, std::memory_order_relaxed);
  if (queue_) queue_->ForEach([](CodelQueue::Waiter& w) { w.cv.SignalAll(); });
}

AdaptiveLimiterStats AdaptiveLimiter::Stats() const {
  AdaptiveLimiterStats s;
  {
    internal::SpinLockGuard guard(algo_mu_);
    s.rtt = algorithm_->Rtt();
    s.success_total = success_;
    s.dropped_total = dropped_;
  }
  s.limit = limit();
  s.in_flight = in_flight();
  s.waiting = waiting_.load(std::memory_order_relaxed);
  auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  s.ignored_total = get(ignored_);
  s.queued_total = get(queued_total_);
  s.rejected_limit_total = get(rejected_limit_);
  s.rejected_queue_timeout_total = get(rejected_queue_timeout_);
  s.rejected_queue_full_total = get(rejected_queue_full_);
  s.rejected_shed_total = get(rejected_shed_);
  s.rejected_deadline_total = get(rejected_deadline_);
  s.listener_exceptions_total = get(listener_exceptions_);
  return s;
}

}  // namespace keel::overload
