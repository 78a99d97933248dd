// Retry::ExecuteAsync: the same decisions as Execute, with each backoff a sleep on a keel::Timer
// (ManualClock: the test advances time) and each attempt a future; no thread waits.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "keel/async/timer.h"
#include "keel/resilience/retry.h"
#include "keel/status.h"

namespace keel {
namespace {

using namespace std::chrono_literals;

Retry MakeRetry(Clock& clock, int max_attempts = 3) {
  auto retry = Retry::Create({.name = "async",
                              .max_attempts = max_attempts,
                              .backoff = {.kind = Backoff::Kind::kConstant, .base = 10ms}},
                             clock);
  REQUIRE(retry.ok());
  return *retry;
}

std::unique_ptr<Timer> MakeTimer(Clock& clock) { return Timer::Create({}, clock).value(); }

// Waits (in real time, without sleeping) until the timer has `n` callbacks scheduled in total.
void AwaitScheduled(const Timer& timer, uint64_t n) {
  const auto give_up = std::chrono::steady_clock::now() + 5s;
  while (timer.Stats().scheduled_total < n && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::yield();
  }
  REQUIRE(timer.Stats().scheduled_total >= n);
}

TEST_CASE("retry async succeeds after backoffs on the timer, holding no thread", "[async]") {
  ManualClock clock;
  auto timer = MakeTimer(clock);
  Retry retry = MakeRetry(clock);
  std::atomic<int> calls{0};
  Future<int> out = retry.ExecuteAsync(*timer, Deadline::Infinite(), [&](const CallContext& ctx) {
    calls.fetch_add(1);
    if (ctx.attempt < 3) return Future<int>::Ready(absl::UnavailableError("down"));
    return Future<int>::Ready(ctx.attempt * 10);
  });
  CHECK(calls.load() == 1);
  CHECK_FALSE(out.ready());  // in its first backoff, on the timer
  AwaitScheduled(*timer, 1);
  clock.Advance(10ms);
  AwaitScheduled(*timer, 2);
  CHECK(calls.load() == 2);
  clock.Advance(10ms);
  CHECK(out.Get(Deadline::After(5s, SteadyClock())).value() == 30);
  CHECK(calls.load() == 3);
  CHECK(retry.Stats().retries_total == 2);
  CHECK(retry.Stats().outcome(Retry::Outcome::kSucceededAfterRetry) == 1);
}

TEST_CASE("retry async gives up after max_attempts like Execute", "[async]") {
  ManualClock clock;
  auto timer = MakeTimer(clock);
  Retry retry = MakeRetry(clock, 2);
  Future<void> out = retry.ExecuteAsync(*timer, Deadline::Infinite(), [](const CallContext&) {
    return Future<void>::Ready(absl::UnavailableError("down"));
  });
  AwaitScheduled(*timer, 1);
  clock.Advance(10ms);
  absl::Status s = out.Get(Deadline::After(5s, SteadyClock()));
  CHECK(s.code() == absl::StatusCode::kUnavailable);
  CHECK(s.message() == "retry \"async\": gave up after 2 attempts: down");
}

TEST_CASE("retry async stops at once when the backoff would pass the deadline", "[async]") {
  ManualClock clock;
  auto timer = MakeTimer(clock);
  Retry retry = MakeRetry(clock);
  Future<int> out = retry.ExecuteAsync(*timer, Deadline::After(5ms, clock), [](const CallContext&) {
    return Future<int>::Ready(absl::UnavailableError("down"));
  });
  CHECK(out.ready());  // decided without sleeping
  CHECK(out.Get().status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(timer->Stats().scheduled_total == 0);
}

TEST_CASE("retry async awaits attempts that complete later, on another thread", "[async]") {
  ManualClock clock;
  auto timer = MakeTimer(clock);
  Retry retry = MakeRetry(clock);
  Promise<int> first;
  Future<int> first_future = first.future();
  Future<int> out = retry.ExecuteAsync(*timer, Deadline::Infinite(), [&](const CallContext& ctx) {
    if (ctx.attempt == 1) return std::move(first_future);
    return Future<int>::Ready(7);
  });
  CHECK_FALSE(out.ready());
  std::thread([&] { first.Set(absl::UnavailableError("later")); }).join();
  AwaitScheduled(*timer, 1);
  clock.Advance(10ms);
  CHECK(out.Get(Deadline::After(5s, SteadyClock())).value() == 7);
}

TEST_CASE("retry async ends CANCELLED when the timer shuts down during a backoff", "[async]") {
  ManualClock clock;
  auto timer = MakeTimer(clock);
  Retry retry = MakeRetry(clock);
  Future<int> out = retry.ExecuteAsync(*timer, Deadline::Infinite(), [](const CallContext&) {
    return Future<int>::Ready(absl::UnavailableError("down"));
  });
  AwaitScheduled(*timer, 1);
  timer->Shutdown();
  absl::StatusOr<int> r = out.Get(Deadline::After(5s, SteadyClock()));
  CHECK(r.status().code() == absl::StatusCode::kCancelled);
  CHECK(r.status().message().find("cancelled after 1 attempt") != absl::string_view::npos);
}

}  // namespace
}  // namespace keel
