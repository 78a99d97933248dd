// keel/resilience/pipeline.h: compose resilience policies around a call.
//
// Defines `keel::Policy<T>` (the interface a stage implements), `keel::Pipeline<T>` and its
// `Pipeline<T>::Builder`. Policies wrap the call in the order they are added, the first added
// outermost. The recommended order, outermost first, and why:
//
//   Fallback        sees every failure below it, including rejections, and answers them
//   Bulkhead        bounds concurrency of the whole call, retries included
//   CircuitBreaker  one outcome per logical call, so retries do not count several times
//   RateLimiter     spends one permit per logical call (AddRateLimiter: any keel rate limiter,
//                   in-process or Redis-backed; a denial is RESOURCE_EXHAUSTED with retry-after)
//   Retry           tries again inside the limits above
//   Timeout         bounds each attempt (the caller's deadline bounds the whole)
//   call
//
// Execute(deadline, fn) passes `fn` a CallContext: the tightest deadline of every layer, the
// cancellation token, and the attempt number. On the success path a call allocates nothing, and
// each stage costs a virtual call and an indirect call beyond its policy's own work (measured in
// benchmarks/resilience_compose.cc, docs/pipeline.md).
//
// ExecutorTimeout is deliberately not a stage: the task it abandons at the deadline keeps running
// and must not reference the pipeline's stack frames. Use it as the call instead (pipeline.md).
//
// Thread safety: Execute is thread-safe when every policy is (keel's are). Building is not.
//
//   auto pipeline = keel::Pipeline<User>::Builder()
//                       .Add(fallback)          // keel::Fallback<User>
//                       .Add(*bulkhead)         // keel::SemaphoreBulkhead, not owned
//                       .Add(*breaker)          // keel::CircuitBreaker, not owned
//                       .AddRateLimiter(*shared_limit, {.name = "users-api", .key = "users-api"})
//                       .Add(retry)             // keel::Retry, copied
//                       .Add(timeout)           // keel::Timeout, copied
//                       .Build();
//   absl::StatusOr<User> user = pipeline.Execute(keel::Deadline::After(1s),
//       [&](const keel::CallContext& ctx) { return users.Get(id, ctx.deadline); });
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "keel/async/future.h"
#include "keel/async/timer.h"
#include "keel/deadline.h"
#include "keel/internal/format.h"
#include "keel/internal/strings.h"
#include "keel/limit/decision.h"
#include "keel/resilience/bulkhead.h"
#include "keel/resilience/call_context.h"
#include "keel/resilience/circuit_breaker.h"
#include "keel/resilience/fallback.h"
#include "keel/resilience/retry.h"
#include "keel/resilience/timeout.h"
#include "keel/status.h"

namespace keel {

// One stage of a Pipeline. Apply receives the context from the stage outside it and `next`, the
// rest of the pipeline (the stages inside it, then the call); it calls `next` zero or more times
// with the context the inner stages should see and returns the result. A rate limiter, hedging
// or a custom policy plugs in by implementing this.
// REQUIRES: Apply is thread-safe; `next` is only valid during the Apply call that received it.
//
// The async form (Pipeline::ExecuteAsync): ApplyAsync receives `next` returning a Future and
// returns a Future, never waiting on a thread; `timer` is the pipeline call's shared timer for
// any sleep or timeout. A stage without an async form keeps the default (SupportsAsync() false)
// and ExecuteAsync refuses the pipeline with FAILED_PRECONDITION naming the stage's position.
// REQUIRES (async): `next` may be called after ApplyAsync returned (it is owned, copyable);
// stages must not block in ApplyAsync or in the continuations they attach.
//
// A blocking stage whose calls of `next` may outlive its Apply (hedging: the stage returns with
// the first answer while a losing attempt still runs on another thread) overrides
// WantsOwnedNext() (true); the blocking pipeline then calls ApplyWithOwnedNext instead of Apply.
// `next` is as in Apply (on the caller's stack, only valid during the call); `make_owned()`
// returns the same continuation as an owned, copyable function that holds a copy of the
// pipeline's stages (shared) and of the call, so it may run on any thread after Execute
// returned; it allocates, so a stage asks for it only when it will outlive Apply. It is empty
// when the call cannot be copied (a move-only callable).
template <typename T>
class Policy {
 public:
  using Next = absl::FunctionRef<absl::StatusOr<T>(const CallContext&)>;
  using AsyncNext = std::function<Future<T>(const CallContext&)>;
  using OwnedNext = std::function<absl::StatusOr<T>(const CallContext&)>;
  using MakeOwnedNext = absl::FunctionRef<OwnedNext()>;
  virtual ~Policy() = default;
  virtual absl::StatusOr<T> Apply(const CallContext& ctx, Next next) const = 0;
  virtual bool WantsOwnedNext() const { return false; }
  virtual absl::StatusOr<T> ApplyWithOwnedNext(const CallContext& ctx, Next next,
                                               MakeOwnedNext make_owned) const {
    (void)make_owned;
    return Apply(ctx, next);
  }
  virtual bool SupportsAsync() const { return false; }
  virtual Future<T> ApplyAsync(const CallContext& ctx, const AsyncNext& next, Timer& timer) const {
    (void)ctx;
    (void)next;
    (void)timer;
    return Future<T>::Ready(absl::UnimplementedError("pipeline stage has no async form"));
  }
};

namespace pipeline_internal {

template <typename T>
class RetryStage final : public Policy<T> {
 public:
  explicit RetryStage(Retry retry) : retry_(std::move(retry)) {}
  absl::StatusOr<T> Apply(const CallContext& ctx, typename Policy<T>::Next next) const override {
    return retry_.Execute(ctx, next);
  }
  bool SupportsAsync() const override { return true; }
  Future<T> ApplyAsync(const CallContext& ctx, const typename Policy<T>::AsyncNext& next,
                       Timer& timer) const override {
    return retry_.ExecuteAsync(timer, ctx, next);
  }

 private:
  Retry retry_;
};

template <typename T>
class TimeoutStage final : public Policy<T> {
 public:
  explicit TimeoutStage(Timeout timeout) : timeout_(std::move(timeout)) {}
  absl::StatusOr<T> Apply(const CallContext& ctx, typename Policy<T>::Next next) const override {
    return next(timeout_.Narrow(ctx));
  }
  bool SupportsAsync() const override { return true; }
  // Unlike Apply, which cannot abandon a call running on the caller's stack, the async form
  // completes with DEADLINE_EXCEEDED at the narrowed deadline whether or not the callee does; a
  // late result is dropped.
  Future<T> ApplyAsync(const CallContext& ctx, const typename Policy<T>::AsyncNext& next,
                       Timer& timer) const override {
    const CallContext inner = timeout_.Narrow(ctx);
    Future<T> call = next(inner);
    if (inner.deadline.IsInfinite()) return call;
    struct Race {
      Promise<T> promise;
      std::atomic<bool> done{false};
      std::atomic<TimerId> timer_id{0};
    };
    auto race = std::make_shared<Race>();
    Future<T> out = race->promise.future();
    const Duration left = inner.deadline.Remaining();
    race->timer_id.store(
        timer.Schedule(timer.clock().Now() + left, [race, name = timeout_.options().name, left] {
          if (race->done.exchange(true)) return;
          race->promise.Set(absl::DeadlineExceededError(keel::internal::StrCat(
              "timeout \"", name, "\": no result within ", keel::internal::FormatDuration(left))));
        }));
    std::move(call).Then([race, &timer](absl::StatusOr<T> r) {
      if (race->done.exchange(true)) return;  // timed out first: the late result is dropped
      timer.Cancel(race->timer_id.load());
      race->promise.Set(std::move(r));
    });
    return out;
  }

 private:
  Timeout timeout_;
};

template <typename T>
class FallbackStage final : public Policy<T> {
 public:
  explicit FallbackStage(Fallback<T> fallback) : fallback_(std::move(fallback)) {}
  absl::StatusOr<T> Apply(const CallContext& ctx, typename Policy<T>::Next next) const override {
    return fallback_.Recover(next(ctx));
  }
  bool SupportsAsync() const override { return true; }
  Future<T> ApplyAsync(const CallContext& ctx, const typename Policy<T>::AsyncNext& next,
                       Timer&) const override {
    Promise<T> promise;
    Future<T> out = promise.future();
    next(ctx).Then([this, promise = std::move(promise)](absl::StatusOr<T> r) mutable {
      promise.Set(fallback_.Recover(std::move(r)));
    });
    return out;
  }

 private:
  Fallback<T> fallback_;
};

// Waits for a permit at most until the call's deadline (and the bulkhead's own max_wait or queue
// timeout), queued by the call's criticality when the bulkhead has a queue.
template <typename T>
class BulkheadStage final : public Policy<T> {
 public:
  explicit BulkheadStage(SemaphoreBulkhead& bulkhead) : bulkhead_(bulkhead) {}
  absl::StatusOr<T> Apply(const CallContext& ctx, typename Policy<T>::Next next) const override {
    absl::StatusOr<SemaphoreBulkhead::Permit> permit =
        bulkhead_.Acquire(ctx.deadline, ctx.criticality);
    if (!permit.ok()) return std::move(permit).status();
    return next(ctx);  // the permit is released when the call returns
  }
  bool SupportsAsync() const override { return true; }
  // Does not wait for a permit (waiting would hold a thread): RESOURCE_EXHAUSTED at once when
  // the bulkhead is full. The permit is held until the inner future completes.
  Future<T> ApplyAsync(const CallContext& ctx, const typename Policy<T>::AsyncNext& next,
                       Timer&) const override {
    absl::StatusOr<SemaphoreBulkhead::Permit> permit = bulkhead_.TryAcquire();
    if (!permit.ok()) return Future<T>::Ready(std::move(permit).status());
    Promise<T> promise;
    Future<T> out = promise.future();
    next(ctx).Then(
        [permit = std::move(*permit), promise = std::move(promise)](absl::StatusOr<T> r) mutable {
          // Released before the result is delivered: whoever it wakes may see the bulkhead free,
          // and
          // may destroy it, which must not happen while this lambda still holds a permit.
          permit.Release();
          promise.Set(std::move(r));
        });
    return out;
  }

 private:
  SemaphoreBulkhead& bulkhead_;
};

// One permit, one recorded outcome per call through this stage.
template <typename T>
class CircuitBreakerStage final : public Policy<T> {
 public:
  explicit CircuitBreakerStage(CircuitBreaker& breaker) : breaker_(breaker) {}
  absl::StatusOr<T> Apply(const CallContext& ctx, typename Policy<T>::Next next) const override {
    return breaker_.Execute([&]() -> absl::StatusOr<T> { return next(ctx); });
  }
  bool SupportsAsync() const override { return true; }
  Future<T> ApplyAsync(const CallContext& ctx, const typename Policy<T>::AsyncNext& next,
                       Timer&) const override {
    absl::StatusOr<CircuitBreaker::Permit> permit = breaker_.TryAcquire();
    if (!permit.ok()) return Future<T>::Ready(std::move(permit).status());
    Promise<T> promise;
    Future<T> out = promise.future();
    const TimePoint start = breaker_.clock().Now();
    next(ctx).Then([this, start, permit = std::move(*permit),
                    promise = std::move(promise)](absl::StatusOr<T> r) mutable {
      permit.Record(r.status(), breaker_.clock().Now() - start);
      promise.Set(std::move(r));
    });
    return out;
  }

 private:
  CircuitBreaker& breaker_;
};

}  // namespace pipeline_internal

// How a rate-limiter stage asks its limiter (Pipeline::Builder::AddRateLimiter).
struct RateLimitStageOptions {
  // Names the stage in the RESOURCE_EXHAUSTED message (`rate limiter "<name>": ...`).
  // Default: "rate_limiter".
  std::string name = "rate_limiter";
  // The key asked of a keyed limiter (limit::Keyed, redis::RateLimiter): one limit per pipeline,
  // e.g. the downstream it protects. Keyed limiters refuse an empty key (INVALID_ARGUMENT on the
  // first call); a single limiter (TokenBucket, Gcra, ...) ignores it. Default: "".
  std::string key;
  // What one call through the pipeline consumes. Must be >= 1 (the limiter refuses < 0; 0 would
  // only peek). Default: 1.
  int64_t quantity = 1;
};

namespace pipeline_internal {

// Asks any keel rate limiter for `n`: a Redis-backed one with the call's deadline first, a keyed
// one for `key`, a single one as it is.
template <typename Limiter>
absl::StatusOr<limit::Decision> TryAcquireFrom(Limiter& limiter, const CallContext& ctx,
                                               std::string_view key, int64_t n) {
  if constexpr (requires { limiter.TryAcquire(ctx.deadline, key, n); }) {
    return limiter.TryAcquire(ctx.deadline, key, n);
  } else if constexpr (requires { limiter.TryAcquire(key, n); }) {
    return limiter.TryAcquire(key, n);
  } else {
    return limiter.TryAcquire(n);
  }
}

// One TryAcquire per call through this stage; a denial never reaches the stages inside.
template <typename T, typename Limiter>
class RateLimitStage final : public Policy<T> {
 public:
  RateLimitStage(Limiter& limiter, RateLimitStageOptions options)
      : limiter_(&limiter), options_(std::move(options)) {}
  absl::StatusOr<T> Apply(const CallContext& ctx, typename Policy<T>::Next next) const override {
    absl::Status admitted = Admit(ctx);
    if (!admitted.ok()) return admitted;
    return next(ctx);
  }
  bool SupportsAsync() const override { return true; }
  // The limiter is asked as in Apply (a Redis-backed limiter answers over the network on this
  // thread); the inner stages run only when it admits the call.
  Future<T> ApplyAsync(const CallContext& ctx, const typename Policy<T>::AsyncNext& next,
                       Timer&) const override {
    absl::Status admitted = Admit(ctx);
    if (!admitted.ok()) return Future<T>::Ready(std::move(admitted));
    return next(ctx);
  }

 private:
  // OK when the limiter admits the call; its error or the denial otherwise.
  absl::Status Admit(const CallContext& ctx) const {
    absl::StatusOr<limit::Decision> d =
        TryAcquireFrom(*limiter_, ctx, options_.key, options_.quantity);
    if (!d.ok()) return std::move(d).status();  // INVALID_ARGUMENT, UNAVAILABLE (fail closed)
    if (d->allowed) return absl::OkStatus();
    using keel::internal::StrCat;
    if (d->retry_after == limit::kNever) {
      // No wait helps a quantity above the limit: no retry-after hint to follow.
      return absl::ResourceExhaustedError(StrCat("rate limiter \"", options_.name, "\": quantity ",
                                                 options_.quantity, " exceeds the limit of ",
                                                 d->limit));
    }
    return WithRetryAfter(absl::ResourceExhaustedError(StrCat(
                              "rate limiter \"", options_.name, "\": rate limited, retry after ",
                              keel::internal::FormatDuration(d->retry_after))),
                          d->retry_after);
  }

  Limiter* limiter_;
  const RateLimitStageOptions options_;
};

}  // namespace pipeline_internal

template <typename T>
class Pipeline {
 public:
  class Builder {
   public:
    // Policies held by value are copied; those held by pointer (bulkheads, breakers) are shared
    // with whoever else uses them and must outlive the Pipeline.
    Builder& Add(const Retry& retry) {
      return Add(std::make_shared<pipeline_internal::RetryStage<T>>(retry));
    }
    Builder& Add(const Timeout& timeout) {
      return Add(std::make_shared<pipeline_internal::TimeoutStage<T>>(timeout));
    }
    Builder& Add(const Fallback<T>& fallback) {
      return Add(std::make_shared<pipeline_internal::FallbackStage<T>>(fallback));
    }
    Builder& Add(SemaphoreBulkhead& bulkhead) {
      return Add(std::make_shared<pipeline_internal::BulkheadStage<T>>(bulkhead));
    }
    Builder& Add(CircuitBreaker& breaker) {
      return Add(std::make_shared<pipeline_internal::CircuitBreakerStage<T>>(breaker));
    }
    // A rate-limiter stage: each call through it first asks `limiter` (any keel rate limiter:
    // TokenBucket, Gcra, FixedWindow, the sliding windows; limit::Keyed; redis::RateLimiter,
    // which gets the call's deadline) for `options.quantity` of
    // `options.key`. Denied: RESOURCE_EXHAUSTED `rate limiter "<name>": rate limited, retry after
    // <d>` with keel's retry-after payload (keel::RetryAfter), and the inner stages never run.
    // The limiter's own errors pass through. `limiter` is shared, not copied: it must outlive
    // the Pipeline.
    template <typename Limiter>
    Builder& AddRateLimiter(Limiter& limiter, RateLimitStageOptions options = {}) {
      return Add(std::make_shared<pipeline_internal::RateLimitStage<T, Limiter>>(
          limiter, std::move(options)));
    }
    // A custom stage (hedging, ...). REQUIRES: `policy` is not null.
    Builder& Add(std::shared_ptr<const Policy<T>> policy) {
      stages_.push_back(std::move(policy));
      return *this;
    }

    Pipeline Build() { return Pipeline(std::move(stages_)); }

   private:
    std::vector<std::shared_ptr<const Policy<T>>> stages_;
  };

  // Runs `fn(const CallContext&)` (returning absl::StatusOr<T> or something convertible to it)
  // through every stage. The first stage gets `ctx`; `fn` gets the context the innermost stage
  // passes. Errors: whatever the stages and `fn` return (see each policy's header).
  // With a stage that wants an owned continuation (a blocking HedgeStage), a call it hedges runs
  // on a copy of `fn` and of the stages inside that stage, and its losing attempts run on after
  // Execute returned: `fn` must then be copyable, safe to call concurrently, and own what it
  // captures (by value or shared_ptr, not by reference to the caller's frame).
  template <typename F>
  absl::StatusOr<T> Execute(const CallContext& ctx, F&& fn) const {
    if (owns_next_) return RunOwning(ctx, fn);
    return Run(0, ctx, fn);
  }
  template <typename F>
  absl::StatusOr<T> Execute(Deadline deadline, F&& fn) const {
    CallContext ctx;
    ctx.deadline = deadline;
    return Execute(ctx, std::forward<F>(fn));
  }

  // The async form: `fn(const CallContext&)` returns keel::Future<T>, and so does ExecuteAsync,
  // at once. No stage holds a thread while the call waits: retries sleep on `timer`, a Timeout
  // stage completes with DEADLINE_EXCEEDED on `timer` at its deadline, bulkheads and breakers
  // hold their permit until the inner future completes (a full bulkhead refuses at once instead
  // of waiting). FAILED_PRECONDITION when a stage has no async form (a custom Policy that does
  // not override ApplyAsync). The pipeline, its shared policies, `timer` and `fn`'s captures must
  // outlive the returned future. Stages run on the calling thread first, then on whatever thread
  // completes the inner futures or the timer's: never block in `fn`.
  template <typename F>
  Future<T> ExecuteAsync(Timer& timer, const CallContext& ctx, F fn) const {
    for (size_t i = 0; i < stages_.size(); ++i) {
      if (!stages_[i]->SupportsAsync()) {
        return Future<T>::Ready(absl::FailedPreconditionError(keel::internal::StrCat(
            "pipeline: stage ", i + 1, " of ", stages_.size(), " has no async form")));
      }
    }
    return Chain(0, std::make_shared<F>(std::move(fn)), timer)(ctx);
  }
  template <typename F>
  Future<T> ExecuteAsync(Timer& timer, Deadline deadline, F fn) const {
    CallContext ctx;
    ctx.deadline = deadline;
    return ExecuteAsync(timer, ctx, std::move(fn));
  }

  size_t size() const { return stages_.size(); }

 private:
  // Stage i's continuation for the async form: stages i.. and the call, as an owned function.
  template <typename F>
  typename Policy<T>::AsyncNext Chain(size_t i, std::shared_ptr<F> fn, Timer& timer) const {
    if (i == stages_.size()) {
      return [fn](const CallContext& ctx) -> Future<T> { return (*fn)(ctx); };
    }
    return [stage = stages_[i], inner = Chain(i + 1, std::move(fn), timer),
            &timer](const CallContext& ctx) { return stage->ApplyAsync(ctx, inner, timer); };
  }

  using Call = absl::FunctionRef<absl::StatusOr<T>(const CallContext&)>;
  using OwnedNext = typename Policy<T>::OwnedNext;
  // Builds the owned continuation of stages i.. and the call.
  using MakeTail = absl::FunctionRef<OwnedNext(size_t i)>;

  explicit Pipeline(std::vector<std::shared_ptr<const Policy<T>>> stages)
      : stages_(std::move(stages)) {
    for (const auto& stage : stages_) owns_next_ = owns_next_ || stage->WantsOwnedNext();
  }

  // Stage i wraps stages i+1.. and the call. The continuation is a FunctionRef to a lambda on
  // this frame: no allocation, one indirect call per stage.
  absl::StatusOr<T> Run(size_t i, const CallContext& ctx, Call fn) const {
    if (i == stages_.size()) return fn(ctx);
    return stages_[i]->Apply(
        ctx, [this, i, fn](const CallContext& inner) { return Run(i + 1, inner, fn); });
  }

  // As Run, for a pipeline with a stage that wants an owned continuation: that stage also gets
  // `make_tail`, which copies the call (and this pipeline's stage list) only when asked.
  absl::StatusOr<T> Run(size_t i, const CallContext& ctx, Call fn, MakeTail make_tail) const {
    if (i == stages_.size()) return fn(ctx);
    auto next = [this, i, fn, make_tail](const CallContext& inner) {
      return Run(i + 1, inner, fn, make_tail);
    };
    if (!stages_[i]->WantsOwnedNext()) return stages_[i]->Apply(ctx, next);
    return stages_[i]->ApplyWithOwnedNext(ctx, next, [make_tail, i] { return make_tail(i + 1); });
  }

  // What an owned continuation holds: a copy of the pipeline (its stages are shared_ptrs, so
  // the caller's Pipeline may go) and of the call. Shared by every attempt of that call.
  template <typename Fn>
  struct Owned {
    Pipeline pipeline;
    Fn fn;
  };
  template <typename Fn>
  static OwnedNext Tail(std::shared_ptr<Owned<Fn>> owned, size_t i) {
    return [owned = std::move(owned), i](const CallContext& ctx) -> absl::StatusOr<T> {
      // A nested stage wanting an owned continuation shares this copy.
      auto make_tail = [&owned](size_t j) { return Tail(owned, j); };
      return owned->pipeline.Run(i, ctx, owned->fn, make_tail);
    };
  }
  // The copy is taken, never a move: the caller's `fn` must stay valid for what still runs on
  // the caller's stack (a Retry outside the stage, an attempt the stage does not hedge).
  template <typename F>
  absl::StatusOr<T> RunOwning(const CallContext& ctx, F& fn) const {
    using Fn = std::decay_t<F>;
    auto make_tail = [this, &fn](size_t i) -> OwnedNext {
      if constexpr (std::is_copy_constructible_v<Fn>) {
        return Tail(std::make_shared<Owned<Fn>>(Owned<Fn>{*this, Fn(fn)}), i);
      } else {
        (void)this;
        (void)fn;
        (void)i;
        return nullptr;
      }
    };
    return Run(0, ctx, fn, make_tail);
  }

  std::vector<std::shared_ptr<const Policy<T>>> stages_;
  bool owns_next_ = false;  // some stage WantsOwnedNext()
};

}  // namespace keel
