// Pipeline::ExecuteAsync on a ManualClock and a keel::Timer: every keel stage in its async form,
// with the call's futures completed by the test. No thread waits inside the pipeline.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "keel/async/timer.h"
#include "keel/limit/token_bucket.h"
#include "keel/resilience/pipeline.h"

namespace keel {
namespace {

using namespace std::chrono_literals;

struct Fixture {
  ManualClock clock;
  std::unique_ptr<Timer> timer = Timer::Create({}, clock).value();
};

void AwaitScheduled(const Timer& timer, uint64_t n) {
  const auto give_up = std::chrono::steady_clock::now() + 5s;
  while (timer.Stats().scheduled_total < n && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::yield();
  }
  REQUIRE(timer.Stats().scheduled_total >= n);
}

TEST_CASE("async pipeline: fallback, bulkhead, breaker, retry, timeout around a future",
          "[async][pipeline]") {
  Fixture f;
  auto bulkhead = SemaphoreBulkhead::Create({.name = "b", .max_concurrent = 1}).value();
  auto breaker =
      CircuitBreaker::Create({.name = "cb", .window_size = 10, .minimum_calls = 10}, f.clock)
          .value();
  Retry retry = Retry::Create({.name = "r",
                               .max_attempts = 3,
                               .backoff = {.kind = Backoff::Kind::kConstant, .base = 10ms}},
                              f.clock)
                    .value();
  Timeout timeout = Timeout::Create({.name = "t", .timeout = 100ms}, f.clock).value();
  Fallback<int> fallback =
      Fallback<int>::Create([](const absl::Status&) -> absl::StatusOr<int> { return -1; }).value();
  Pipeline<int> pipeline = Pipeline<int>::Builder()
                               .Add(fallback)
                               .Add(*bulkhead)
                               .Add(*breaker)
                               .Add(retry)
                               .Add(timeout)
                               .Build();
  std::atomic<int> attempts{0};
  Future<int> out =
      pipeline.ExecuteAsync(*f.timer, Deadline::Infinite(), [&](const CallContext& ctx) {
        attempts.fetch_add(1);
        if (ctx.attempt == 1) return Future<int>::Ready(absl::UnavailableError("down"));
        return Future<int>::Ready(ctx.attempt);
      });
  // In the retry's backoff: the bulkhead permit is held, so a second call is refused at once.
  CHECK_FALSE(out.ready());
  Future<int> second = pipeline.ExecuteAsync(
      *f.timer, Deadline::Infinite(), [](const CallContext&) { return Future<int>::Ready(0); });
  CHECK(second.Get().value() == -1);  // RESOURCE_EXHAUSTED, answered by the fallback
  CHECK(bulkhead->Stats().rejected_total == 1);
  AwaitScheduled(*f.timer, 2);  // the first attempt's timeout and the backoff
  f.clock.Advance(10ms);
  CHECK(out.Get(Deadline::After(5s, SteadyClock())).value() == 2);
  CHECK(attempts.load() == 2);
  CHECK(breaker->Stats().successful_total == 1);  // one outcome per logical call
  CHECK(bulkhead->Stats().in_use == 0);           // released when the call completed
}

TEST_CASE(
    "async timeout stage completes DEADLINE_EXCEEDED on the timer, the late result is "
    "dropped",
    "[async][pipeline]") {
  Fixture f;
  Timeout timeout = Timeout::Create({.name = "db", .timeout = 50ms}, f.clock).value();
  Pipeline<int> pipeline = Pipeline<int>::Builder().Add(timeout).Build();
  Promise<int> never_on_time;
  Future<int> call = never_on_time.future();
  Future<int> out = pipeline.ExecuteAsync(*f.timer, Deadline::Infinite(),
                                          [&](const CallContext&) { return std::move(call); });
  AwaitScheduled(*f.timer, 1);
  f.clock.Advance(50ms);
  absl::StatusOr<int> r = out.Get(Deadline::After(5s, SteadyClock()));
  CHECK(r.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(r.status().message() == "timeout \"db\": no result within 50ms");
  never_on_time.Set(7);  // late: dropped, no second completion
}

TEST_CASE("async pipeline: a result before the timeout cancels its timer", "[async][pipeline]") {
  Fixture f;
  Timeout timeout = Timeout::Create({.name = "db", .timeout = 50ms}, f.clock).value();
  Pipeline<int> pipeline = Pipeline<int>::Builder().Add(timeout).Build();
  Promise<int> p;
  Future<int> call = p.future();
  Future<int> out = pipeline.ExecuteAsync(*f.timer, Deadline::Infinite(),
                                          [&](const CallContext&) { return std::move(call); });
  p.Set(5);
  CHECK(out.Get().value() == 5);
  CHECK(f.timer->Stats().cancelled_total == 1);
}

TEST_CASE("async rate limiter stage denies without running the call", "[async][pipeline]") {
  Fixture f;
  auto bucket = limit::TokenBucket::Create({.rate = 1, .burst = 1}, f.clock).value();
  Pipeline<int> pipeline = Pipeline<int>::Builder().AddRateLimiter(bucket, {.name = "api"}).Build();
  int calls = 0;
  auto fn = [&](const CallContext&) {
    ++calls;
    return Future<int>::Ready(1);
  };
  CHECK(pipeline.ExecuteAsync(*f.timer, Deadline::Infinite(), fn).Get().value() == 1);
  absl::StatusOr<int> denied = pipeline.ExecuteAsync(*f.timer, Deadline::Infinite(), fn).Get();
  CHECK(denied.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(calls == 1);
}

// A policy with only the blocking form.
class SyncOnly final : public Policy<int> {
 public:
  absl::StatusOr<int> Apply(const CallContext& ctx, Next next) const override { return next(ctx); }
};

TEST_CASE("async pipeline refuses a stage without an async form", "[async][pipeline]") {
  Fixture f;
  Pipeline<int> pipeline = Pipeline<int>::Builder().Add(std::make_shared<SyncOnly>()).Build();
  absl::StatusOr<int> r =
      pipeline
          .ExecuteAsync(*f.timer, Deadline::Infinite(),
                        [](const CallContext&) { return Future<int>::Ready(1); })
          .Get();
  CHECK(r.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(r.status().message() == "pipeline: stage 1 of 1 has no async form");
}

}  // namespace
}  // namespace keel
