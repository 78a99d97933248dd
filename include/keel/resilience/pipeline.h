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

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
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
template <typename T>
class Policy {
 public:
  using Next = absl::FunctionRef<absl::StatusOr<T>(const CallContext&)>;
  virtual ~Policy() = default;
  virtual absl::StatusOr<T> Apply(const CallContext& ctx, Next next) const = 0;
};

namespace pipeline_internal {

template <typename T>
class RetryStage final : public Policy<T> {
 public:
  explicit RetryStage(Retry retry) : retry_(std::move(retry)) {}
  absl::StatusOr<T> Apply(const CallContext& ctx, typename Policy<T>::Next next) const override {
    return retry_.Execute(ctx, next);
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

 private:
  Fallback<T> fallback_;
};

// Waits for a permit at most until the call's deadline (and the bulkhead's own max_wait).
template <typename T>
class BulkheadStage final : public Policy<T> {
 public:
  explicit BulkheadStage(SemaphoreBulkhead& bulkhead) : bulkhead_(bulkhead) {}
  absl::StatusOr<T> Apply(const CallContext& ctx, typename Policy<T>::Next next) const override {
    absl::StatusOr<SemaphoreBulkhead::Permit> permit = bulkhead_.Acquire(ctx.deadline);
    if (!permit.ok()) return std::move(permit).status();
    return next(ctx);  // the permit is released when the call returns
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
    absl::StatusOr<limit::Decision> d =
        TryAcquireFrom(*limiter_, ctx, options_.key, options_.quantity);
    if (!d.ok()) return std::move(d).status();  // INVALID_ARGUMENT, UNAVAILABLE (fail closed)
    if (d->allowed) return next(ctx);
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

 private:
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
  template <typename F>
  absl::StatusOr<T> Execute(const CallContext& ctx, F&& fn) const {
    return Run(0, ctx, fn);
  }
  template <typename F>
  absl::StatusOr<T> Execute(Deadline deadline, F&& fn) const {
    CallContext ctx;
    ctx.deadline = deadline;
    return Run(0, ctx, fn);
  }

  size_t size() const { return stages_.size(); }

 private:
  using Call = absl::FunctionRef<absl::StatusOr<T>(const CallContext&)>;

  explicit Pipeline(std::vector<std::shared_ptr<const Policy<T>>> stages)
      : stages_(std::move(stages)) {}

  // Stage i wraps stages i+1.. and the call. The continuation is a FunctionRef to a lambda on
  // this frame: no allocation, one indirect call per stage.
  absl::StatusOr<T> Run(size_t i, const CallContext& ctx, Call fn) const {
    if (i == stages_.size()) return fn(ctx);
    return stages_[i]->Apply(
        ctx, [this, i, fn](const CallContext& inner) { return Run(i + 1, inner, fn); });
  }

  std::vector<std::shared_ptr<const Policy<T>>> stages_;
};

}  // namespace keel
