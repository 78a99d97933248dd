#include "keel/resilience/retry.h"

#include <algorithm>
#include <string>

#include "absl/random/random.h"
#include "absl/strings/cord.h"
#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel {
namespace {

// `t + d`, saturating at TimePoint::max() (d >= 0).
TimePoint AddSaturating(TimePoint t, Duration d) {
  return d >= TimePoint::max() - t ? TimePoint::max() : t + d;
}

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
  if (budget != nullptr) budget->OnCallStarted();
  // Ends the call for the budget on every way out, an exception from `attempt` included, so a
  // concurrency budget never counts a call that is gone.
  struct CallEnd {
    RetryBudgetPolicy* budget;
    ~CallEnd() {
      if (budget != nullptr) budget->OnCallFinished();
    }
  } call_end{budget};
  CallContext inner = ctx;
  inner.attempt = 1;
  absl::Status status = attempt(inner);
  if (status.ok()) {
    if (budget != nullptr) budget->OnAttemptSucceeded(1);
    return status;
  }
  return RetryLoop(std::move(inner), std::move(status), attempt);
}

absl::Status Retry::RetryLoop(CallContext ctx, absl::Status status,
                              absl::FunctionRef<absl::Status(const CallContext&)> attempt) const {
  thread_local absl::InsecureBitGen thread_gen;
  absl::BitGenRef gen = gen_.has_value() ? *gen_ : absl::BitGenRef(thread_gen);
  BackoffSequence delays = backoff_.Start();
  RetryBudgetPolicy* const budget = options_.budget;
  const std::string& name = options_.name;
  // Records a retryable failure after which Retry stops for its own reasons.
  auto record_final_failure = [&] {
    if (budget != nullptr) budget->OnAttemptFailed(status, /*retry_wanted=*/false);
  };
  auto cancelled = [&] {
    Count(Outcome::kCancelled);
    return absl::CancelledError(internal::StrCat("retry \"", name, "\": cancelled after ",
                                                 Attempts(ctx.attempt),
                                                 "; last error: ", StatusText(status)));
  };
  for (;;) {
    const bool retryable = options_.retry_on(status);
    if (!retryable) {
      Count(Outcome::kNotRetryable);
      if (ctx.attempt == 1) return status;
      return Annotate(status, internal::StrCat("retry \"", name, "\": not retryable after ",
                                               Attempts(ctx.attempt)));
    }
    if (ctx.attempt >= options_.max_attempts) {
      record_final_failure();
      Count(Outcome::kGaveUpAttempts);
      return Annotate(
          status, internal::StrCat("retry \"", name, "\": gave up after ", Attempts(ctx.attempt)));
    }
    if (ctx.cancellation.cancelled()) {
      record_final_failure();
      return cancelled();
    }
    Duration delay = delays.Next(gen);
    if (options_.honor_retry_after) {
      if (auto hint = RetryAfter(status)) {
        delay = std::max(delay, std::min(*hint, options_.max_retry_after));
      }
    }
    // A sleep ending exactly at the deadline would leave no time for the attempt: stop at `>=`.
    if (!ctx.deadline.IsInfinite()) {
      const Duration left = ctx.deadline.Remaining();
      if (delay >= left) {
        record_final_failure();
        Count(Outcome::kGaveUpDeadline);
        return absl::DeadlineExceededError(internal::StrCat(
            "retry \"", name, "\": ", internal::FormatDuration(left),
            " left before the deadline, next attempt in ", internal::FormatDuration(delay),
            "; stopped after ", Attempts(ctx.attempt), "; last error: ", StatusText(status)));
      }
    }
    // Recording the failure and asking for the retry is one step, so a shared budget decides on
    // the state this failure produced.
    std::optional<RetryBudgetPolicy::Grant> grant;
    if (budget != nullptr) {
      grant = budget->OnAttemptFailed(status, /*retry_wanted=*/true);
      if (!grant) {
        Count(Outcome::kGaveUpBudget);
        return Annotate(status,
                        internal::StrCat("retry \"", name, "\": retry budget exhausted after ",
                                         Attempts(ctx.attempt)));
      }
    }
    // The backoff ends early when the call is cancelled: nobody waits for its result any more.
    if (delay > Duration::zero() &&
        !ctx.cancellation.SleepUntil(*clock_, AddSaturating(clock_->Now(), delay))) {
      if (grant) budget->OnRetryFinished(*grant, /*succeeded=*/false);
      return cancelled();
    }
    ++ctx.attempt;
    counters_->retries.fetch_add(1, std::memory_order_relaxed);
    status = attempt(ctx);
    if (grant) budget->OnRetryFinished(*grant, status.ok());
    if (status.ok()) {
      if (budget != nullptr) budget->OnAttemptSucceeded(ctx.attempt);
      Count(Outcome::kSucceededAfterRetry);
      return status;
    }
  }
}

}  // namespace keel
