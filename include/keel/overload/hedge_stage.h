// keel/overload/hedge_stage.h: a Hedge as a stage of a Pipeline, async or blocking.
//
// Defines `keel::overload::HedgeStage<T>` (a keel::Policy<T>). Each idempotent call
// (CallContext::idempotent) is hedged: every attempt runs the stages inside the hedge stage and
// the call, with its own cancellation token; the first success (or Hedge::Options::is_final
// answer) is the call's result and the other attempts are cancelled. A call not marked
// idempotent runs once, untouched. Put it inside Retry (a failed call is retried, a slow one
// hedged, both on one budget) and outside the per-attempt Timeout (each attempt gets its own).
//
//   - Pipeline::ExecuteAsync: as Hedge::ExecuteAsync, the hedges started from the pipeline's
//     Timer and posted to `executor`.
//   - Pipeline::Execute (blocking), for a stage made with a Timer and a ThreadPoolBulkhead: as
//     Hedge::Execute. Every attempt is a task on `pool` running an owned copy of the stages
//     inside the hedge stage and of the call (Policy::ApplyWithOwnedNext), the hedges started
//     from `timer`. Execute returns as soon as the call is decided (the first success, at the
//     hedge delay plus the fast attempt's time, not at the slow attempt's end) or at the
//     caller's deadline, after cancelling every attempt still running: it never waits for a
//     loser. A loser runs on, on the pool, until it notices its token; it touches only what the
//     copy owns, never the caller's frame. So the call must be copyable, safe to run twice at
//     once, and own what it captures (by value or shared_ptr): a call capturing the caller's
//     locals by reference would let a loser read them after Execute returned. A move-only call
//     is refused (FAILED_PRECONDITION). Each hedged call holds up to 1 + max_hedges pool
//     threads, the losers until they stop: size the pool for it; a full pool fails that attempt
//     with RESOURCE_EXHAUSTED.
//   - A stage made without a pool (Make(hedge) or Make(hedge, executor)) cannot hedge the
//     blocking form: the stages inside it and the call are on the caller's stack, which the call
//     could not leave before its losing attempt does. It runs a call not marked idempotent once
//     and refuses an idempotent one with FAILED_PRECONDITION.
//
// Thread safety: thread-safe. REQUIRES: the Hedge, `timer`, `pool` and `executor`, and every
// policy a stage inside this one refers to (a bulkhead, a breaker, a limiter), outlive the
// pipeline and every attempt's end (a loser may end after the pipeline is gone: drain the pool,
// then shut the timer down, before destroying them).
//
//   auto pipeline = keel::Pipeline<Page>::Builder()
//                       .Add(retry)
//                       .Add(keel::overload::HedgeStage<Page>::Make(*hedge, *timer, *pool))
//                       .Add(timeout)
//                       .Build();
//   pipeline.ExecuteAsync(*timer, keel::CallContext{.deadline = d, .idempotent = true}, query);
//   pipeline.Execute(keel::CallContext{.deadline = d, .idempotent = true},  // search: a shared_ptr
//                    [search, q](const keel::CallContext& c) { return search->Query(q, c); });
#pragma once

#include <memory>
#include <utility>

#include "absl/status/statusor.h"
#include "keel/async/executor.h"
#include "keel/async/future.h"
#include "keel/async/timer.h"
#include "keel/internal/strings.h"
#include "keel/overload/hedge.h"
#include "keel/resilience/pipeline.h"
#include "keel/resilience/thread_pool_bulkhead.h"

namespace keel::overload {

template <typename T>
class HedgeStage final : public Policy<T> {
 public:
  // Hedges the async form only.
  explicit HedgeStage(Hedge& hedge, Executor& executor = InlineExecutor())
      : hedge_(hedge), executor_(executor) {}
  // Hedges both forms: the blocking one starts its hedges from `timer` and runs every attempt
  // on `pool`.
  HedgeStage(Hedge& hedge, Timer& timer, ThreadPoolBulkhead& pool,
             Executor& executor = InlineExecutor())
      : hedge_(hedge), executor_(executor), timer_(&timer), pool_(&pool) {}

  // The stage, ready for Pipeline<T>::Builder::Add.
  static std::shared_ptr<const Policy<T>> Make(Hedge& hedge,
                                               Executor& executor = InlineExecutor()) {
    return std::make_shared<HedgeStage>(hedge, executor);
  }
  static std::shared_ptr<const Policy<T>> Make(Hedge& hedge, Timer& timer, ThreadPoolBulkhead& pool,
                                               Executor& executor = InlineExecutor()) {
    return std::make_shared<HedgeStage>(hedge, timer, pool, executor);
  }

  // Only reached for a stage without a pool (the pipeline calls ApplyWithOwnedNext otherwise).
  absl::StatusOr<T> Apply(const CallContext& ctx, typename Policy<T>::Next next) const override {
    if (!ctx.idempotent) {
      hedge_.CountNotIdempotent();
      return next(ctx);
    }
    return absl::FailedPreconditionError(internal::StrCat(
        "hedge \"", hedge_.options().name,
        "\": a blocking pipeline hedges only through a stage made with a Timer and a "
        "ThreadPoolBulkhead (HedgeStage::Make(hedge, timer, pool))"));
  }

  bool WantsOwnedNext() const override { return pool_ != nullptr; }
  absl::StatusOr<T> ApplyWithOwnedNext(
      const CallContext& ctx, typename Policy<T>::Next next,
      typename Policy<T>::MakeOwnedNext make_owned) const override {
    if (!ctx.idempotent) {  // not hedged: on the caller's stack, nothing copied
      hedge_.CountNotIdempotent();
      return next(ctx);
    }
    typename Policy<T>::OwnedNext owned = make_owned();
    if (!owned) {
      return absl::FailedPreconditionError(internal::StrCat(
          "hedge \"", hedge_.options().name,
          "\": a blocking pipeline hedges only a copyable call (its losing attempts run on a "
          "copy after Execute returns)"));
    }
    return hedge_.Execute(*timer_, *pool_, ctx, std::move(owned));
  }

  bool SupportsAsync() const override { return true; }
  Future<T> ApplyAsync(const CallContext& ctx, const typename Policy<T>::AsyncNext& next,
                       Timer& timer) const override {
    return hedge_.ExecuteAsync(timer, ctx, next, executor_);
  }

 private:
  Hedge& hedge_;
  Executor& executor_;
  Timer* const timer_ = nullptr;              // set with pool_: the blocking form hedges
  ThreadPoolBulkhead* const pool_ = nullptr;  // where the blocking form's attempts run
};

}  // namespace keel::overload
