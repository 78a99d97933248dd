// keel/resilience/retry.h: try a failed call again, with jittered backoff, within the deadline.
//
// Defines `keel::Retry`. A call is attempted up to `max_attempts` times while it fails with a
// status `retry_on` accepts (default keel::IsRetryable: UNAVAILABLE, ABORTED, RESOURCE_EXHAUSTED
// carrying a retry-after). Between attempts it sleeps on the injected clock for the next delay of
// its Backoff (backoff.h), or for the server's retry-after hint when that is longer (capped by
// `max_retry_after`), or until the call's cancellation token is cancelled. An optional shared
// budget (retry_budget.h) bounds the extra load.
//
// Deadlines: Retry never starts a sleep that would end at or past the caller's deadline; it stops
// instead, with DEADLINE_EXCEEDED. That is the only case it returns DEADLINE_EXCEEDED of its own:
// otherwise the result is the last attempt's status (same code and payloads) with the attempt
// count added to its message. A Timeout placed inside a Retry bounds each attempt; the caller's
// deadline bounds the whole (docs/timeout.md).
//
// Thread safety: thread-safe (options are immutable, counters atomic, per-call state lives on the
// caller's stack).
// The random source, when you pass one, must itself be safe for the threads that use the Retry.
//
//   auto retry = keel::Retry::Create({.name = "users-api", .max_attempts = 4,
//                                     .backoff = {.kind = keel::Backoff::Kind::kFullJitter,
//                                                 .base = 50ms, .cap = 2s}}).value();
//   absl::StatusOr<User> user = retry.Execute(keel::Deadline::After(1s),
//       [&](const keel::CallContext& ctx) { return client.GetUser(id, ctx.deadline); });
//   // On failure: "retry \"users-api\": gave up after 4 attempts: backend down" (UNAVAILABLE).
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/random/bit_gen_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/async/future.h"
#include "keel/async/task.h"
#include "keel/async/timer.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/metrics.h"
#include "keel/resilience/backoff.h"
#include "keel/resilience/call_context.h"
#include "keel/resilience/retry_budget.h"
#include "keel/status.h"

namespace keel {

struct RetryStats;

namespace internal {
// The status of a failed FutureResult, moved out.
inline absl::Status TakeStatus(absl::Status&& s) { return std::move(s); }
template <typename T>
absl::Status TakeStatus(absl::StatusOr<T>&& s) {
  return std::move(s).status();
}
}  // namespace internal

class Retry {
 public:
  struct Options {
    // Names the policy in error messages. Default: "retry".
    std::string name = "retry";
    // Attempts in total, the first included: 1 never retries. Each extra attempt adds load when
    // the backend is weakest; 3 is the common choice. Default: 3. Must be >= 1.
    int max_attempts = 3;
    // The delays between attempts (backoff.h). Default: full jitter, base 100 ms, cap 10 s.
    Backoff::Options backoff;
    // Which failures are worth another attempt. Default: keel::IsRetryable. Add
    // absl::IsDeadlineExceeded to retry attempts cut short by a per-attempt Timeout.
    // Must be set.
    std::function<bool(const absl::Status&)> retry_on = IsRetryable;
    // Whether a retry-after hint on the failure (keel::RetryAfter) is the minimum delay before
    // the next attempt. Default: true.
    bool honor_retry_after = true;
    // The longest retry-after hint honoured: a longer hint waits only this long. Default: 10 s.
    // Must be >= 0.
    Duration max_retry_after = std::chrono::seconds(10);
    // A budget shared with other policies calling the same backend, or null for none. Not owned:
    // it must outlive the Retry. Default: null.
    RetryBudgetPolicy* budget = nullptr;
  };

  // How a call that needed Retry's help (its first attempt failed) ended. Calls whose first
  // attempt succeeds are not counted: counting them would put a shared atomic on the success
  // path; count them where the call is made if needed.
  enum class Outcome {
    kSucceededAfterRetry,  // a retry succeeded
    kGaveUpAttempts,       // max_attempts reached
    kGaveUpDeadline,       // the next delay would have ended past the deadline
    kGaveUpBudget,         // the budget refused a retry
    kNotRetryable,         // retry_on rejected the failure (first or later attempt)
    kCancelled,            // the cancellation token was signalled
  };
  static constexpr int kOutcomes = 6;

  // Validates `options`: INVALID_ARGUMENT naming the field ("retry.max_attempts must be >= 1,
  // got 0", "retry.backoff.base must be <= retry.backoff.cap, ..."). Sleeps on `clock`. Jitter
  // comes from a per-thread generator, or from `gen` when given (tests pass a fixed one).
  // `metrics` (optional, must outlive the Retry and its copies) gets, labelled name=<name>:
  // keel_retry_retries_total and keel_retry_calls_total{outcome=...} (see Outcome).
  static absl::StatusOr<Retry> Create(Options options, Clock& clock = SteadyClock(),
                                      MetricsRegistry* metrics = nullptr);
  static absl::StatusOr<Retry> Create(Options options, Clock& clock, absl::BitGenRef gen,
                                      MetricsRegistry* metrics = nullptr);

  // Counters since Create, shared by copies of this Retry (a Pipeline holds a copy).
  RetryStats Stats() const;

  // Runs `fn(const CallContext&)`, which returns absl::Status or absl::StatusOr<T>, until it
  // succeeds or Retry stops. `ctx.attempt` counts the attempts; deadline and cancellation pass
  // through unchanged. Returns the first success, or:
  //   the last attempt's status, message prefixed with the attempt count, when attempts run out,
  //   the status is not retryable, or the budget refuses (a non-retryable first failure is
  //   returned untouched);
  //   DEADLINE_EXCEEDED when the next delay would end at or past ctx.deadline;
  //   CANCELLED when ctx.cancellation is signalled between attempts (a backoff sleep ends as
  //   soon as it is).
  // Allocates nothing when the first attempt succeeds.
  template <typename F>
  auto Execute(const CallContext& ctx, F&& fn) const;
  template <typename F>
  auto Execute(Deadline deadline, F&& fn) const {
    CallContext ctx;
    ctx.deadline = deadline;
    return Execute(ctx, std::forward<F>(fn));
  }

  // The same as Execute for calls that return a future: `fn(const CallContext&)` returns
  // keel::Future<T>, and so does ExecuteAsync. No thread waits: each attempt's future is awaited
  // and the backoff between attempts is a sleep on `timer` (keel/async/timer.h). Same results,
  // budget accounting, Stats and metrics as Execute. A cancellation during a backoff is noticed
  // when the backoff ends; a `timer` shut down during a backoff ends the call with CANCELLED.
  // `fn` is moved into the call and must stay valid until the returned future completes, as must
  // the Retry's budget, clock and `timer`. `fn` runs first on this thread, later on whatever
  // thread completed the previous attempt's future or the timer's thread: never block in it.
  template <typename F>
  auto ExecuteAsync(Timer& timer, const CallContext& ctx, F fn) const;
  template <typename F>
  auto ExecuteAsync(Timer& timer, Deadline deadline, F fn) const {
    CallContext ctx;
    ctx.deadline = deadline;
    return ExecuteAsync(timer, ctx, std::move(fn));
  }

  const Options& options() const { return options_; }

  // The type-erased core that Execute and Pipeline call: `attempt` reports each attempt's
  // status. Same results as Execute.
  absl::Status Run(const CallContext& ctx,
                   absl::FunctionRef<absl::Status(const CallContext&)> attempt) const;

 private:
  // Updated only on the retry path; relaxed: independent statistics, read by Stats/metrics.
  struct Counters {
    std::atomic<uint64_t> retries{0};
    std::array<std::atomic<uint64_t>, kOutcomes> outcomes{};
    std::vector<MetricsRegistry::Registration> registrations;
  };

  static absl::StatusOr<Retry> CreateImpl(Options options, Clock& clock,
                                          std::optional<absl::BitGenRef> gen,
                                          MetricsRegistry* metrics);
  Retry(Options options, Backoff backoff, Clock& clock, std::optional<absl::BitGenRef> gen)
      : options_(std::move(options)),
        backoff_(backoff),
        clock_(&clock),
        gen_(gen),
        counters_(std::make_shared<Counters>()) {}
  void Count(Outcome o) const {
    counters_->outcomes[static_cast<size_t>(o)].fetch_add(1, std::memory_order_relaxed);
  }

  // One call's state after its first attempt failed: what Run's loop and ExecuteAsync's
  // coroutine share, so both decide every retry the same way.
  class Loop {
   public:
    Loop(const Retry& retry, CallContext ctx, absl::Status failure);
    // After a failure: the delay before the next attempt, or (not OK) the status the call ends
    // with. A retry granted by the budget must be followed by Begin and Finish, or Cancelled.
    absl::StatusOr<Duration> Next();
    // The backoff was cut by cancellation: the status the call ends with.
    absl::Status Cancelled();
    // The next attempt's context (counts the retry).
    const CallContext& Begin();
    // Records the attempt's status; true when it succeeded (the call is over).
    bool Finish(absl::Status status);
    const CallContext& context() const { return ctx_; }

   private:
    absl::Status CancelledStatus();
    const Retry& retry_;
    CallContext ctx_;
    absl::Status status_;  // the last failure
    BackoffSequence delays_;
    std::optional<RetryBudgetPolicy::Grant> grant_;
  };
  // The budget's call bracket (OnCallStarted / OnCallFinished) on every way out.
  struct CallScope {
    explicit CallScope(RetryBudgetPolicy* b) : budget(b) {
      if (budget != nullptr) budget->OnCallStarted();
    }
    ~CallScope() {
      if (budget != nullptr) budget->OnCallFinished();
    }
    CallScope(const CallScope&) = delete;
    CallScope& operator=(const CallScope&) = delete;
    RetryBudgetPolicy* budget;
  };
  template <typename T, typename F>
  static Task<T> AsyncLoop(Retry retry, Timer& timer, CallContext ctx, F fn);

  Options options_;
  Backoff backoff_;
  Clock* clock_;
  std::optional<absl::BitGenRef> gen_;
  std::shared_ptr<Counters> counters_;
};

// A snapshot of a Retry (its Stats()); counters (`*_total`) are cumulative since Create.
struct RetryStats {
  uint64_t retries_total = 0;                               // attempts beyond the first
  std::array<uint64_t, Retry::kOutcomes> outcomes_total{};  // indexed by Retry::Outcome
  uint64_t outcome(Retry::Outcome o) const { return outcomes_total[static_cast<size_t>(o)]; }
};

template <typename T, typename F>
Task<T> Retry::AsyncLoop(Retry retry, Timer& timer, CallContext ctx, F fn) {
  RetryBudgetPolicy* const budget = retry.options_.budget;
  CallScope scope(budget);
  ctx.attempt = 1;
  FutureResult<T> result = co_await fn(static_cast<const CallContext&>(ctx));
  if (result.ok()) {
    if (budget != nullptr) budget->OnAttemptSucceeded(1);
    co_return result;
  }
  // Statuses move between the threads this frame resumes on, never copied (see DESIGN.md).
  Loop loop(retry, ctx, internal::TakeStatus(std::move(result)));
  for (;;) {
    absl::StatusOr<Duration> delay = loop.Next();
    if (!delay.ok()) co_return std::move(delay).status();
    if (*delay > Duration::zero()) {
      absl::Status slept = co_await timer.Sleep(*delay);
      if (!slept.ok() || loop.context().cancellation.cancelled()) co_return loop.Cancelled();
    }
    result = co_await fn(loop.Begin());
    if (result.ok()) {
      loop.Finish(absl::OkStatus());
      co_return result;
    }
    loop.Finish(internal::TakeStatus(std::move(result)));
  }
}

template <typename F>
auto Retry::ExecuteAsync(Timer& timer, const CallContext& ctx, F fn) const {
  using Fut = std::invoke_result_t<F&, const CallContext&>;
  using T = typename Fut::value_type;
  return AsyncLoop<T>(*this, timer, ctx, std::move(fn)).Start(*clock_);
}

template <typename F>
auto Retry::Execute(const CallContext& ctx, F&& fn) const {
  using R = std::invoke_result_t<F&, const CallContext&>;
  if constexpr (std::is_same_v<R, absl::Status>) {
    return Run(ctx, fn);
  } else {
    // Keep the last attempt's value; only its status goes through the type-erased loop.
    std::optional<R> result;
    absl::Status status = Run(ctx, [&](const CallContext& c) {
      result.emplace(fn(c));
      return result->status();
    });
    if (status.ok()) return std::move(*result);
    return R(std::move(status));
  }
}

}  // namespace keel
