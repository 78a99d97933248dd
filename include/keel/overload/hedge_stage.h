// keel/overload/hedge_stage.h: a Hedge as a stage of an async Pipeline.
//
// Defines `keel::overload::HedgeStage<T>` (a keel::Policy<T>). Through Pipeline::ExecuteAsync,
// each idempotent call (CallContext::idempotent) is hedged as Hedge::ExecuteAsync describes:
// every attempt runs the stages inside the hedge stage and the call, with its own cancellation
// token, the hedges started from the pipeline's Timer and posted to `executor`. Put it inside
// Retry (a failed call is retried, a slow one hedged, both on one budget) and outside the
// per-attempt Timeout (each attempt gets its own).
//
// The blocking form (Pipeline::Execute) cannot hedge: the stages inside it and the call live on
// the caller's stack, so the call could not return before its losing attempt does. Apply runs a
// call not marked idempotent once, as the async form does, and refuses an idempotent one with
// FAILED_PRECONDITION; use Hedge::Execute (attempts on a ThreadPoolBulkhead) as the call instead.
//
// Thread safety: thread-safe. REQUIRES: the Hedge and `executor` outlive the pipeline and every
// attempt's end.
//
//   auto pipeline = keel::Pipeline<Page>::Builder()
//                       .Add(retry)
//                       .Add(keel::overload::HedgeStage<Page>::Make(*hedge))
//                       .Add(timeout)
//                       .Build();
//   pipeline.ExecuteAsync(*timer, keel::CallContext{.deadline = d, .idempotent = true}, query);
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "keel/async/executor.h"
#include "keel/async/future.h"
#include "keel/async/timer.h"
#include "keel/internal/strings.h"
#include "keel/overload/hedge.h"
#include "keel/resilience/pipeline.h"

namespace keel::overload {

template <typename T>
class HedgeStage final : public Policy<T> {
 public:
  explicit HedgeStage(Hedge& hedge, Executor& executor = InlineExecutor())
      : hedge_(hedge), executor_(executor) {}

  // The stage, ready for Pipeline<T>::Builder::Add.
  static std::shared_ptr<const Policy<T>> Make(Hedge& hedge,
                                               Executor& executor = InlineExecutor()) {
    return std::make_shared<HedgeStage>(hedge, executor);
  }

  absl::StatusOr<T> Apply(const CallContext& ctx, typename Policy<T>::Next next) const override {
    if (!ctx.idempotent) return next(ctx);
    return absl::FailedPreconditionError(internal::StrCat(
        "hedge \"", hedge_.options().name,
        "\": hedging needs Pipeline::ExecuteAsync (a blocking call cannot abandon its losing "
        "attempt); use Hedge::Execute as the call"));
  }

  bool SupportsAsync() const override { return true; }
  Future<T> ApplyAsync(const CallContext& ctx, const typename Policy<T>::AsyncNext& next,
                       Timer& timer) const override {
    return hedge_.ExecuteAsync(timer, ctx, next, executor_);
  }

 private:
  Hedge& hedge_;
  Executor& executor_;
};

}  // namespace keel::overload
