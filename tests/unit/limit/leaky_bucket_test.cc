#include "keel/limit/leaky_bucket.h"

#include <catch2/catch.hpp>

using namespace std::chrono_literals;
using Admission = keel::limit::LeakyBucket::Admission;
using keel::limit::LeakyBucket;

TEST_CASE("leaky bucket spaces a burst at the steady rate and rejects beyond its capacity") {
  keel::ManualClock clock;
  auto shaper = LeakyBucket::Create({.rate = 10, .capacity = 3}, clock).value();
  CHECK(shaper.Admit() == Admission{.admitted = true, .delay = 0ms, .queued = 1});
  CHECK(shaper.Admit() == Admission{.admitted = true, .delay = 100ms, .queued = 2});
  CHECK(shaper.Admit() == Admission{.admitted = true, .delay = 200ms, .queued = 3});
  CHECK(shaper.Admit() == Admission{.admitted = false, .retry_after = 100ms, .queued = 3});
  clock.Advance(100ms);
  CHECK(shaper.Admit() == Admission{.admitted = true, .delay = 200ms, .queued = 3});
}

TEST_CASE("leaky bucket with capacity one admits only when the slot is free now") {
  keel::ManualClock clock;
  auto shaper = LeakyBucket::Create({.rate = 4, .capacity = 1}, clock).value();
  CHECK(shaper.Admit().admitted);
  const Admission no = shaper.Admit();
  CHECK_FALSE(no.admitted);
  CHECK(no.retry_after == 250ms);
  clock.Advance(250ms);
  CHECK(shaper.Admit().delay == 0ms);
}

TEST_CASE("leaky bucket output never exceeds its rate however bursty the input") {
  keel::ManualClock clock;
  auto shaper = LeakyBucket::Create({.rate = 100, .capacity = 50}, clock).value();
  const keel::TimePoint start = clock.Now();
  keel::TimePoint last = keel::TimePoint::min();
  int admitted = 0;
  for (int round = 0; round < 10; ++round) {
    for (int i = 0; i < 40; ++i) {
      const Admission a = shaper.Admit();
      if (!a.admitted) continue;
      ++admitted;
      const keel::TimePoint departs = clock.Now() + a.delay;
      if (last != keel::TimePoint::min()) CHECK(departs - last >= 10ms);
      last = departs;
    }
    clock.Advance(100ms);
  }
  // 1s of input: 100 slots of the first second plus the 50-deep queue at most.
  CHECK(admitted <= 150);
  CHECK(last - start < 1500ms);
}

TEST_CASE("leaky bucket rejects invalid options naming the field") {
  auto rate = LeakyBucket::Create({.rate = 0, .capacity = 1});
  REQUIRE_FALSE(rate.ok());
  CHECK(std::string(rate.status().message()).find("leaky_bucket.rate") != std::string::npos);
  auto cap = LeakyBucket::Create({.rate = 1, .capacity = 0});
  REQUIRE_FALSE(cap.ok());
  CHECK(std::string(cap.status().message()).find("leaky_bucket.capacity") != std::string::npos);
}
