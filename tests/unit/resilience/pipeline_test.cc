#include "keel/resilience/pipeline.h"

#include <catch2/catch.hpp>
#include <memory>
#include <string>
#include <vector>

#include "unit/resilience/recording_clock.h"

// GCC 12 warns about fields a designated initializer leaves to their defaults (fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace std::chrono_literals;
using keel::CallContext;
using keel::Deadline;
using keel::Pipeline;

namespace {

// A stage that logs when the call passes through it inward and outward.
class Tracer final : public keel::Policy<int> {
 public:
  Tracer(std::string name, std::vector<std::string>* log) : name_(std::move(name)), log_(log) {}
  absl::StatusOr<int> Apply(const CallContext& ctx, Next next) const override {
    log_->push_back(name_ + " in");
    absl::StatusOr<int> r = next(ctx);
    log_->push_back(name_ + " out");
    return r;
  }

 private:
  std::string name_;
  std::vector<std::string>* log_;
};

keel::Retry ConstantRetry(keel::Clock& clock, int attempts) {
  return keel::Retry::Create({.max_attempts = attempts,
                              .backoff = {.kind = keel::Backoff::Kind::kConstant, .base = 10ms}},
                             clock)
      .value();
}

}  // namespace

TEST_CASE("pipeline applies policies in the order added, the first outermost") {
  std::vector<std::string> log;
  auto pipeline = Pipeline<int>::Builder()
                      .Add(std::make_shared<Tracer>("a", &log))
                      .Add(std::make_shared<Tracer>("b", &log))
                      .Build();
  auto r = pipeline.Execute(Deadline::Infinite(), [&](const CallContext&) -> absl::StatusOr<int> {
    log.push_back("call");
    return 1;
  });
  CHECK(r.ok());
  CHECK(log == std::vector<std::string>{"a in", "b in", "call", "b out", "a out"});
  CHECK(pipeline.size() == 2);
}

TEST_CASE("an empty pipeline calls the function with the caller's context") {
  keel::ManualClock clock;
  auto pipeline = Pipeline<int>::Builder().Build();
  keel::CancellationSource source;
  const Deadline d = Deadline::After(1s, clock);
  auto r = pipeline.Execute(CallContext{.deadline = d, .cancellation = source.token()},
                            [&](const CallContext& ctx) -> absl::StatusOr<int> {
                              CHECK(ctx.deadline == d);
                              CHECK(ctx.attempt == 1);
                              source.Cancel();
                              CHECK(ctx.cancellation.cancelled());
                              return 3;
                            });
  CHECK(*r == 3);
}

TEST_CASE("pipeline retry outside timeout gives every attempt its own deadline") {
  keel::testing::RecordingClock clock;
  auto pipeline = Pipeline<int>::Builder()
                      .Add(ConstantRetry(clock, 3))
                      .Add(keel::Timeout::Create({.timeout = 100ms}, clock).value())
                      .Build();
  std::vector<keel::TimePoint> deadlines;
  std::vector<int> attempts;
  const keel::TimePoint start = clock.Now();
  auto r =
      pipeline.Execute(Deadline::Infinite(), [&](const CallContext& ctx) -> absl::StatusOr<int> {
        deadlines.push_back(ctx.deadline.time());
        attempts.push_back(ctx.attempt);
        if (ctx.attempt < 3) return absl::UnavailableError("down");
        return 9;
      });
  CHECK(*r == 9);
  CHECK(attempts == std::vector<int>{1, 2, 3});
  CHECK(deadlines == std::vector<keel::TimePoint>{start + 100ms, start + 110ms, start + 120ms});
}

TEST_CASE("pipeline policies pass the caller's criticality to every attempt") {
  keel::testing::RecordingClock clock;
  auto pipeline = Pipeline<int>::Builder()
                      .Add(ConstantRetry(clock, 2))
                      .Add(keel::Timeout::Create({.timeout = 100ms}, clock).value())
                      .Build();
  std::vector<keel::Criticality> seen;
  auto r = pipeline.Execute(CallContext{.criticality = keel::Criticality::kSheddable},
                            [&](const CallContext& ctx) -> absl::StatusOr<int> {
                              seen.push_back(ctx.criticality);
                              if (ctx.attempt < 2) return absl::UnavailableError("down");
                              return 1;
                            });
  CHECK(*r == 1);
  CHECK(seen == std::vector<keel::Criticality>{keel::Criticality::kSheddable,
                                               keel::Criticality::kSheddable});
  CHECK(std::string(keel::CriticalityName(keel::Criticality::kSheddablePlus)) == "sheddable_plus");
  CHECK(CallContext{}.criticality == keel::Criticality::kCritical);
}

TEST_CASE("pipeline fallback outermost answers the failure after retries are exhausted") {
  keel::testing::RecordingClock clock;
  std::string seen;
  auto fallback = keel::Fallback<int>::Create([&](const absl::Status& s) -> absl::StatusOr<int> {
                    seen = std::string(s.message());
                    return -1;
                  }).value();
  auto pipeline = Pipeline<int>::Builder().Add(fallback).Add(ConstantRetry(clock, 2)).Build();
  int calls = 0;
  auto r = pipeline.Execute(Deadline::Infinite(), [&](const CallContext&) -> absl::StatusOr<int> {
    ++calls;
    return absl::UnavailableError("down");
  });
  CHECK(*r == -1);
  CHECK(calls == 2);
  CHECK(seen.find("gave up after 2 attempts") != std::string::npos);
}

TEST_CASE("pipeline breaker outside retry records one outcome per logical call") {
  keel::testing::RecordingClock clock;
  auto breaker =
      keel::CircuitBreaker::Create(
          {.name = "db", .window_size = 2, .minimum_calls = 2, .wait_in_open = 1min}, clock)
          .value();
  auto pipeline = Pipeline<int>::Builder().Add(*breaker).Add(ConstantRetry(clock, 3)).Build();
  int calls = 0;
  auto down = [&](const CallContext&) -> absl::StatusOr<int> {
    ++calls;
    return absl::UnavailableError("down");
  };
  (void)pipeline.Execute(Deadline::Infinite(), down);
  CHECK(calls == 3);
  CHECK(breaker->Stats().buffered_calls == 1);
  (void)pipeline.Execute(Deadline::Infinite(), down);
  CHECK(breaker->state() == keel::CircuitBreaker::State::kOpen);
  // Open: the call is not made, the breaker's UNAVAILABLE comes back.
  calls = 0;
  auto r = pipeline.Execute(Deadline::Infinite(), down);
  CHECK(absl::IsUnavailable(r.status()));
  CHECK(calls == 0);
}

TEST_CASE("pipeline bulkhead rejects when full and frees its permit after the call") {
  keel::ManualClock clock;
  auto bulkhead =
      keel::SemaphoreBulkhead::Create({.name = "ai", .max_concurrent = 1}, clock).value();
  auto pipeline = Pipeline<int>::Builder().Add(*bulkhead).Build();
  auto r = pipeline.Execute(Deadline::Infinite(), [&](const CallContext&) -> absl::StatusOr<int> {
    CHECK(bulkhead->Stats().in_use == 1);
    // A nested call while the only permit is held is rejected without being made.
    bool inner_called = false;
    auto inner =
        pipeline.Execute(Deadline::Infinite(), [&](const CallContext&) -> absl::StatusOr<int> {
          inner_called = true;
          return 0;
        });
    CHECK(absl::IsResourceExhausted(inner.status()));
    CHECK_FALSE(inner_called);
    return 5;
  });
  CHECK(*r == 5);
  CHECK(bulkhead->Stats().in_use == 0);
}
