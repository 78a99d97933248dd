// keel/overload/adaptive_throttle_stage.h: an AdaptiveThrottle as a Pipeline stage.
//
// Defines `keel::overload::AdaptiveThrottleStage<T>` (a keel::Policy<T>). Each call through the
// stage is one request of the call's criticality (CallContext::criticality): rejected locally,
// it never reaches the stages inside (RESOURCE_EXHAUSTED at once); admitted, the status of
// everything inside the stage is recorded as the backend's answer (the throttle's
// Options::accepted, default BackendAccepted). Both forms decide at once, so the async form
// (ApplyAsync) is the same decision, recorded when the inner future completes.
//
// Where it goes: inside Retry (each attempt is a request, as in the SRE book) and outside the
// per-attempt Timeout, with nothing between it and the call that answers RESOURCE_EXHAUSTED or
// UNAVAILABLE on its own (a bulkhead, a breaker, a limiter): their refusals would read as the
// backend's. keel::Retry does not retry the throttle's own rejections (no retry-after hint).
//
// Thread safety: thread-safe. REQUIRES: the throttle outlives the pipeline.
//
//   auto pipeline = keel::Pipeline<User>::Builder()
//                       .Add(*breaker)
//                       .Add(retry)
//                       .Add(keel::overload::AdaptiveThrottleStage<User>::Make(*throttle))
//                       .Add(timeout)
//                       .Build();
#pragma once

#include <memory>
#include <utility>

#include "absl/status/statusor.h"
#include "keel/async/future.h"
#include "keel/async/timer.h"
#include "keel/overload/adaptive_throttle.h"
#include "keel/resilience/pipeline.h"

namespace keel::overload {

template <typename T>
class AdaptiveThrottleStage final : public Policy<T> {
 public:
  explicit AdaptiveThrottleStage(AdaptiveThrottle& throttle) : throttle_(throttle) {}

  // The stage, ready for Pipeline<T>::Builder::Add.
  static std::shared_ptr<const Policy<T>> Make(AdaptiveThrottle& throttle) {
    return std::make_shared<AdaptiveThrottleStage>(throttle);
  }

  absl::StatusOr<T> Apply(const CallContext& ctx, typename Policy<T>::Next next) const override {
    absl::StatusOr<AdaptiveThrottle::Ticket> ticket = throttle_.TryAcquire(ctx.criticality);
    if (!ticket.ok()) return std::move(ticket).status();
    absl::StatusOr<T> result = next(ctx);
    ticket->Record(result.status());
    return result;
  }

  bool SupportsAsync() const override { return true; }
  // The answer is recorded before the result is delivered.
  Future<T> ApplyAsync(const CallContext& ctx, const typename Policy<T>::AsyncNext& next,
                       Timer&) const override {
    absl::StatusOr<AdaptiveThrottle::Ticket> ticket = throttle_.TryAcquire(ctx.criticality);
    if (!ticket.ok()) return Future<T>::Ready(std::move(ticket).status());
    Promise<T> promise;
    Future<T> out = promise.future();
    next(ctx).Then(
        [ticket = std::move(*ticket), promise = std::move(promise)](absl::StatusOr<T> r) mutable {
          ticket.Record(r.status());
          promise.Set(std::move(r));
        });
    return out;
  }

 private:
  AdaptiveThrottle& throttle_;
};

}  // namespace keel::overload
