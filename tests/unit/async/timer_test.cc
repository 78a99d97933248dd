// keel::Timer on a ManualClock: callbacks run when the clock reaches their time, in order;
// Cancel, Sleep futures, exceptions and Shutdown. Waits are on completions, never sleeps.
#include "keel/async/timer.h"

#include <catch2/catch.hpp>
#include <stdexcept>
#include <string>
#include <vector>

#include "keel/async/task.h"

namespace keel {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Timer> MakeTimer(Clock& clock, MetricsRegistry* metrics = nullptr) {
  auto timer = Timer::Create({.name = "test"}, clock, metrics);
  REQUIRE(timer.ok());
  return std::move(*timer);
}

TEST_CASE("timer runs callbacks once the clock reaches their time, in time order", "[async]") {
  ManualClock clock;
  auto timer = MakeTimer(clock);
  Mutex mu;
  std::vector<std::string> ran;
  auto record = [&](std::string what) {
    return [&, what] {
      MutexLock lock(mu);
      ran.push_back(what);
    };
  };
  timer->Schedule(clock.Now() + 20ms, record("b"));
  timer->Schedule(clock.Now() + 10ms, record("a"));
  timer->Schedule(clock.Now() + 20ms, record("c"));  // ties: scheduling order
  Future<void> at5 = timer->Sleep(5ms);
  Future<void> at20 = timer->Sleep(20ms);
  CHECK_FALSE(at5.ready());
  clock.Advance(5ms);
  CHECK(at5.Get(Deadline::After(5s, SteadyClock())).ok());
  {
    MutexLock lock(mu);
    CHECK(ran.empty());  // nothing else is due
  }
  clock.Advance(15ms);
  CHECK(at20.Get(Deadline::After(5s, SteadyClock())).ok());  // scheduled after a, b and c
  MutexLock lock(mu);
  CHECK(ran == std::vector<std::string>{"a", "b", "c"});
}

TEST_CASE("timer Cancel removes a callback before it runs", "[async]") {
  ManualClock clock;
  auto timer = MakeTimer(clock);
  std::atomic<int> ran{0};
  TimerId id = timer->Schedule(clock.Now() + 10ms, [&] { ran.fetch_add(1); });
  CHECK(timer->Cancel(id));
  CHECK_FALSE(timer->Cancel(id));
  Future<void> later = timer->Sleep(10ms);
  clock.Advance(10ms);
  CHECK(later.Get(Deadline::After(5s, SteadyClock())).ok());
  CHECK(ran.load() == 0);
  TimerStats s = timer->Stats();
  CHECK(s.scheduled_total == 2);
  CHECK(s.cancelled_total == 1);
  CHECK(s.fired_total == 1);
  CHECK(s.pending == 0);
}

TEST_CASE("timer survives a callback that throws and counts it", "[async]") {
  ManualClock clock;
  MetricsRegistry metrics;
  auto timer = MakeTimer(clock, &metrics);
  timer->Schedule(clock.Now(), [] { throw std::runtime_error("user code"); });
  Future<void> after = timer->Sleep(1ms);
  clock.Advance(1ms);
  CHECK(after.Get(Deadline::After(5s, SteadyClock())).ok());
  CHECK(timer->Stats().callback_exceptions_total == 1);
  const std::string text = metrics.RenderPrometheus();
  CHECK(text.find("keel_timer_callback_exceptions_total{name=\"test\"} 1") != std::string::npos);
  CHECK(text.find("keel_timer_pending{name=\"test\"} 0") != std::string::npos);
}

Task<int> SleepThenAnswer(Timer& timer) {
  absl::Status slept = co_await timer.Sleep(30ms);
  if (!slept.ok()) co_return slept;
  co_return 42;
}

TEST_CASE("a coroutine sleeps on the timer, Shutdown completes pending sleeps CANCELLED",
          "[async]") {
  ManualClock clock;
  auto timer = MakeTimer(clock);
  Future<int> first = SleepThenAnswer(*timer).Start();
  Future<int> second = SleepThenAnswer(*timer).Start();
  clock.Advance(30ms);
  CHECK(first.Get(Deadline::After(5s, SteadyClock())).value() == 42);
  CHECK(second.Get(Deadline::After(5s, SteadyClock())).value() == 42);
  Future<int> never = SleepThenAnswer(*timer).Start();  // never due: the clock stays
  timer->Shutdown();
  CHECK(never.Get(Deadline::After(5s, SteadyClock())).status().code() ==
        absl::StatusCode::kCancelled);
  // After Shutdown, new sleeps complete CANCELLED at once.
  CHECK(timer->Sleep(1ms).Get().code() == absl::StatusCode::kCancelled);
}

}  // namespace
}  // namespace keel
