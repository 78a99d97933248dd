// The blocking forms of hedging: HedgeStage in Pipeline::Execute, and Hedge::Execute at the
// deadline. Attempts run on a real ThreadPoolBulkhead and wait on a ManualClock (absolute wake
// times, so the order in which the test advances the clock and an attempt starts never matters).
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "keel/async/timer.h"
#include "keel/overload/hedge.h"
#include "keel/overload/hedge_stage.h"
#include "keel/resilience/pipeline.h"
#include "keel/resilience/retry_budget.h"
#include "keel/resilience/thread_pool_bulkhead.h"
#include "keel/resilience/timeout.h"

namespace {

using namespace std::chrono_literals;
using keel::CallContext;
using keel::TimePoint;
using keel::overload::Hedge;
using keel::overload::HedgeStage;

CallContext Idempotent(keel::Deadline deadline = keel::Deadline::Infinite()) {
  CallContext ctx;
  ctx.deadline = deadline;
  ctx.idempotent = true;
  return ctx;
}

// What the attempts of the test's calls record. Owned by the calls (shared_ptr), never by a
// caller's frame.
struct Attempts {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<keel::CancellationToken> tokens;  // one per attempt started, in order
  int finished = 0;

  // Records the attempt's start; returns its number (0 for the first).
  size_t Start(const CallContext& c) {
    std::lock_guard<std::mutex> lock(mu);
    tokens.push_back(c.cancellation);
    cv.notify_all();
    return tokens.size() - 1;
  }
  void Finish() {
    std::lock_guard<std::mutex> lock(mu);
    ++finished;
    cv.notify_all();
  }
  // Blocks in real time (no sleep) until `n` attempts have started.
  void AwaitStarted(size_t n) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return tokens.size() >= n; });
  }
  void AwaitFinished(int n) {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return finished >= n; });
  }
  size_t started() {
    std::lock_guard<std::mutex> lock(mu);
    return tokens.size();
  }
  int finished_count() {
    std::lock_guard<std::mutex> lock(mu);
    return finished;
  }
  bool cancelled(size_t i) {
    std::lock_guard<std::mutex> lock(mu);
    return tokens.at(i).cancelled();
  }
};

// Declared so that the pool goes first (drained: every loser has ended), then the timer (its
// thread may still be starting a hedge), then the Hedge, which must outlive both.
struct Fixture {
  keel::ManualClock clock;
  const TimePoint t0 = clock.Now();
  std::unique_ptr<Hedge> hedge;
  std::unique_ptr<keel::Timer> timer = keel::Timer::Create({}, clock).value();
  std::unique_ptr<keel::ThreadPoolBulkhead> pool =
      keel::ThreadPoolBulkhead::Create({.name = "replicas", .threads = 3}, clock).value();
  std::shared_ptr<Attempts> attempts = std::make_shared<Attempts>();

  explicit Fixture(Hedge::Options options) : hedge(Hedge::Create(options, clock).value()) {}
  ~Fixture() {
    pool->Shutdown(keel::ThreadPoolBulkhead::ShutdownMode::kDrain);
    timer->Shutdown();
  }
};

TEST_CASE(
    "blocking pipeline hedge returns at the delay plus the fast attempt, losers still running") {
  Fixture f({.name = "search", .delay = 10ms});
  auto pipeline = keel::Pipeline<int>::Builder()
                      .Add(HedgeStage<int>::Make(*f.hedge, *f.timer, *f.pool))
                      .Build();
  // The first attempt is stuck for 1 s and ignores its token (the worst loser); the hedge
  // answers 5 ms after it starts.
  auto call = [attempts = f.attempts, clock = &f.clock,
               t0 = f.t0](const CallContext& c) -> absl::StatusOr<int> {
    const size_t n = attempts->Start(c);
    clock->SleepUntil(n == 0 ? t0 + 1s : t0 + 15ms);
    attempts->Finish();
    return n == 0 ? 1 : 2;
  };
  absl::StatusOr<int> result;
  TimePoint returned_at;
  std::thread caller([&] {
    result = pipeline.Execute(Idempotent(), call);
    returned_at = f.clock.Now();
  });
  f.attempts->AwaitStarted(1);
  f.clock.Advance(10ms);
  f.attempts->AwaitStarted(2);
  f.clock.Advance(5ms);
  caller.join();
  CHECK(result.value() == 2);
  CHECK(returned_at - f.t0 == 15ms);         // not the slow attempt's 1 s
  CHECK(f.attempts->finished_count() == 1);  // the loser runs on after Execute returned
  CHECK(f.attempts->cancelled(0));
  CHECK_FALSE(f.attempts->cancelled(1));
  const auto s = f.hedge->Stats();
  CHECK(s.hedges_total == 1);
  CHECK(s.wins_total == 1);
  CHECK(s.cancelled_total == 1);
  f.clock.Advance(1s);  // the loser ends
  f.attempts->AwaitFinished(2);
}

// A stage inside the hedge stage that reads its own (heap) member after the call: a loser that
// ends after the pipeline is gone must still find it alive.
class Probe final : public keel::Policy<int> {
 public:
  explicit Probe(std::shared_ptr<std::atomic<int>> seen)
      : label_(std::string(64, 'p')), seen_(std::move(seen)) {}
  absl::StatusOr<int> Apply(const CallContext& ctx, Next next) const override {
    absl::StatusOr<int> r = next(ctx);
    seen_->fetch_add(static_cast<int>(label_.size()));
    return r;
  }

 private:
  const std::string label_;
  std::shared_ptr<std::atomic<int>> seen_;
};

struct Gate {
  std::mutex mu;
  std::condition_variable cv;
  bool open = false;
  size_t loser_read = 0;  // what the loser read from its captures after the gate opened
  void Open() {
    std::lock_guard<std::mutex> lock(mu);
    open = true;
    cv.notify_all();
  }
  void Wait() {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return open; });
  }
};

// Builds a pipeline on the heap and a call on this frame, runs one hedged call and returns: by
// the time the loser resumes, both are gone. noinline so that the frame really ends.
[[gnu::noinline]] absl::StatusOr<int> HedgedCallOnAFrameThatEnds(
    Fixture& f, const std::shared_ptr<Gate>& gate, const std::shared_ptr<std::atomic<int>>& seen) {
  auto pipeline = std::make_unique<keel::Pipeline<int>>(
      keel::Pipeline<int>::Builder()
          .Add(HedgeStage<int>::Make(*f.hedge, *f.timer, *f.pool))
          .Add(keel::Timeout::Create({.name = "per-attempt", .timeout = 1h}, f.clock).value())
          .Add(std::make_shared<Probe>(seen))
          .Build());
  std::string payload(100, 'x');  // copied into the call: the loser reads the copy
  auto call = [gate, payload, attempts = f.attempts](const CallContext& c) -> absl::StatusOr<int> {
    const size_t n = attempts->Start(c);
    if (n == 0) {
      gate->Wait();  // the loser: resumes only after the caller's frame is gone
      std::lock_guard<std::mutex> lock(gate->mu);
      gate->loser_read = payload.size();
    }
    attempts->Finish();
    return static_cast<int>(n);
  };
  absl::StatusOr<int> result;
  std::thread advance([&] {
    f.attempts->AwaitStarted(1);
    f.clock.Advance(10ms);
  });
  result = pipeline->Execute(Idempotent(), call);
  advance.join();
  return result;
}

// Overwrites the stack where the caller's frame was, so that a stray reference to it would read
// garbage even without ASan's stack-use-after-return detection.
[[gnu::noinline]] void ScribbleStack() {
  volatile char junk[16384];
  for (size_t i = 0; i < sizeof(junk); ++i) junk[i] = static_cast<char>(0xA5);
}

TEST_CASE(
    "blocking pipeline hedge: a loser ending after Execute, its frame and the pipeline are gone, "
    "reads only what it owns") {
  Fixture f({.name = "search", .delay = 10ms});
  auto gate = std::make_shared<Gate>();
  auto seen = std::make_shared<std::atomic<int>>(0);
  absl::StatusOr<int> result = HedgedCallOnAFrameThatEnds(f, gate, seen);
  CHECK(result.value() == 1);  // the hedge (attempt 1) won
  CHECK(seen->load() == 64);   // the winner passed the probe stage
  ScribbleStack();
  CHECK(f.attempts->cancelled(0));
  CHECK(f.attempts->finished_count() == 1);
  gate->Open();
  f.attempts->AwaitFinished(2);
  f.pool->Shutdown(keel::ThreadPoolBulkhead::ShutdownMode::kDrain);  // the loser's last steps
  CHECK(gate->loser_read == 100);
  CHECK(seen->load() == 128);  // the loser went back through the probe stage's copy
}

TEST_CASE("blocking pipeline hedge sends at most max_hedges extra attempts") {
  Fixture f({.name = "search", .delay = 10ms, .max_hedges = 2});
  auto pipeline = keel::Pipeline<int>::Builder()
                      .Add(HedgeStage<int>::Make(*f.hedge, *f.timer, *f.pool))
                      .Build();
  // Every attempt answers at 100 ms unless cancelled first.
  auto call = [attempts = f.attempts, clock = &f.clock,
               t0 = f.t0](const CallContext& c) -> absl::StatusOr<int> {
    const size_t n = attempts->Start(c);
    const bool cancelled = !c.cancellation.SleepUntil(*clock, t0 + 100ms + n * 1ms);
    attempts->Finish();
    if (cancelled) return absl::CancelledError("attempt cancelled");
    return static_cast<int>(n);
  };
  absl::StatusOr<int> result;
  std::thread caller([&] { result = pipeline.Execute(Idempotent(), call); });
  f.attempts->AwaitStarted(1);
  f.clock.Advance(10ms);
  f.attempts->AwaitStarted(2);
  f.clock.Advance(10ms);
  f.attempts->AwaitStarted(3);
  CHECK(f.timer->Stats().pending == 0);  // no third hedge scheduled
  f.clock.Advance(80ms);                 // t0 + 100 ms: the first attempt answers first
  caller.join();
  CHECK(result.value() == 0);
  f.attempts->AwaitFinished(3);
  CHECK(f.attempts->started() == 3);
  CHECK(f.attempts->cancelled(1));
  CHECK(f.attempts->cancelled(2));
  CHECK(f.hedge->Stats().hedges_total == 2);
  CHECK(f.hedge->Stats().cancelled_total == 2);
}

TEST_CASE("blocking pipeline hedges spend the retry budget") {
  // One retry (or hedge) in flight at most: the second hedge of the call is refused.
  auto budget =
      keel::ConcurrentRetryBudget::Create({.percent = 0, .min_concurrent_retries = 1}).value();
  Fixture f({.name = "search", .delay = 10ms, .max_hedges = 2, .budget = budget.get()});
  auto pipeline = keel::Pipeline<int>::Builder()
                      .Add(HedgeStage<int>::Make(*f.hedge, *f.timer, *f.pool))
                      .Build();
  auto call = [attempts = f.attempts, clock = &f.clock,
               t0 = f.t0](const CallContext& c) -> absl::StatusOr<int> {
    const size_t n = attempts->Start(c);
    const bool cancelled = !c.cancellation.SleepUntil(*clock, t0 + 50ms);
    attempts->Finish();
    if (cancelled) return absl::CancelledError("attempt cancelled");
    return static_cast<int>(n);
  };
  absl::StatusOr<int> result;
  std::thread caller([&] { result = pipeline.Execute(Idempotent(), call); });
  f.attempts->AwaitStarted(1);
  CHECK(budget->calls_in_flight() == 1);
  f.clock.Advance(10ms);
  f.attempts->AwaitStarted(2);
  CHECK(budget->retries_in_flight() == 1);
  f.clock.Advance(10ms);
  while (f.hedge->Stats().refused_budget_total == 0) std::this_thread::yield();
  f.clock.Advance(30ms);  // t0 + 50 ms: both attempts answer
  caller.join();
  CHECK(result.ok());
  f.attempts->AwaitFinished(2);
  f.pool->Shutdown(keel::ThreadPoolBulkhead::ShutdownMode::kDrain);
  CHECK(f.attempts->started() == 2);  // the refused hedge was never sent
  CHECK(f.hedge->Stats().hedges_total == 1);
  CHECK(budget->Stats().retries_refused_total == 1);
  CHECK(budget->retries_in_flight() == 0);
  CHECK(budget->calls_in_flight() == 0);
}

TEST_CASE(
    "blocking pipeline hedge runs a call not marked idempotent once, on the caller's thread") {
  Fixture f({.name = "search", .delay = 10ms});
  auto pipeline = keel::Pipeline<int>::Builder()
                      .Add(HedgeStage<int>::Make(*f.hedge, *f.timer, *f.pool))
                      .Build();
  std::thread::id ran_on;
  int local = 0;  // by reference: a call that is not hedged never leaves the caller's stack
  auto r = pipeline.Execute(CallContext{}, [&](const CallContext&) -> absl::StatusOr<int> {
    ran_on = std::this_thread::get_id();
    return ++local;
  });
  CHECK(r.value() == 1);
  CHECK(ran_on == std::this_thread::get_id());
  CHECK(f.timer->Stats().scheduled_total == 0);
  CHECK(f.hedge->Stats().calls_total == 1);
  CHECK(f.hedge->Stats().not_idempotent_total == 1);
}

TEST_CASE("blocking pipeline hedge refuses a move-only call it would have to copy") {
  Fixture f({.name = "search", .delay = 10ms});
  auto pipeline = keel::Pipeline<int>::Builder()
                      .Add(HedgeStage<int>::Make(*f.hedge, *f.timer, *f.pool))
                      .Build();
  auto owned = std::make_unique<int>(7);
  auto r = pipeline.Execute(
      Idempotent(),
      [p = std::move(owned)](const CallContext&) -> absl::StatusOr<int> { return *p; });
  CHECK(absl::IsFailedPrecondition(r.status()));
  CHECK(r.status().message() ==
        "hedge \"search\": a blocking pipeline hedges only a copyable call (its losing attempts "
        "run on a copy after Execute returns)");
  CHECK(f.attempts->started() == 0);
}

TEST_CASE("blocking pipeline retry outside the hedge stage retries a failed hedged call") {
  // A delay the test never reaches: each try is one attempt.
  Fixture f({.name = "search", .delay = 1h});
  auto retry =
      keel::Retry::Create(
          {.max_attempts = 2, .backoff = {.kind = keel::Backoff::Kind::kConstant, .base = 1ms}},
          f.clock)
          .value();
  auto pipeline = keel::Pipeline<int>::Builder()
                      .Add(retry)
                      .Add(HedgeStage<int>::Make(*f.hedge, *f.timer, *f.pool))
                      .Build();
  // The first attempt of the first try fails at once; the retry's attempt succeeds. Both reach
  // the hedge stage, each on its own copy of the call.
  auto call = [attempts = f.attempts](const CallContext& c) -> absl::StatusOr<int> {
    const size_t n = attempts->Start(c);
    attempts->Finish();
    if (n == 0) return absl::UnavailableError("replica down");
    return c.attempt;
  };
  absl::StatusOr<int> result;
  std::thread caller([&] { result = pipeline.Execute(Idempotent(), call); });
  f.attempts->AwaitStarted(1);
  while (f.attempts->started() < 2) {
    f.clock.Advance(1ms);
    std::this_thread::yield();
  }
  caller.join();
  CHECK(result.value() == 2);
  CHECK(f.hedge->Stats().calls_total == 2);
  CHECK(f.hedge->Stats().hedges_total == 0);
}

TEST_CASE("hedge's blocking form cancels every attempt still running at the deadline") {
  Fixture f({.name = "search", .delay = 10ms, .max_hedges = 2});
  // Every attempt would run for an hour: only its token ends it early.
  auto call = [attempts = f.attempts, clock = &f.clock,
               t0 = f.t0](const CallContext& c) -> absl::StatusOr<int> {
    attempts->Start(c);
    const bool cancelled = !c.cancellation.SleepUntil(*clock, t0 + 1h);
    attempts->Finish();
    if (cancelled) return absl::CancelledError("attempt cancelled");
    return 1;
  };
  absl::StatusOr<int> result;
  std::thread caller([&] {
    result =
        f.hedge->Execute(*f.timer, *f.pool, Idempotent(keel::Deadline::After(25ms, f.clock)), call);
  });
  f.attempts->AwaitStarted(1);
  f.clock.Advance(10ms);
  f.attempts->AwaitStarted(2);
  f.clock.Advance(10ms);
  f.attempts->AwaitStarted(3);
  f.clock.Advance(5ms);  // the deadline
  caller.join();
  CHECK(absl::IsDeadlineExceeded(result.status()));
  CHECK(result.status().message() == "hedge \"search\": no answer by the deadline");
  CHECK(f.attempts->cancelled(0));
  CHECK(f.attempts->cancelled(1));
  CHECK(f.attempts->cancelled(2));
  CHECK(f.hedge->Stats().cancelled_total == 3);
  CHECK(f.timer->Stats().pending == 0);
  f.clock.Advance(1h);  // without the cancellation, the attempts end here
  f.attempts->AwaitFinished(3);
}

}  // namespace
