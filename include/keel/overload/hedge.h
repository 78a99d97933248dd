// keel/overload/hedge.h: hedged requests (Dean and Barroso, "The Tail at Scale", CACM 2013):
// when a call has been outstanding longer than most calls take, send a second attempt and take
// whichever answers first, cutting the latency tail for a few percent of extra load.
//
// Defines `keel::overload::Hedge` and `HedgeStats`. For each call:
//
//   - The first attempt starts at once. While no attempt has won, after `delay` another attempt
//     starts, up to `max_hedges` extra attempts (`delay` after the previous one). The delay is
//     fixed (Options::delay) or the `percentile` (default p95) of recent calls' first-attempt
//     latency (LatencyPercentile, latency_percentile.h; see "Latency samples" below); until
//     latency_window / 10 calls have been sampled there is no percentile yet and calls are not
//     hedged. No hedge
//     starts at or after the call's deadline.
//   - The first attempt that succeeds wins (or, with Options::is_final, the first whose status
//     it accepts as an answer): its result is the call's, and every other attempt still running
//     is cancelled through the CancellationToken in its CallContext (each attempt has its own).
//     A failure does not start a hedge (that is Retry's job: put a Retry outside the Hedge); when
//     no attempt is left running, the call ends with the last failure.
//   - Each hedge is paid for by `budget` (retry_budget.h), the same budget the Retry policies
//     calling that backend share: a hedge is one retry, asked with OnAttemptFailed(a
//     DEADLINE_EXCEEDED "attempt outstanding after <delay>", true) and released with
//     OnRetryFinished when its attempt ends, so hedges and retries together stay within the
//     budget. A refused hedge is not sent, nor are later ones for that call.
//   - Only calls marked idempotent (CallContext::idempotent) are hedged; others run once,
//     untouched (counted).
//
// No thread per call. ExecuteAsync runs the first attempt on the calling thread and each hedge
// from the Timer's thread, posted to `executor` (default: inline on the timer's thread; pass a
// keel::Executor of your own to keep the timer free); the attempts themselves return futures.
// Execute, the blocking form, submits every attempt to a ThreadPoolBulkhead and waits. Both forms
// end a call at its deadline, cancelling every attempt still running. The Pipeline stage
// (async and blocking pipelines) is in hedge_stage.h.
//
// Latency samples: the delay should be a percentile of how long a call takes unhedged, which
// is the first attempt's latency. Each decided call records it once: the first attempt's
// latency when it won; when a hedge won while the first attempt was still running, the time
// until then, a lower bound (the first attempt is cancelled, its true latency never known); no
// sample when the first attempt failed. A lower bound above the delay still counts above the
// percentile, so censoring does not drag the estimate down (recording the winners' latencies
// would: the slow first attempts would never be seen, the delay would shrink and more calls be
// hedged).
//
// Thread safety: thread-safe. REQUIRES: the Hedge, its budget, the timer and the executor
// outlive every call's last attempt (losers run on after the call returns); shut the timer down
// before destroying the Hedge (its thread may be starting a hedge).
//
//   auto hedge = keel::overload::Hedge::Create({.name = "search", .budget = budget.get()}).value();
//   keel::CallContext ctx{.deadline = keel::Deadline::After(200ms), .idempotent = true};
//   keel::Future<Page> page = hedge->ExecuteAsync(*timer, ctx, [&](const keel::CallContext& c) {
//     return search.AsyncQuery(q, c.deadline, c.cancellation);
//   });
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/async/executor.h"
#include "keel/async/future.h"
#include "keel/async/timer.h"
#include "keel/clock.h"
#include "keel/internal/strings.h"
#include "keel/internal/time_math.h"
#include "keel/metrics.h"
#include "keel/overload/latency_percentile.h"
#include "keel/resilience/call_context.h"
#include "keel/resilience/cancellation.h"
#include "keel/resilience/retry_budget.h"
#include "keel/resilience/thread_pool_bulkhead.h"
#include "keel/sync.h"

namespace keel::overload {

struct HedgeStats;

class Hedge {
 public:
  struct Options {
    // Names the policy in errors and metrics labels. Default: "hedge".
    std::string name = "hedge";
    // A fixed delay before each hedge. Unset: the `percentile` of recent latency. Default: unset.
    // Must be > 0 when set.
    std::optional<Duration> delay;
    // The percentile of recent first-attempt latency used as the delay when `delay` is unset.
    // At p95 about 5% of calls are hedged (5% extra load); higher percentiles cost less and cut
    // less of the tail. Default: 0.95. Must be in (0, 1).
    double percentile = 0.95;
    // How many recent latencies the percentile is taken over. Default: 1000. Must be >= 10.
    int latency_window = 1000;
    // Extra attempts per call at most. Default: 1. Must be in [1, 10].
    int max_hedges = 1;
    // The retry budget hedges spend, shared with the Retry policies calling the same backend;
    // null: hedges are bounded by max_hedges only. Not owned. Default: null.
    RetryBudgetPolicy* budget = nullptr;
    // Which failed statuses are answers that end the call at once like a success (NOT_FOUND
    // from any replica is as final as a row). Exceptions count as "not final". Default (unset):
    // only OK ends the call before every attempt has failed.
    std::function<bool(const absl::Status&)> is_final;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field: `hedge "search": max_hedges must be
  // in [1, 10], got 0`). `clock` (latencies, hedge times: the timers' clock) and `metrics`
  // (optional) must outlive the Hedge.
  // Metrics (label name=<name>): keel_hedge_calls_total, keel_hedge_hedges_total (extra
  // attempts sent), keel_hedge_wins_total (calls a hedge won), keel_hedge_cancelled_total
  // (attempts cancelled because another won), keel_hedge_refused_total{reason=budget|
  // not_idempotent} (counters) and keel_hedge_delay_seconds (gauge; 0 while unknown).
  static absl::StatusOr<std::unique_ptr<Hedge>> Create(Options options,
                                                       Clock& clock = SteadyClock(),
                                                       MetricsRegistry* metrics = nullptr);

  Hedge(const Hedge&) = delete;
  Hedge& operator=(const Hedge&) = delete;
  ~Hedge();

  // Runs `fn(const CallContext&)`, returning keel::Future<T>, hedged as above; the future
  // completes with the winner's result, or the last failure when every attempt failed, or
  // INTERNAL when `fn` throws, or at ctx.deadline, if none of these came first, with
  // DEADLINE_EXCEEDED (`hedge "<name>": no answer by the deadline`): then every attempt still
  // running is cancelled through its token and no hedge is sent any more (the deadline is a timer
  // on `timer`, its expiry posted to `executor` like the hedges). Each attempt gets `ctx` with its
  // own cancellation token (the caller's token is not forwarded: poll it in `fn` if you need both).
  // `fn` is moved into the call and may run on the timer's or the executor's thread after
  // ExecuteAsync returns: it must own (or outlive) what it captures, and never block.
  template <typename F>
  auto ExecuteAsync(Timer& timer, const CallContext& ctx, F fn,
                    Executor& executor = InlineExecutor());

  // The blocking form: `fn(const CallContext&)` returns absl::StatusOr<T> and runs on `pool`
  // (each attempt a task, possibly several at once: `fn` must be safe to call concurrently and
  // own what it captures, as the losers run on after Execute returns). Waits until the call is
  // decided or ctx.deadline passes: then every attempt still running is cancelled through its
  // token, no hedge is sent any more, and the call ends with DEADLINE_EXCEEDED (`hedge "<name>":
  // no answer by the deadline`). A full pool fails that attempt with RESOURCE_EXHAUSTED.
  template <typename F>
  auto Execute(Timer& timer, ThreadPoolBulkhead& pool, const CallContext& ctx, F fn);

  // The delay a call starting now would hedge after: the fixed delay, or the percentile of
  // recent latency (nullopt until known).
  std::optional<Duration> delay() const {
    return options_.delay ? options_.delay : latency_.value();
  }
  HedgeStats Stats() const;
  const Options& options() const { return options_; }
  Clock& clock() const { return clock_; }

 private:
  template <typename T>
  struct Call;
  template <typename T>
  friend class HedgeStage;

  Hedge(Options options, Clock& clock);
  // A call run once because it is not idempotent (HedgeStage runs it itself).
  void CountNotIdempotent() {
    calls_.fetch_add(1, std::memory_order_relaxed);
    not_idempotent_.fetch_add(1, std::memory_order_relaxed);
  }
  absl::Status RegisterMetrics(MetricsRegistry& metrics);
  bool IsFinal(const absl::Status& status) const;
  // Asks the budget to pay for a hedge sent after `waited`: the grant (none without a budget),
  // or nullopt (counted) when refused.
  std::optional<std::optional<RetryBudgetPolicy::Grant>> PayForHedge(Duration waited);

  // Counts an idempotent call, opens it on the budget, and makes its shared state.
  template <typename T>
  std::shared_ptr<Call<T>> Begin(Timer& timer, Executor& executor, const CallContext& ctx,
                                 std::function<Future<T>(const CallContext&)> fn);
  // Decides an undecided call with `why`: cancels its pending hedge and every attempt still
  // running (counted in cancelled_total). A decided call is left alone.
  template <typename T>
  static void Abandon(const std::shared_ptr<Call<T>>& call, absl::Status why);
  // ExecuteAsync: abandons the call at its deadline (DEADLINE_EXCEEDED, attempts cancelled).
  template <typename T>
  static void ScheduleDeadline(const std::shared_ptr<Call<T>>& call);
  // DEADLINE_EXCEEDED `hedge "<name>": no answer by the deadline`.
  absl::Status Late() const {
    return absl::DeadlineExceededError(
        internal::StrCat("hedge \"", options_.name, "\": no answer by the deadline"));
  }
  template <typename T>
  static void Launch(const std::shared_ptr<Call<T>>& call,
                     std::optional<RetryBudgetPolicy::Grant> grant);
  template <typename T>
  static void ScheduleHedge(const std::shared_ptr<Call<T>>& call, int number, TimePoint from);
  template <typename T>
  static void FireHedge(const std::shared_ptr<Call<T>>& call, int number, Duration waited);
  template <typename T>
  static void OnResult(const std::shared_ptr<Call<T>>& call, size_t index,
                       std::optional<RetryBudgetPolicy::Grant> grant, absl::StatusOr<T> result);

  const Options options_;
  Clock& clock_;
  LatencyPercentile latency_;
  // Relaxed: independent statistics.
  std::atomic<uint64_t> calls_{0};
  std::atomic<uint64_t> hedges_{0};
  std::atomic<uint64_t> wins_{0};
  std::atomic<uint64_t> cancelled_{0};
  std::atomic<uint64_t> refused_budget_{0};
  std::atomic<uint64_t> not_idempotent_{0};
  std::vector<MetricsRegistry::Registration> registrations_;  // last: unregistered first
};

// A snapshot of a Hedge (its Stats()); counters are cumulative since Create.
struct HedgeStats {
  std::optional<Duration> delay;      // as Hedge::delay()
  uint64_t calls_total = 0;           // every call, idempotent or not
  uint64_t hedges_total = 0;          // extra attempts sent
  uint64_t wins_total = 0;            // calls whose winner was a hedge
  uint64_t cancelled_total = 0;       // attempts cancelled: another won, or the deadline passed
  uint64_t refused_budget_total = 0;  // hedges the budget refused
  uint64_t not_idempotent_total = 0;  // calls run once because not marked idempotent
};

// ---- implementation ------------------------------------------------------------------------

template <typename T>
struct Hedge::Call {
  Call(Hedge& h, Timer& t, Executor& e, CallContext c,
       std::function<Future<T>(const CallContext&)> f)
      : hedge(h), timer(t), executor(e), ctx(std::move(c)), fn(std::move(f)) {}
  Hedge& hedge;
  Timer& timer;
  Executor& executor;
  const CallContext ctx;
  const std::function<Future<T>(const CallContext&)> fn;
  Promise<T> promise;
  Mutex mu;
  bool done ABSL_GUARDED_BY(mu) = false;
  int outstanding ABSL_GUARDED_BY(mu) = 0;
  TimerId next_hedge ABSL_GUARDED_BY(mu) = 0;
  TimerId deadline_timer ABSL_GUARDED_BY(mu) = 0;  // ExecuteAsync with a finite deadline
  // One per attempt started, in order.
  std::vector<CancellationSource> sources ABSL_GUARDED_BY(mu);
  std::vector<bool> finished ABSL_GUARDED_BY(mu);
  TimePoint first_start ABSL_GUARDED_BY(mu);  // when the first attempt started
};

template <typename F>
auto Hedge::ExecuteAsync(Timer& timer, const CallContext& ctx, F fn, Executor& executor) {
  using FutureT = std::invoke_result_t<F&, const CallContext&>;
  using T = typename FutureT::value_type;
  static_assert(!std::is_void_v<T>, "hedge: the call must return keel::Future<T> with a value");
  if (!ctx.idempotent) {
    CountNotIdempotent();
    return Future<T>(fn(ctx));
  }
  std::shared_ptr<Call<T>> call =
      Begin<T>(timer, executor, ctx, std::function<Future<T>(const CallContext&)>(std::move(fn)));
  Future<T> out = call->promise.future();
  if (!ctx.deadline.IsInfinite()) ScheduleDeadline<T>(call);
  Launch<T>(call, std::nullopt);
  return out;
}

template <typename F>
auto Hedge::Execute(Timer& timer, ThreadPoolBulkhead& pool, const CallContext& ctx, F fn) {
  using R = std::invoke_result_t<F&, const CallContext&>;
  using T = typename internal::FutureValueOf<R>::type;
  auto shared = std::make_shared<F>(std::move(fn));
  auto submit = [p = &pool, shared](const CallContext& c) {
    return p->Submit([shared, c]() -> R { return (*shared)(c); });
  };
  if (!ctx.idempotent) {
    CountNotIdempotent();
    Future<T> f = submit(ctx);
    absl::StatusOr<T> r = f.Get(ctx.deadline);
    if (absl::IsDeadlineExceeded(r.status()) && !f.ready()) return absl::StatusOr<T>(Late());
    return r;
  }
  std::shared_ptr<Call<T>> call =
      Begin<T>(timer, InlineExecutor(), ctx, std::function<Future<T>(const CallContext&)>(submit));
  Future<T> f = call->promise.future();
  Launch<T>(call, std::nullopt);
  absl::StatusOr<T> r = f.Get(ctx.deadline);
  // Not ready: the wait timed out (a result already taken reads as ready). Nobody waits for
  // the attempts any more, so they are cancelled, unless one decided the call meanwhile: either
  // way the future now holds the answer.
  if (absl::IsDeadlineExceeded(r.status()) && !f.ready()) {
    Abandon<T>(call, Late());
    return f.Get();
  }
  return r;
}

template <typename T>
std::shared_ptr<Hedge::Call<T>> Hedge::Begin(Timer& timer, Executor& executor,
                                             const CallContext& ctx,
                                             std::function<Future<T>(const CallContext&)> fn) {
  calls_.fetch_add(1, std::memory_order_relaxed);
  if (options_.budget != nullptr) options_.budget->OnCallStarted();
  return std::make_shared<Call<T>>(*this, timer, executor, ctx, std::move(fn));
}

template <typename T>
void Hedge::Abandon(const std::shared_ptr<Call<T>>& call, absl::Status why) {
  Hedge& h = call->hedge;
  std::vector<CancellationSource> outstanding;
  TimerId pending = 0, deadline = 0;
  {
    MutexLock lock(call->mu);
    if (call->done) return;
    call->done = true;
    pending = std::exchange(call->next_hedge, 0);
    deadline = std::exchange(call->deadline_timer, 0);
    for (size_t i = 0; i < call->sources.size(); ++i) {
      if (!call->finished[i]) outstanding.push_back(call->sources[i]);
    }
  }
  if (pending != 0) call->timer.Cancel(pending);
  if (deadline != 0) call->timer.Cancel(deadline);
  for (CancellationSource& attempt : outstanding) attempt.Cancel();
  h.cancelled_.fetch_add(outstanding.size(), std::memory_order_relaxed);
  if (h.options_.budget != nullptr) h.options_.budget->OnCallFinished();
  call->promise.Set(std::move(why));
}

template <typename T>
void Hedge::Launch(const std::shared_ptr<Call<T>>& call,
                   std::optional<RetryBudgetPolicy::Grant> grant) {
  Hedge& h = call->hedge;
  CancellationSource source;
  CallContext attempt = call->ctx;
  attempt.cancellation = source.token();
  size_t index = 0;
  bool launch = false;
  {
    MutexLock lock(call->mu);
    if (!call->done) {
      launch = true;
      index = call->sources.size();
      if (index == 0) call->first_start = h.clock_.Now();
      call->sources.push_back(source);
      call->finished.push_back(false);
      ++call->outstanding;
    }
  }
  if (!launch) {  // decided while the hedge was being paid for: it is never sent
    if (grant && h.options_.budget != nullptr) h.options_.budget->OnRetryFinished(*grant, false);
    return;
  }
  if (index > 0) h.hedges_.fetch_add(1, std::memory_order_relaxed);
  const TimePoint start = h.clock_.Now();
  // Scheduled before the attempt runs: an attempt that completes inline cancels it.
  if (index < static_cast<size_t>(h.options_.max_hedges)) {
    ScheduleHedge<T>(call, static_cast<int>(index) + 1, start);
  }
  std::optional<Future<T>> future;
  try {
    future.emplace(call->fn(attempt));
  } catch (...) {  // user code cannot wedge the call
    future.emplace(Future<T>::Ready(absl::InternalError(
        internal::StrCat("hedge \"", h.options_.name, "\": the call threw an exception"))));
  }
  std::move(*future).Then([call, index, grant](absl::StatusOr<T> r) mutable {
    OnResult<T>(call, index, grant, std::move(r));
  });
}

template <typename T>
void Hedge::ScheduleDeadline(const std::shared_ptr<Call<T>>& call) {
  // At the deadline nobody waits for the attempts any more: cancel them and answer. Through the
  // executor, as the hedges are, so that the caller's continuation never runs on the timer.
  const TimerId id = call->timer.Schedule(call->ctx.deadline.time(), [call] {
    call->executor.Post([call] { Abandon<T>(call, call->hedge.Late()); });
  });
  {
    MutexLock lock(call->mu);
    if (!call->done) {
      call->deadline_timer = id;
      return;
    }
  }
  call->timer.Cancel(id);
}

template <typename T>
void Hedge::ScheduleHedge(const std::shared_ptr<Call<T>>& call, int number, TimePoint from) {
  const std::optional<Duration> d = call->hedge.delay();
  if (!d) return;  // no percentile yet
  const TimePoint at = internal::AddSaturating(from, *d);
  if (!call->ctx.deadline.IsInfinite() && at >= call->ctx.deadline.time()) return;
  const TimerId id = call->timer.Schedule(at, [call, number, waited = *d] {
    call->executor.Post([call, number, waited] { FireHedge<T>(call, number, waited); });
  });
  {
    MutexLock lock(call->mu);
    if (!call->done) {
      call->next_hedge = id;
      return;
    }
  }
  call->timer.Cancel(id);
}

template <typename T>
void Hedge::FireHedge(const std::shared_ptr<Call<T>>& call, int number, Duration waited) {
  {
    MutexLock lock(call->mu);
    if (call->done || call->sources.size() != static_cast<size_t>(number)) return;
    call->next_hedge = 0;
  }
  std::optional<std::optional<RetryBudgetPolicy::Grant>> paid = call->hedge.PayForHedge(waited);
  if (!paid) return;  // refused: no hedge now, none later
  Launch<T>(call, *paid);
}

template <typename T>
void Hedge::OnResult(const std::shared_ptr<Call<T>>& call, size_t index,
                     std::optional<RetryBudgetPolicy::Grant> grant, absl::StatusOr<T> result) {
  Hedge& h = call->hedge;
  const bool ok = result.ok();
  RetryBudgetPolicy* const budget = h.options_.budget;
  if (budget != nullptr) {
    if (ok) budget->OnAttemptSucceeded(static_cast<int>(index) + 1);
    if (grant) budget->OnRetryFinished(*grant, ok);
  }
  const bool final = ok || h.IsFinal(result.status());  // user code: before the lock
  std::vector<CancellationSource> losers;
  TimerId pending = 0, deadline = 0;
  std::optional<Duration> sample;  // the first attempt's latency, or a lower bound of it
  {
    MutexLock lock(call->mu);
    const bool first_running = !call->finished[0];
    call->finished[index] = true;
    --call->outstanding;
    if (call->done) return;                       // a loser
    if (!final && call->outstanding > 0) return;  // others may still succeed
    call->done = true;
    if (ok && (index == 0 || first_running)) sample = h.clock_.Now() - call->first_start;
    pending = std::exchange(call->next_hedge, 0);
    deadline = std::exchange(call->deadline_timer, 0);
    for (size_t i = 0; i < call->sources.size(); ++i) {
      if (!call->finished[i]) losers.push_back(call->sources[i]);
    }
  }
  if (pending != 0) call->timer.Cancel(pending);
  if (deadline != 0) call->timer.Cancel(deadline);
  for (CancellationSource& loser : losers) loser.Cancel();
  if (sample && !h.options_.delay) h.latency_.Record(*sample);
  h.cancelled_.fetch_add(losers.size(), std::memory_order_relaxed);
  if (final && index > 0) h.wins_.fetch_add(1, std::memory_order_relaxed);
  if (budget != nullptr) budget->OnCallFinished();
  call->promise.Set(std::move(result));
}

}  // namespace keel::overload
