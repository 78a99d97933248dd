#include "keel/resilience/retry.h"

#include <algorithm>
#include <string>

#include "absl/random/random.h"
#include "absl/strings/cord.h"
#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/time_math.h"
#include "keel/internal/validate.h"

namespace keel {
namespace {

using internal::AddSaturating;

// `status` with `prefix` before its message; code and payloads (retry-after) are kept.
absl::Status Annotate(const absl::Status& status, const std::string& prefix) {
  absl::Status out(status.code(), internal::StrCat(prefix, ": ", status.message()));
  status.ForEachPayload(
      [&](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

std::string Attempts(int n) { return internal::StrCat(n, n == 1 ? " attempt" : " attempts"); }

}  // namespace

absl::StatusOr<Retry> Retry::Create(Options options, Clock& clock, MetricsRegistry* metrics) {
  return CreateImpl(std::move(options), clock, std::nullopt, metrics);
}

absl::StatusOr<Retry> Retry::Create(Options options, Clock& clock, absl::BitGenRef gen,
                                    MetricsRegistry* metrics) {
  return CreateImpl(std::move(options), clock, gen, metrics);
}

RetryStats Retry::Stats() const {
  RetryStats s;
  s.retries_total = counters_->retries.load(std::memory_order_relaxed);
  for (int i = 0; i < kOutcomes; ++i) {
    s.outcomes_total[static_cast<size_t>(i)] =
        counters_->outcomes[static_cast<size_t>(i)].load(std::memory_order_relaxed);
  }
  return s;
}

absl::StatusOr<Retry> Retry::CreateImpl(Options options, Clock& clock,
                                        std::optional<absl::BitGenRef> gen,
                                        MetricsRegistry* metrics) {
  const internal::OptionsOf of("retry", options.name);
  KEEL_RETURN_IF_ERROR(internal::RequireAtLeast(of, "max_attempts", options.max_attempts, 1));
  KEEL_RETURN_IF_ERROR(internal::RequireSet(of, "retry_on", bool(options.retry_on)));
  KEEL_RETURN_IF_ERROR(
      internal::RequireNonNegative(of, "max_retry_after", options.max_retry_after));
  absl::StatusOr<Backoff> checked = Backoff::Create(options.backoff, "backoff");
  if (!checked.ok()) return of.Nest(checked.status());
  const Backoff backoff = *checked;
  Retry retry(std::move(options), backoff, clock, gen);
  if (metrics != nullptr) {
    // The callbacks hold the counters (not the Retry), so copies and moves never dangle; the
    // registrations live as long as the last copy.
    std::shared_ptr<Counters> counters = retry.counters_;
    const std::string& name = retry.options_.name;
    KEEL_ASSIGN_OR_RETURN(
        MetricsRegistry::Registration r,
        metrics->AddCounterCallback(
            "keel_retry_retries_total", "Attempts beyond the first.", {{"name", name}},
            [c = counters.get()] { return double(c->retries.load(std::memory_order_relaxed)); }));
    counters->registrations.push_back(std::move(r));
    static constexpr const char* kOutcomeLabels[kOutcomes] = {
        "succeeded_after_retry", "gave_up_attempts", "gave_up_deadline",
        "gave_up_budget",        "not_retryable",    "cancelled"};
    for (int i = 0; i < kOutcomes; ++i) {
      KEEL_ASSIGN_OR_RETURN(
          MetricsRegistry::Registration reg,
          metrics->AddCounterCallback(
              "keel_retry_calls_total", "Calls whose first attempt failed, by how they ended.",
              {{"name", name}, {"outcome", kOutcomeLabels[i]}}, [c = counters.get(), i] {
                return double(c->outcomes[static_cast<size_t>(i)].load(std::memory_order_relaxed));
              }));
      counters->registrations.push_back(std::move(reg));
    }
  }
  return retry;
}

absl::Status Retry::Run(const CallContext& ctx,
                        absl::FunctionRef<absl::Status(const CallContext&)> attempt) const {
  RetryBudgetPolicy* const budget = options_.budget;
  // Ends the call for the budget on every way out, an exception from `attempt` included, so a
  // concurrency budget never counts a call that is gone.
  CallScope scope(budget);
  CallContext inner = ctx;
  inner.attempt = 1;
  absl::Status status = attempt(inner);
  if (status.ok()) {
    if (budget != nullptr) budget->OnAttemptSucceeded(1);
    return status;
  }
  Loop loop(*this, std::move(inner), std::move(status));
  for (;;) {
    absl::StatusOr<Duration> delay = loop.Next();
    if (!delay.ok()) return std::move(delay).status();
    // The backoff ends early when the call is cancelled: nobody waits for its result any more.
    if (*delay > Duration::zero() &&
        !loop.context().cancellation.SleepUntil(*clock_, AddSaturating(clock_->Now(), *delay))) {
      return loop.Cancelled();
    }
    if (loop.Finish(attempt(loop.Begin()))) return absl::OkStatus();
  }
}

Retry::Loop::Loop(const Retry& retry, CallContext ctx, absl::Status failure)
    : retry_(retry),
      ctx_(std::move(ctx)),
      status_(std::move(failure)),
      delays_(retry.backoff_.Start()) {}

absl::Status Retry::Loop::CancelledStatus() {
  retry_.Count(Outcome::kCancelled);
  return absl::CancelledError(internal::StrCat("retry \"", retry_.options_.name,
                                               "\": cancelled after ", Attempts(ctx_.attempt),
                                               "; last error: ", StatusText(status_)));
}

absl::StatusOr<Duration> Retry::Loop::Next() {
  const Options& o = retry_.options_;
  RetryBudgetPolicy* const budget = o.budget;
  const std::string& name = o.name;
  // Records a retryable failure after which Retry stops for its own reasons.
  auto record_final_failure = [&] {
    if (budget != nullptr) budget->OnAttemptFailed(status_, /*retry_wanted=*/false);
  };
  if (!o.retry_on(status_)) {
    retry_.Count(Outcome::kNotRetryable);
    if (ctx_.attempt == 1) return std::move(status_);
    return Annotate(status_, internal::StrCat("retry \"", name, "\": not retryable after ",
                                              Attempts(ctx_.attempt)));
  }
  if (ctx_.attempt >= o.max_attempts) {
    record_final_failure();
    retry_.Count(Outcome::kGaveUpAttempts);
    return Annotate(
        status_, internal::StrCat("retry \"", name, "\": gave up after ", Attempts(ctx_.attempt)));
  }
  if (ctx_.cancellation.cancelled()) {
    record_final_failure();
    return CancelledStatus();
  }
  thread_local absl::InsecureBitGen thread_gen;
  absl::BitGenRef gen = retry_.gen_.has_value() ? *retry_.gen_ : absl::BitGenRef(thread_gen);
  Duration delay = delays_.Next(gen);
  if (o.honor_retry_after) {
    if (auto hint = RetryAfter(status_))
      delay = std::max(delay, std::min(*hint, o.max_retry_after));
  }
  // A sleep ending exactly at the deadline would leave no time for the attempt: stop at `>=`.
  if (!ctx_.deadline.IsInfinite()) {
    const Duration left = ctx_.deadline.Remaining();
    if (delay >= left) {
      record_final_failure();
      retry_.Count(Outcome::kGaveUpDeadline);
      return absl::DeadlineExceededError(internal::StrCat(
          "retry \"", name, "\": ", internal::FormatDuration(left),
          " left before the deadline, next attempt in ", internal::FormatDuration(delay),
          "; stopped after ", Attempts(ctx_.attempt), "; last error: ", StatusText(status_)));
    }
  }
  // Recording the failure and asking for the retry is one step, so a shared budget decides on
  // the state this failure produced.
  if (budget != nullptr) {
    grant_ = budget->OnAttemptFailed(status_, /*retry_wanted=*/true);
    if (!grant_) {
      retry_.Count(Outcome::kGaveUpBudget);
      return Annotate(status_,
                      internal::StrCat("retry \"", name, "\": retry budget exhausted after ",
                                       Attempts(ctx_.attempt)));
    }
  }
  return delay;
}

absl::Status Retry::Loop::Cancelled() {
  if (grant_) retry_.options_.budget->OnRetryFinished(*grant_, /*succeeded=*/false);
  grant_.reset();
  return CancelledStatus();
}

const CallContext& Retry::Loop::Begin() {
  ++ctx_.attempt;
  retry_.counters_->retries.fetch_add(1, std::memory_order_relaxed);
  return ctx_;
}

bool Retry::Loop::Finish(absl::Status status) {
  RetryBudgetPolicy* const budget = retry_.options_.budget;
  if (grant_) budget->OnRetryFinished(*grant_, status.ok());
  grant_.reset();
  if (status.ok()) {
    if (budget != nullptr) budget->OnAttemptSucceeded(ctx_.attempt);
    retry_.Count(Outcome::kSucceededAfterRetry);
    return true;
  }
  status_ = std::move(status);
  return false;
}

}  // namespace keel
