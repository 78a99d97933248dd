#include "keel/overload/hedge.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "keel/async/timer.h"
#include "keel/overload/hedge_stage.h"
#include "keel/resilience/pipeline.h"
#include "keel/resilience/retry_budget.h"
#include "keel/resilience/thread_pool_bulkhead.h"

namespace {

using namespace std::chrono_literals;
using keel::CallContext;
using keel::overload::Hedge;

// The attempts a hedged call made: each one's context and the promise the test completes.
struct Attempts {
  std::mutex mu;
  std::condition_variable cv;
  std::deque<keel::Promise<int>> promises;
  std::vector<CallContext> contexts;

  keel::Future<int> Start(const CallContext& ctx) {
    std::lock_guard<std::mutex> lock(mu);
    contexts.push_back(ctx);
    promises.emplace_back();
    cv.notify_all();
    return promises.back().future();
  }
  // Blocks (in real time, no sleep) until `n` attempts have started: the timer's thread starts
  // hedges once the manual clock passes their time.
  void AwaitStarted(size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return contexts.size() >= n; });
  }
  size_t started() {
    std::lock_guard<std::mutex> lock(mu);
    return contexts.size();
  }
  bool cancelled(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    return contexts.at(i).cancellation.cancelled();
  }
  void Complete(size_t i, absl::StatusOr<int> r) {
    keel::Promise<int>* p;
    {
      std::lock_guard<std::mutex> lock(mu);
      p = &promises.at(i);
    }
    p->Set(std::move(r));
  }
};

CallContext Idempotent(keel::Deadline deadline = keel::Deadline::Infinite()) {
  CallContext ctx;
  ctx.deadline = deadline;
  ctx.idempotent = true;
  return ctx;
}

// Declared so that the attempts go first (a promise left unset completes its attempt with
// CANCELLED when destroyed), then the timer (its thread may still be starting a hedge), then the
// Hedges, which must outlive both.
struct Fixture {
  keel::ManualClock clock;
  std::vector<std::unique_ptr<Hedge>> hedges;
  std::unique_ptr<keel::Timer> timer = keel::Timer::Create({}, clock).value();
  Attempts attempts;
  Hedge* Keep(std::unique_ptr<Hedge> hedge) {
    hedges.push_back(std::move(hedge));
    return hedges.back().get();
  }
  keel::Future<int> Run(Hedge& hedge, const CallContext& ctx) {
    return hedge.ExecuteAsync(*timer, ctx,
                              [this](const CallContext& c) { return attempts.Start(c); });
  }
};

TEST_CASE("hedge fires at the delay, takes the first success and cancels the loser") {
  Fixture f;
  Hedge* hedge = f.Keep(Hedge::Create({.name = "search", .delay = 10ms}, f.clock).value());
  keel::Future<int> out = f.Run(*hedge, Idempotent());
  CHECK(f.attempts.started() == 1);
  f.clock.Advance(9ms);
  CHECK(f.attempts.started() == 1);  // a timer never fires early
  f.clock.Advance(1ms);
  f.attempts.AwaitStarted(2);
  CHECK_FALSE(f.attempts.cancelled(0));
  f.attempts.Complete(1, 42);  // the hedge answers first
  CHECK(out.Get().value() == 42);
  CHECK(f.attempts.cancelled(0));  // the loser's token
  CHECK_FALSE(f.attempts.cancelled(1));
  f.attempts.Complete(0, 7);  // the loser's late answer is dropped
  const auto s = hedge->Stats();
  CHECK(s.calls_total == 1);
  CHECK(s.hedges_total == 1);
  CHECK(s.wins_total == 1);
  CHECK(s.cancelled_total == 1);
}

TEST_CASE("hedge does not fire when the first attempt answers before the delay") {
  Fixture f;
  Hedge* hedge = f.Keep(Hedge::Create({.name = "search", .delay = 10ms}, f.clock).value());
  keel::Future<int> out = f.Run(*hedge, Idempotent());
  f.clock.Advance(5ms);
  f.attempts.Complete(0, 1);
  CHECK(out.Get().value() == 1);
  CHECK(f.timer->Stats().cancelled_total == 1);  // the pending hedge was withdrawn
  f.clock.Advance(20ms);
  CHECK(f.attempts.started() == 1);
  CHECK(hedge->Stats().hedges_total == 0);
  CHECK(hedge->Stats().wins_total == 0);
}

TEST_CASE("hedge sends at most max_hedges extra attempts, delay apart") {
  Fixture f;
  Hedge* hedge =
      f.Keep(Hedge::Create({.name = "search", .delay = 10ms, .max_hedges = 2}, f.clock).value());
  keel::Future<int> out = f.Run(*hedge, Idempotent());
  f.clock.Advance(10ms);
  f.attempts.AwaitStarted(2);
  f.clock.Advance(10ms);
  f.attempts.AwaitStarted(3);
  CHECK(f.timer->Stats().pending == 0);  // no third hedge scheduled
  f.clock.Advance(1s);
  CHECK(f.attempts.started() == 3);
  f.attempts.Complete(0, 5);  // the first attempt wins after all
  CHECK(out.Get().value() == 5);
  CHECK(f.attempts.cancelled(1));
  CHECK(f.attempts.cancelled(2));
  CHECK(hedge->Stats().cancelled_total == 2);
  CHECK(hedge->Stats().wins_total == 0);
}

TEST_CASE("hedge never sends an extra attempt for a call not marked idempotent") {
  Fixture f;
  Hedge* hedge = f.Keep(Hedge::Create({.name = "search", .delay = 10ms}, f.clock).value());
  CallContext write;
  keel::Future<int> out = f.Run(*hedge, write);
  CHECK(f.timer->Stats().pending == 0);
  f.clock.Advance(1s);
  CHECK(f.attempts.started() == 1);
  CHECK_FALSE(f.attempts.cancelled(0));
  f.attempts.Complete(0, 3);
  CHECK(out.Get().value() == 3);
  CHECK(hedge->Stats().not_idempotent_total == 1);
  CHECK(hedge->Stats().hedges_total == 0);
}

TEST_CASE("hedges spend the retry budget") {
  Fixture f;
  // One retry (or hedge) in flight at most, whatever the traffic.
  auto budget =
      keel::ConcurrentRetryBudget::Create({.percent = 0, .min_concurrent_retries = 1}).value();
  Hedge* hedge = f.Keep(
      Hedge::Create({.name = "search", .delay = 10ms, .budget = budget.get()}, f.clock).value());
  keel::Future<int> first = f.Run(*hedge, Idempotent());
  keel::Future<int> second = f.Run(*hedge, Idempotent());
  CHECK(budget->calls_in_flight() == 2);
  f.clock.Advance(10ms);
  f.attempts.AwaitStarted(3);  // one of the two calls got its hedge
  // The other's was refused (its timer ran): wait for the refusal to be counted.
  while (hedge->Stats().refused_budget_total == 0) std::this_thread::yield();
  CHECK(budget->retries_in_flight() == 1);
  CHECK(budget->Stats().retries_refused_total == 1);
  f.clock.Advance(1s);
  CHECK(f.attempts.started() == 3);  // a refused hedge is not retried later
  for (size_t i = 0; i < 3; ++i) f.attempts.Complete(i, static_cast<int>(i));
  CHECK(first.Get().ok());
  CHECK(second.Get().ok());
  CHECK(budget->retries_in_flight() == 0);
  CHECK(budget->calls_in_flight() == 0);
  CHECK(hedge->Stats().hedges_total == 1);
}

TEST_CASE("hedge: a failure starts no hedge, and the last failure ends the call") {
  Fixture f;
  Hedge* hedge = f.Keep(Hedge::Create({.name = "search", .delay = 10ms}, f.clock).value());
  keel::Future<int> alone = f.Run(*hedge, Idempotent());
  f.clock.Advance(2ms);
  f.attempts.Complete(0, absl::UnavailableError("replica down"));
  CHECK(absl::IsUnavailable(alone.Get().status()));
  CHECK(f.timer->Stats().cancelled_total == 1);
  // With a hedge out, one failure waits for the other attempt.
  keel::Future<int> both = f.Run(*hedge, Idempotent());
  f.clock.Advance(10ms);
  f.attempts.AwaitStarted(3);
  f.attempts.Complete(1, absl::UnavailableError("replica 1 down"));
  CHECK_FALSE(both.ready());
  f.attempts.Complete(2, absl::InternalError("replica 2 broken"));
  CHECK(absl::IsInternal(both.Get().status()));
}

TEST_CASE("hedge: is_final lets a definitive error answer at once") {
  Fixture f;
  Hedge* hedge =
      f.Keep(Hedge::Create({.name = "search",
                            .delay = 10ms,
                            .is_final = [](const absl::Status& s) { return absl::IsNotFound(s); }},
                           f.clock)
                 .value());
  keel::Future<int> out = f.Run(*hedge, Idempotent());
  f.clock.Advance(10ms);
  f.attempts.AwaitStarted(2);
  f.attempts.Complete(1, absl::NotFoundError("no such page"));
  CHECK(absl::IsNotFound(out.Get().status()));
  CHECK(f.attempts.cancelled(0));
}

TEST_CASE("hedge sends no hedge at or past the call's deadline") {
  Fixture f;
  Hedge* hedge = f.Keep(Hedge::Create({.name = "search", .delay = 10ms}, f.clock).value());
  keel::Future<int> out = f.Run(*hedge, Idempotent(keel::Deadline::After(10ms, f.clock)));
  CHECK(f.timer->Stats().pending == 1);  // the deadline's timer, no hedge
  f.attempts.Complete(0, 1);
  CHECK(out.Get().ok());
  CHECK(f.timer->Stats().pending == 0);  // decided: the deadline's timer is withdrawn
  f.clock.Advance(1s);
  CHECK(f.attempts.started() == 1);
}

TEST_CASE("hedge ends an async call at its deadline and cancels every attempt still running") {
  Fixture f;
  Hedge* hedge =
      f.Keep(Hedge::Create({.name = "search", .delay = 10ms, .max_hedges = 2}, f.clock).value());
  keel::Future<int> out = f.Run(*hedge, Idempotent(keel::Deadline::After(25ms, f.clock)));
  f.clock.Advance(10ms);
  f.attempts.AwaitStarted(2);
  f.clock.Advance(10ms);
  f.attempts.AwaitStarted(3);
  CHECK_FALSE(out.ready());
  f.clock.Advance(5ms);  // the deadline: nobody waits for the attempts any more
  absl::StatusOr<int> r = out.Get();
  REQUIRE(absl::IsDeadlineExceeded(r.status()));
  CHECK(r.status().message() == "hedge \"search\": no answer by the deadline");
  for (size_t i = 0; i < 3; ++i) CHECK(f.attempts.cancelled(i));
  CHECK(hedge->Stats().cancelled_total == 3);
  f.attempts.Complete(2, 42);  // a late answer changes nothing
  f.clock.Advance(1s);
  CHECK(f.attempts.started() == 3);
  CHECK(hedge->Stats().wins_total == 0);
}

TEST_CASE("hedge's delay follows the percentile of recent latency") {
  Fixture f;
  // A window of 100: the percentile is known after 10 successful attempts.
  Hedge* hedge = f.Keep(Hedge::Create({.name = "search", .latency_window = 100}, f.clock).value());
  CHECK_FALSE(hedge->delay().has_value());
  // Unknown delay: calls are not hedged (nothing scheduled), but their latency is learned.
  for (int ms = 1; ms <= 10; ++ms) {
    keel::Future<int> out = f.Run(*hedge, Idempotent());
    CHECK(f.timer->Stats().pending == 0);
    f.clock.Advance(std::chrono::milliseconds(ms));
    f.attempts.Complete(f.attempts.started() - 1, ms);
    CHECK(out.Get().ok());
  }
  // p95 of 1..10 ms (nearest rank: the 10th of 10).
  REQUIRE(hedge->delay().has_value());
  CHECK(*hedge->delay() == 10ms);
  keel::Future<int> hedged = f.Run(*hedge, Idempotent());
  CHECK(f.timer->Stats().pending == 1);
  f.clock.Advance(10ms);
  f.attempts.AwaitStarted(12);
  f.attempts.Complete(11, 0);
  CHECK(hedged.Get().ok());
}

TEST_CASE("hedge learns a lower bound of the first attempt's latency when a hedge wins") {
  Fixture f;
  Hedge* hedge = f.Keep(Hedge::Create({.name = "search", .latency_window = 100}, f.clock).value());
  for (int i = 0; i < 10; ++i) {
    keel::Future<int> out = f.Run(*hedge, Idempotent());
    f.clock.Advance(10ms);
    f.attempts.Complete(f.attempts.started() - 1, 1);
    REQUIRE(out.Get().ok());
  }
  REQUIRE(hedge->delay() == std::optional<keel::Duration>(10ms));
  // Ten calls whose first attempt stalls: hedged at 10 ms, the hedge answers 15 ms later.
  for (int i = 0; i < 10; ++i) {
    const size_t first = f.attempts.started();
    keel::Future<int> out = f.Run(*hedge, Idempotent());
    f.clock.Advance(10ms);
    f.attempts.AwaitStarted(first + 2);
    f.clock.Advance(15ms);
    f.attempts.Complete(first + 1, 2);
    REQUIRE(out.Get().ok());
    REQUIRE(f.attempts.cancelled(first));
  }
  // The first attempts took at least 25 ms: p95 of {10 x 10 ms, 10 x 25 ms} is 25 ms (the
  // hedges' own 15 ms, or no sample, would keep it low).
  CHECK(hedge->delay() == std::optional<keel::Duration>(25ms));
}

TEST_CASE("hedge posts its hedges to the executor it is given") {
  Fixture f;
  keel::ManualExecutor executor;
  Hedge* hedge = f.Keep(Hedge::Create({.name = "search", .delay = 10ms}, f.clock).value());
  keel::Future<int> out = hedge->ExecuteAsync(
      *f.timer, Idempotent(), [&](const CallContext& c) { return f.attempts.Start(c); }, executor);
  CHECK(f.attempts.started() == 1);  // the first attempt: on this thread, at once
  f.clock.Advance(10ms);
  while (executor.pending() == 0) std::this_thread::yield();  // the timer posted the hedge
  CHECK(f.attempts.started() == 1);
  CHECK(executor.RunPending() == 1);  // ... which starts here, on the executor
  CHECK(f.attempts.started() == 2);
  f.attempts.Complete(1, 4);
  CHECK(out.Get().value() == 4);
}

TEST_CASE("hedge turns a call that throws into INTERNAL") {
  Fixture f;
  Hedge* hedge = f.Keep(Hedge::Create({.name = "search", .delay = 10ms}, f.clock).value());
  keel::Future<int> out = hedge->ExecuteAsync(
      *f.timer, Idempotent(),
      [](const CallContext&) -> keel::Future<int> { throw std::runtime_error("bug"); });
  auto r = out.Get();
  CHECK(absl::IsInternal(r.status()));
  CHECK(r.status().message() == "hedge \"search\": the call threw an exception");
  CHECK(f.timer->Stats().pending == 0);
}

TEST_CASE("hedge stage without a pool hedges async pipelines and refuses to hedge a blocking one") {
  Fixture f;
  Hedge* hedge = f.Keep(Hedge::Create({.name = "search", .delay = 10ms}, f.clock).value());
  auto pipeline =
      keel::Pipeline<int>::Builder().Add(keel::overload::HedgeStage<int>::Make(*hedge)).Build();
  keel::Future<int> out = pipeline.ExecuteAsync(
      *f.timer, Idempotent(), [&](const CallContext& c) { return f.attempts.Start(c); });
  f.clock.Advance(10ms);
  f.attempts.AwaitStarted(2);
  f.attempts.Complete(1, 9);
  CHECK(out.Get().value() == 9);
  CHECK(f.attempts.cancelled(0));

  auto blocking = [](const CallContext&) -> absl::StatusOr<int> { return 1; };
  CHECK(pipeline.Execute(CallContext{}, blocking).value() == 1);  // not idempotent: runs once
  auto refused = pipeline.Execute(Idempotent(), blocking);
  CHECK(absl::IsFailedPrecondition(refused.status()));
  CHECK_THAT(std::string(refused.status().message()),
             Catch::StartsWith("hedge \"search\": a blocking pipeline hedges only through a stage "
                               "made with a Timer and a ThreadPoolBulkhead"));
}

TEST_CASE("hedge's blocking form runs attempts on a thread pool") {
  keel::ManualClock clock;
  std::unique_ptr<keel::Timer> timer = keel::Timer::Create({}, clock).value();
  auto pool = keel::ThreadPoolBulkhead::Create({.name = "replicas", .threads = 2}, clock).value();
  auto hedge = Hedge::Create({.name = "search", .delay = 10ms}, clock).value();
  std::atomic<int> started{0};
  auto attempt = [&clock, &started](const CallContext& c) -> absl::StatusOr<int> {
    if (started.fetch_add(1) == 0) {
      // The first attempt stalls until it is cancelled (as a stuck replica honouring its token).
      if (!c.cancellation.SleepUntil(clock, clock.Now() + 1h)) {
        return absl::CancelledError("stalled attempt cancelled");
      }
      return 1;
    }
    return 2;
  };
  absl::StatusOr<int> result;
  std::thread caller([&] { result = hedge->Execute(*timer, *pool, Idempotent(), attempt); });
  while (started.load() == 0) std::this_thread::yield();
  clock.Advance(10ms);
  caller.join();
  CHECK(result.value() == 2);
  pool->Shutdown(keel::ThreadPoolBulkhead::ShutdownMode::kDrain);  // the loser has stopped
  timer->Shutdown();  // before the Hedge goes: its thread may still be finishing the hedge
  CHECK(hedge->Stats().wins_total == 1);
}

TEST_CASE("hedge validates its options and registers its metrics") {
  auto message = [](Hedge::Options o) {
    return std::string(Hedge::Create(std::move(o)).status().message());
  };
  CHECK(message({.name = "h", .max_hedges = 0}) ==
        "hedge \"h\": max_hedges must be in [1, 10], got 0");
  CHECK(message({.name = "h", .delay = 0ms}) == "hedge \"h\": delay must be > 0, got 0");
  CHECK(message({.name = "h", .percentile = 1.0}) ==
        "hedge \"h\": percentile must be in (0, 1), got 1");
  CHECK(message({.name = "h", .latency_window = 5}) ==
        "hedge \"h\": latency_window must be >= 10, got 5");
  keel::MetricsRegistry metrics;
  keel::ManualClock clock;
  auto hedge = Hedge::Create({.name = "h", .delay = 25ms}, clock, &metrics).value();
  const std::string text = metrics.RenderPrometheus();
  CHECK_THAT(text, Catch::Contains("keel_hedge_delay_seconds{name=\"h\"} 0.025"));
  CHECK_THAT(text, Catch::Contains("keel_hedge_refused_total{name=\"h\",reason=\"budget\"} 0"));
  CHECK_THAT(text, Catch::Contains("keel_hedge_calls_total{name=\"h\"} 0"));
}

}  // namespace
