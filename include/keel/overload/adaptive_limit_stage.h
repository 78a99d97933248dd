// keel/overload/adaptive_limit_stage.h: an AdaptiveLimiter as a Pipeline stage.
//
// Defines `keel::overload::AdaptiveLimitStage<T>` (a keel::Policy<T>), its options and
// `keel::overload::DefaultOutcome`, the rule that turns a call's status into the outcome its
// permit records. Each call through the stage takes one permit with the call's criticality
// (CallContext::criticality): Apply waits in the limiter's queue when it has one (bounded by the
// call's deadline, as AdaptiveLimiter::Acquire), ApplyAsync never waits (TryAcquire, as the
// bulkhead stage). A refusal never reaches the stages inside. The permit records the outcome of
// everything inside the stage, so put it outside Retry to limit logical calls, inside to limit
// attempts (the usual place: after the circuit breaker, where a rate limiter goes).
//
// Thread safety: thread-safe. REQUIRES: the limiter outlives the pipeline.
//
//   auto pipeline = keel::Pipeline<Row>::Builder()
//                       .Add(*breaker)
//                       .Add(keel::overload::AdaptiveLimitStage<Row>::Make(*limiter))
//                       .Add(timeout)
//                       .Build();
#pragma once

#include <functional>
#include <memory>
#include <utility>

#include "absl/status/status.h"
#include "keel/async/future.h"
#include "keel/async/timer.h"
#include "keel/overload/adaptive_limiter.h"
#include "keel/resilience/pipeline.h"

namespace keel::overload {

// OK and the caller's own errors (INVALID_ARGUMENT, NOT_FOUND, ...: the dependency answered, so
// the latency is real) are successes; DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED and UNAVAILABLE (it
// timed out or refused) are drops; CANCELLED (nobody waits for the answer) is ignored.
AdaptiveLimiter::Outcome DefaultOutcome(const absl::Status& status);

struct AdaptiveLimitStageOptions {
  // Maps the status of the call inside the stage to the recorded outcome. A classifier that
  // throws records kIgnored. Default (unset): DefaultOutcome.
  std::function<AdaptiveLimiter::Outcome(const absl::Status&)> classify;
};

template <typename T>
class AdaptiveLimitStage final : public Policy<T> {
 public:
  AdaptiveLimitStage(AdaptiveLimiter& limiter, AdaptiveLimitStageOptions options = {})
      : limiter_(limiter), options_(std::move(options)) {}

  // The stage, ready for Pipeline<T>::Builder::Add.
  static std::shared_ptr<const Policy<T>> Make(AdaptiveLimiter& limiter,
                                               AdaptiveLimitStageOptions options = {}) {
    return std::make_shared<AdaptiveLimitStage>(limiter, std::move(options));
  }

  absl::StatusOr<T> Apply(const CallContext& ctx, typename Policy<T>::Next next) const override {
    absl::StatusOr<AdaptiveLimiter::Permit> permit =
        limiter_.Acquire(ctx.deadline, ctx.criticality);
    if (!permit.ok()) return std::move(permit).status();
    absl::StatusOr<T> result = next(ctx);
    permit->Record(Classify(result.status()));
    return result;
  }

  bool SupportsAsync() const override { return true; }
  // Does not wait for a permit (waiting would hold a thread): RESOURCE_EXHAUSTED at once over the
  // limit. The outcome is recorded, and the permit released, before the result is delivered.
  Future<T> ApplyAsync(const CallContext& ctx, const typename Policy<T>::AsyncNext& next,
                       Timer&) const override {
    absl::StatusOr<AdaptiveLimiter::Permit> permit = limiter_.TryAcquire(ctx.criticality);
    if (!permit.ok()) return Future<T>::Ready(std::move(permit).status());
    Promise<T> promise;
    Future<T> out = promise.future();
    next(ctx).Then([this, permit = std::move(*permit),
                    promise = std::move(promise)](absl::StatusOr<T> r) mutable {
      permit.Record(Classify(r.status()));
      promise.Set(std::move(r));
    });
    return out;
  }

 private:
  AdaptiveLimiter::Outcome Classify(const absl::Status& s) const {
    if (!options_.classify) return DefaultOutcome(s);
    try {
      return options_.classify(s);
    } catch (...) {
      return AdaptiveLimiter::Outcome::kIgnored;  // user code cannot wedge the limiter
    }
  }

  AdaptiveLimiter& limiter_;
  const AdaptiveLimitStageOptions options_;
};

}  // namespace keel::overload
