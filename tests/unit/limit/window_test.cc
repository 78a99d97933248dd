#include <catch2/catch.hpp>

#include "keel/limit/fixed_window.h"
#include "keel/limit/sliding_window.h"

using namespace std::chrono_literals;
using keel::limit::Decision;
using keel::limit::FixedWindow;
using keel::limit::kNever;
using keel::limit::SlidingWindowCounter;
using keel::limit::SlidingWindowLog;

// ManualClock starts at 24h, a multiple of every window used here, so aligned windows start at
// the test's t = 0.

TEST_CASE("fixed window admits the limit per window and resets at the boundary") {
  keel::ManualClock clock;
  auto fw = FixedWindow::Create({.limit = 3, .window = 1s}, clock).value();
  for (int i = 0; i < 3; ++i) CHECK(fw.TryAcquire().value().allowed);
  clock.Advance(400ms);
  const Decision d = fw.TryAcquire().value();
  CHECK_FALSE(d.allowed);
  CHECK(d.remaining == 0);
  CHECK(d.retry_after == 600ms);
  CHECK(d.reset_after == 600ms);
  clock.Advance(599ms);
  CHECK_FALSE(fw.TryAcquire().value().allowed);
  clock.Advance(1ms);
  const Decision fresh = fw.TryAcquire().value();
  CHECK(fresh.allowed);
  CHECK(fresh.remaining == 2);
  CHECK(fresh.reset_after == 1s);
}

TEST_CASE("fixed window admits twice the limit across a window boundary") {
  // The documented weakness: `limit` at the end of one window, `limit` again right after the
  // boundary, so 2 * limit pass within 2ms.
  keel::ManualClock clock;
  auto fw = FixedWindow::Create({.limit = 5, .window = 1s}, clock).value();
  clock.Advance(999ms);
  int admitted = 0;
  for (int i = 0; i < 5; ++i) admitted += fw.TryAcquire().value().allowed;
  clock.Advance(1ms);
  for (int i = 0; i < 5; ++i) admitted += fw.TryAcquire().value().allowed;
  CHECK(admitted == 10);
  CHECK_FALSE(fw.TryAcquire().value().allowed);
}

TEST_CASE("fixed window starting at the first request runs from that request") {
  keel::ManualClock clock;
  auto fw =
      FixedWindow::Create(
          {.limit = 2, .window = 1s, .alignment = FixedWindow::Alignment::kFirstRequest}, clock)
          .value();
  clock.Advance(700ms);
  const Decision first = fw.TryAcquire().value();
  CHECK(first.reset_after == 1s);  // an aligned window would end in 300ms
  CHECK(fw.TryAcquire().value().allowed);
  clock.Advance(900ms);  // past the aligned boundary, still inside this key's window
  const Decision denied = fw.TryAcquire().value();
  CHECK_FALSE(denied.allowed);
  CHECK(denied.retry_after == 100ms);
  clock.Advance(100ms);
  CHECK(fw.TryAcquire().value().allowed);
}

TEST_CASE("fixed window peeks and oversized quantities change nothing") {
  keel::ManualClock clock;
  auto fw = FixedWindow::Create({.limit = 4, .window = 1s}, clock).value();
  CHECK(fw.TryAcquire(0).value().reset_after == 0s);
  const Decision big = fw.TryAcquire(5).value();
  CHECK_FALSE(big.allowed);
  CHECK(big.retry_after == kNever);
  CHECK(fw.TryAcquire(3).value().remaining == 1);
  CHECK(fw.TryAcquire(0).value().remaining == 1);
  CHECK_FALSE(fw.TryAcquire(2).value().allowed);
  CHECK(fw.TryAcquire(1).value().allowed);
}

TEST_CASE("sliding window log admits exactly the limit in any window") {
  keel::ManualClock clock;
  auto log = SlidingWindowLog::Create({.limit = 3, .window = 1s}, clock).value();
  CHECK(log.TryAcquire().value().allowed);  // t=0
  clock.Advance(500ms);
  CHECK(log.TryAcquire(2).value().allowed);  // t=500
  clock.Advance(499ms);
  const Decision denied = log.TryAcquire().value();  // t=999
  CHECK_FALSE(denied.allowed);
  CHECK(denied.retry_after == 1ms);    // the t=0 admission expires at t=1000
  CHECK(denied.reset_after == 501ms);  // the t=500 ones at t=1500
  // No boundary burst: at t=1000 only the first admission has expired.
  clock.Advance(1ms);
  CHECK(log.TryAcquire().value().allowed);
  CHECK_FALSE(log.TryAcquire().value().allowed);
  const Decision two = log.TryAcquire(2).value();
  CHECK_FALSE(two.allowed);
  CHECK(two.retry_after == 500ms);
}

TEST_CASE("sliding window log peeks and oversized quantities change nothing") {
  keel::ManualClock clock;
  auto log = SlidingWindowLog::Create({.limit = 2, .window = 1s}, clock).value();
  CHECK(log.TryAcquire(3).value().retry_after == kNever);
  CHECK(log.TryAcquire(0).value().remaining == 2);
  CHECK(log.TryAcquire(2).value().allowed);
  CHECK(log.TryAcquire(0).value().allowed);
  CHECK(log.TryAcquire(0).value().remaining == 0);
}

TEST_CASE("sliding window counter weighs the previous window by its remaining fraction") {
  // Cloudflare's example: limit 50/min, 42 in the previous minute, 17 in this one, 15s into it:
  // 42 * 45/60 + 17 = 48.5, so one more fits (49.5 <= 50) and the next does not.
  keel::ManualClock clock;
  auto counter = SlidingWindowCounter::Create({.limit = 50, .window = 60s}, clock).value();
  REQUIRE(counter.TryAcquire(42).value().allowed);
  clock.Advance(75s);
  REQUIRE(counter.TryAcquire(17).value().allowed);
  const Decision one = counter.TryAcquire().value();
  CHECK(one.allowed);
  CHECK(one.remaining == 0);       // floor(50 - 49.5)
  CHECK(one.reset_after == 105s);  // this window's count weighs until the next one ends
  const Decision denied = counter.TryAcquire().value();
  CHECK_FALSE(denied.allowed);
  // 42 * left/60s + 19 <= 50  <=>  left <= 44.285714285s, reached 0.714285715s later.
  CHECK(denied.retry_after == std::chrono::nanoseconds(714'285'715));
  clock.Advance(denied.retry_after - 1ns);
  CHECK_FALSE(counter.TryAcquire().value().allowed);
  clock.Advance(1ns);
  CHECK(counter.TryAcquire().value().allowed);
}

TEST_CASE("sliding window counter never admits more than the limit within one aligned window") {
  keel::ManualClock clock;
  auto counter = SlidingWindowCounter::Create({.limit = 10, .window = 1s}, clock).value();
  int admitted = 0;
  for (int i = 0; i < 100; ++i) {
    admitted += counter.TryAcquire().value().allowed;
    clock.Advance(9ms);
  }
  CHECK(admitted == 10);
}

TEST_CASE("sliding window counter retries in the next window when this one is full") {
  keel::ManualClock clock;
  auto counter = SlidingWindowCounter::Create({.limit = 4, .window = 1s}, clock).value();
  clock.Advance(500ms);
  REQUIRE(counter.TryAcquire(4).value().allowed);
  const Decision d = counter.TryAcquire().value();
  CHECK_FALSE(d.allowed);
  // Next window starts in 500ms with previous = 4: 4 * left/1s + 1 <= 4 <=> left <= 750ms,
  // i.e. 250ms into it.
  CHECK(d.retry_after == 750ms);
  clock.Advance(749ms);
  CHECK_FALSE(counter.TryAcquire().value().allowed);
  clock.Advance(1ms);
  CHECK(counter.TryAcquire().value().allowed);
}

TEST_CASE("sliding window counter peeks and oversized quantities change nothing") {
  keel::ManualClock clock;
  auto counter = SlidingWindowCounter::Create({.limit = 3, .window = 1s}, clock).value();
  CHECK(counter.TryAcquire(4).value().retry_after == kNever);
  CHECK(counter.TryAcquire(0).value().remaining == 3);
  CHECK(counter.TryAcquire(3).value().allowed);
  CHECK(counter.TryAcquire(0).value().allowed);
  CHECK_FALSE(counter.TryAcquire(1).value().allowed);
}

TEST_CASE("sliding window counter decisions carry the estimate they were made on") {
  // Cloudflare's example again: 42 in the previous minute, 15s into this one.
  keel::ManualClock clock;
  auto counter = SlidingWindowCounter::Create({.limit = 50, .window = 60s}, clock).value();
  CHECK(counter.TryAcquire(42).value().estimate == 0.0);  // nothing counted yet
  clock.Advance(75s);
  CHECK(counter.Check(0, clock.Now()).value().estimate == 31.5);  // 42 x 45/60
  CHECK(counter.TryAcquire(17).value().estimate == 31.5);         // before this request's 17
  const Decision one = counter.TryAcquire().value();
  CHECK(one.allowed);
  CHECK(one.estimate == 48.5);  // 48.5 + 1 <= 50
  const Decision denied = counter.TryAcquire().value();
  CHECK_FALSE(denied.allowed);
  CHECK(denied.estimate == 49.5);                          // 49.5 + 1 > 50
  CHECK(counter.TryAcquire(51).value().estimate == 49.5);  // never fits: still the figure
  // 16s into the next window the 18 admitted weigh 44/60: 13.2, which no double holds exactly.
  clock.Advance(61s);
  const Decision later = counter.TryAcquire(0).value();
  REQUIRE(later.estimate.has_value());
  CHECK(*later.estimate == Approx(13.2));
  CHECK(later.remaining == 36);
  // The shared state (Keyed) gives the same figures; the other algorithms give none.
  SlidingWindowCounter::State state;
  CHECK(counter.Apply(state, 5, clock.Now()).estimate == 0.0);
  CHECK(counter.Peek(state, 0, clock.Now()).estimate == 5.0);
  auto log = SlidingWindowLog::Create({.limit = 5, .window = 1s}, clock).value();
  CHECK_FALSE(log.TryAcquire().value().estimate.has_value());
  auto fw = FixedWindow::Create({.limit = 5, .window = 1s}, clock).value();
  CHECK_FALSE(fw.TryAcquire().value().estimate.has_value());
  CHECK_THAT(keel::limit::DebugString(denied), Catch::Contains(" estimate=49.5"));
}

TEST_CASE("window limiters reject invalid options naming the field") {
  auto fw = FixedWindow::Create({.limit = 0, .window = 1s});
  REQUIRE_FALSE(fw.ok());
  CHECK(std::string(fw.status().message()).find("fixed_window.limit") != std::string::npos);
  auto fw_window = FixedWindow::Create({.limit = 1, .window = 0s});
  REQUIRE_FALSE(fw_window.ok());
  CHECK(std::string(fw_window.status().message()).find("fixed_window.window") != std::string::npos);
  auto log = SlidingWindowLog::Create({.limit = 1, .window = -1s});
  REQUIRE_FALSE(log.ok());
  CHECK(std::string(log.status().message()) ==
        "sliding_window_log.window must be > 0 and under 35 years, got -1s");
  auto counter = SlidingWindowCounter::Create({.limit = 0, .window = 1s});
  REQUIRE_FALSE(counter.ok());
  CHECK(counter.status().code() == absl::StatusCode::kInvalidArgument);
  auto ok = SlidingWindowCounter::Create({.limit = 1, .window = 1s}).value();
  CHECK(ok.TryAcquire(-1).status().code() == absl::StatusCode::kInvalidArgument);
}
