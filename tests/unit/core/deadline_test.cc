#include "keel/deadline.h"

#include <catch2/catch.hpp>

using namespace std::chrono_literals;

TEST_CASE("deadline after a duration expires exactly when the clock reaches it") {
  keel::ManualClock clock;
  const keel::Deadline d = keel::Deadline::After(100ms, clock);
  CHECK_FALSE(d.Expired());
  CHECK(d.Remaining() == 100ms);
  clock.Advance(99ms);
  CHECK_FALSE(d.Expired());
  CHECK(d.Remaining() == 1ms);
  clock.Advance(1ms);
  CHECK(d.Expired());
  CHECK(d.Remaining() == 0ms);
  clock.Advance(1h);
  CHECK(d.Remaining() == 0ms);  // never negative
}

TEST_CASE("infinite deadline never expires and has maximal remaining time") {
  keel::ManualClock clock;
  const keel::Deadline d = keel::Deadline::Infinite();
  CHECK(d.IsInfinite());
  CHECK_FALSE(d.Expired());
  CHECK(d.Remaining() == keel::Duration::max());
}

TEST_CASE("deadline after a huge duration saturates to infinite instead of overflowing") {
  keel::ManualClock clock;
  CHECK(keel::Deadline::After(keel::Duration::max(), clock).IsInfinite());
  CHECK(keel::Deadline::After(std::chrono::hours::max(), clock).IsInfinite());
  CHECK(keel::Deadline::After(std::chrono::duration<double>(1e300), clock).IsInfinite());
  CHECK_FALSE(keel::Deadline::After(std::chrono::hours(24 * 365), clock).IsInfinite());
}

TEST_CASE("deadline after zero or a negative duration is already expired") {
  keel::ManualClock clock;
  CHECK(keel::Deadline::After(0s, clock).Expired());
  CHECK(keel::Deadline::After(-5s, clock).Expired());
  CHECK(keel::Deadline::After(keel::Duration::min(), clock).Expired());
  CHECK(keel::Deadline::After(-5s, clock).time() == clock.Now());
}

TEST_CASE("deadline at a time point keeps that time point") {
  keel::ManualClock clock;
  const keel::TimePoint t = clock.Now() + 3s;
  const keel::Deadline d = keel::Deadline::At(t, clock);
  CHECK(d.time() == t);
  CHECK(d.Remaining() == 3s);
}

TEST_CASE("deadline min picks the earlier deadline and treats infinite as latest") {
  keel::ManualClock clock;
  const keel::Deadline a = keel::Deadline::After(1s, clock);
  const keel::Deadline b = keel::Deadline::After(2s, clock);
  CHECK(keel::Deadline::Min(a, b) == a);
  CHECK(keel::Deadline::Min(b, a) == a);
  CHECK(keel::Deadline::Min(keel::Deadline::Infinite(), b) == b);
  CHECK(keel::Deadline::Min(b, keel::Deadline::Infinite()) == b);
  CHECK(keel::Deadline::Min(keel::Deadline::Infinite(), keel::Deadline::Infinite()).IsInfinite());
  CHECK(a < b);
}

TEST_CASE("deadline measures remaining time on its own clock") {
  keel::ManualClock clock;
  const keel::Deadline d = keel::Deadline::After(1s, clock);
  CHECK(&d.clock() == &clock);
  const keel::Deadline real = keel::Deadline::After(1h);
  CHECK(&real.clock() == &keel::SteadyClock());
  CHECK(real.Remaining() > 59min);
}
