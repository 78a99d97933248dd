#include "keel/limit/gcra.h"

#include <catch2/catch.hpp>

using namespace std::chrono_literals;
using keel::limit::Decision;
using keel::limit::Gcra;
using keel::limit::kNever;

TEST_CASE("gcra derives interval, tolerance and limit as redis-cell does") {
  auto gcra = Gcra::Create({.count = 10, .period = 2s, .max_burst = 4}).value();
  CHECK(gcra.emission_interval() == 200ms);
  CHECK(gcra.Horizon() == 1s);
  CHECK(gcra.limit() == 5);
}

TEST_CASE("gcra reproduces redis-cell's reference test table") {
  // redis-cell's own test: limit 5 (max_burst 4) at 1 per second, steps at fixed times.
  keel::ManualClock clock;
  const keel::TimePoint start = clock.Now();
  auto gcra = Gcra::Create({.count = 1, .period = 1s, .max_burst = 4}, clock).value();
  struct Step {
    keel::Duration at;
    int64_t n;
    bool allowed;
    int64_t remaining;
    keel::Duration reset_after;
    keel::Duration retry_after;
  };
  const Step steps[] = {
      {0ms, 6, false, 5, 0s, kNever},  // never larger than the limit
      {0ms, 1, true, 4, 1s, 0s},        {0ms, 1, true, 3, 2s, 0s},
      {0ms, 1, true, 2, 3s, 0s},        {0ms, 1, true, 1, 4s, 0s},
      {0ms, 1, true, 0, 5s, 0s},        {0ms, 1, false, 0, 5s, 1s},
      {3000ms, 1, true, 2, 3000ms, 0s}, {3100ms, 1, true, 1, 3900ms, 0s},
      {4000ms, 1, true, 1, 4000ms, 0s}, {8000ms, 1, true, 4, 1000ms, 0s},
      {9500ms, 1, true, 4, 1000ms, 0s}, {9500ms, 0, true, 4, 1s, 0s},  // peek
      {9500ms, 2, true, 2, 3s, 0s},     {9500ms, 5, false, 2, 3s, 3s},
  };
  int index = 0;
  for (const Step& s : steps) {
    INFO("step " << index++);
    clock.Set(start + s.at);
    const Decision d = gcra.TryAcquire(s.n).value();
    CHECK(d == Decision{.allowed = s.allowed,
                        .limit = 5,
                        .remaining = s.remaining,
                        .reset_after = s.reset_after,
                        .retry_after = s.retry_after});
  }
}

TEST_CASE("gcra peeks change nothing") {
  keel::ManualClock clock;
  auto gcra = Gcra::Create({.count = 2, .period = 1s, .max_burst = 1}, clock).value();
  REQUIRE(gcra.TryAcquire().value().allowed);
  const Decision peek = gcra.TryAcquire(0).value();
  for (int i = 0; i < 5; ++i) CHECK(gcra.TryAcquire(0).value() == peek);
  CHECK(gcra.TryAcquire().value().allowed);
  CHECK_FALSE(gcra.TryAcquire().value().allowed);
}

TEST_CASE("gcra with no burst spaces requests by exactly the emission interval") {
  keel::ManualClock clock;
  auto gcra = Gcra::Create({.count = 4, .period = 1s}, clock).value();
  CHECK(gcra.TryAcquire().value().allowed);
  const Decision denied = gcra.TryAcquire().value();
  CHECK_FALSE(denied.allowed);
  CHECK(denied.retry_after == 250ms);
  clock.Advance(249ms);
  CHECK_FALSE(gcra.TryAcquire().value().allowed);
  clock.Advance(1ms);
  CHECK(gcra.TryAcquire().value().allowed);
}

TEST_CASE("gcra rejects invalid options and negative quantities naming the field") {
  auto no_count = Gcra::Create({.count = 0, .period = 1s});
  REQUIRE_FALSE(no_count.ok());
  CHECK(std::string(no_count.status().message()).find("gcra.count") != std::string::npos);
  auto zero_period = Gcra::Create({.count = 1, .period = 0s});
  REQUIRE_FALSE(zero_period.ok());
  CHECK(std::string(zero_period.status().message()).find("gcra.period") != std::string::npos);
  auto neg_burst = Gcra::Create({.count = 1, .period = 1s, .max_burst = -1});
  REQUIRE_FALSE(neg_burst.ok());
  CHECK(std::string(neg_burst.status().message()).find("gcra.max_burst") != std::string::npos);
  auto gcra = Gcra::Create({.count = 1, .period = 1s}).value();
  const auto neg = gcra.TryAcquire(-3);
  REQUIRE_FALSE(neg.ok());
  CHECK(neg.status().code() == absl::StatusCode::kInvalidArgument);
}
