// Documented details of the in-process limiters (docs/rate-limiting.md and the headers) that the
// per-algorithm tests do not pin down on their own.
#include <catch2/catch.hpp>
#include <string>

#include "keel/limit/fixed_window.h"
#include "keel/limit/gcra.h"
#include "keel/limit/keyed.h"
#include "keel/limit/sliding_window.h"
#include "keel/limit/token_bucket.h"

using namespace std::chrono_literals;
using keel::Duration;
using keel::limit::Decision;
using keel::limit::Keyed;

TEST_CASE("keyed penalty is not started by a request that can never fit") {
  keel::ManualClock clock;
  auto keyed = Keyed<keel::limit::TokenBucket>::Create({.block_for = 10min},
                                                       {{.rate = 1, .burst = 5}}, clock)
                   .value();
  const Decision never = keyed->TryAcquire("k", 6).value();  // above the burst: kNever
  CHECK_FALSE(never.allowed);
  CHECK(never.retry_after == keel::limit::kNever);
  CHECK(keyed->TryAcquire("k", 5).value().allowed);  // no block: the full burst is there
  CHECK(keyed->Stats().blocked_denials_total == 0);
}

TEST_CASE("keyed limiter keeps a blocked key through idle eviction until its block ends") {
  keel::ManualClock clock;
  auto keyed = Keyed<keel::limit::Gcra>::Create({.idle_ttl = 1s, .block_for = 1h, .shards = 1},
                                                {{.count = 1, .period = 1s}}, clock)
                   .value();
  REQUIRE(keyed->TryAcquire("attacker").value().allowed);
  REQUIRE_FALSE(keyed->TryAcquire("attacker").value().allowed);  // starts the block
  clock.Advance(10min);                                          // 600 idle_ttls later
  REQUIRE(keyed->TryAcquire("other").value().allowed);           // runs the idle sweep
  CHECK(keyed->Stats().keys == 2);                               // the block is remembered
  const Decision blocked = keyed->TryAcquire("attacker").value();
  CHECK_FALSE(blocked.allowed);
  CHECK(blocked.retry_after == 50min);
  clock.Advance(50min + 2s);
  REQUIRE(keyed->TryAcquire("other").value().allowed);  // sweeps again: the block is over
  CHECK(keyed->Stats().evicted_idle_total >= 1);
  CHECK(keyed->TryAcquire("attacker").value().allowed);
}

TEST_CASE("keyed combined decision takes the longest reset and, when several deny, retry") {
  keel::ManualClock clock;
  // 2 per second and 3 per minute (fixed windows aligned to the clock's epoch).
  auto keyed = Keyed<keel::limit::FixedWindow>::Create(
                   {}, {{.limit = 2, .window = 1s}, {.limit = 3, .window = 1min}}, clock)
                   .value();
  const Decision first = keyed->TryAcquire("k").value();
  CHECK(first.allowed);
  CHECK(first.remaining == 1);  // the per-second limit is the tighter one
  CHECK(first.limit == 2);
  CHECK(first.reset_after == 1min);  // the longest reset of the two
  REQUIRE(keyed->TryAcquire("k").value().allowed);
  clock.Advance(1s);
  REQUIRE(keyed->TryAcquire("k").value().allowed);  // the minute's third
  const Decision both = keyed->TryAcquire("k").value();
  // The minute is full (its window ends at 60 s) and this second has room: the minute decides.
  CHECK_FALSE(both.allowed);
  CHECK(both.retry_after == 59s);
  CHECK(both.remaining == 0);
  REQUIRE(keyed->TryAcquire("k", 0).ok());
  // Now make both deny: a quantity of 2 is over what this second has left (1) and the minute.
  const Decision two = keyed->TryAcquire("k", 2).value();
  CHECK_FALSE(two.allowed);
  CHECK(two.retry_after == 59s);  // the longer of 1 s and 59 s
}

TEST_CASE("check is a dry run of try-acquire for every rate limiter") {
  keel::ManualClock clock;
  auto gcra = keel::limit::Gcra::Create({.count = 2, .period = 1s, .max_burst = 1}, clock).value();
  auto log = keel::limit::SlidingWindowLog::Create({.limit = 2, .window = 1s}, clock).value();
  auto counter =
      keel::limit::SlidingWindowCounter::Create({.limit = 2, .window = 1s}, clock).value();
  for (int i = 0; i < 5; ++i) {
    CHECK(gcra.Check(1, clock.Now()).value().allowed);
    CHECK(log.Check(1, clock.Now()).value().allowed);
    CHECK(counter.Check(1, clock.Now()).value().allowed);
  }
  // Five checks consumed nothing: the full limit of 2 is still there for each.
  for (int i = 0; i < 2; ++i) {
    CHECK(gcra.TryAcquire().value().allowed);
    CHECK(log.TryAcquire().value().allowed);
    CHECK(counter.TryAcquire().value().allowed);
  }
  CHECK_FALSE(gcra.Check(1, clock.Now()).value().allowed);
  CHECK_FALSE(log.Check(1, clock.Now()).value().allowed);
  CHECK_FALSE(counter.Check(1, clock.Now()).value().allowed);
}

TEST_CASE("sliding window counter stays exact where limit times window overflows 64 bits") {
  // limit 1e7 per hour: limit * window in nanoseconds is 3.6e22, far past int64.
  keel::ManualClock clock;
  auto counter = keel::limit::SlidingWindowCounter::Create(
                     {.limit = 10'000'000, .window = std::chrono::hours(1)}, clock)
                     .value();
  CHECK(counter.TryAcquire(10'000'000).value().allowed);
  const Decision full = counter.TryAcquire(1).value();
  CHECK_FALSE(full.allowed);
  CHECK(full.remaining == 0);
  clock.Advance(std::chrono::hours(1) + std::chrono::minutes(30));  // halfway into the next hour
  // The previous hour weighs half: 5e6 are left, exactly.
  const Decision half = counter.TryAcquire(0).value();
  CHECK(half.remaining == 5'000'000);
  CHECK(counter.TryAcquire(5'000'000).value().allowed);
  CHECK_FALSE(counter.TryAcquire(1).value().allowed);
}

TEST_CASE("sliding window counter's horizon is two windows, so Keyed never forgets a live count") {
  auto counter = keel::limit::SlidingWindowCounter::Create({.limit = 5, .window = 1s}).value();
  CHECK(counter.Horizon() == 2s);
  auto keyed =
      Keyed<keel::limit::SlidingWindowCounter>::Create({}, {{.limit = 5, .window = 1s}}).value();
  CHECK(keyed->idle_ttl() == 2s);
}

TEST_CASE("token bucket rounds its interval to the nearest nanosecond") {
  // 1 s / 6 = 166'666'666.67 ns: rounded to ...667 (truncation would give ...666).
  auto bucket = keel::limit::TokenBucket::Create({.rate = 6}).value();
  CHECK(bucket.interval() == Duration(166'666'667));
  // GCRA truncates, as redis-cell does.
  auto gcra = keel::limit::Gcra::Create({.count = 6, .period = 1s}).value();
  CHECK(gcra.emission_interval() == Duration(166'666'666));
}

TEST_CASE("token bucket rejects a rate above one token per nanosecond, naming the field") {
  auto fast = keel::limit::TokenBucket::Create({.rate = 2e9});
  REQUIRE_FALSE(fast.ok());
  CHECK_THAT(std::string(fast.status().message()), Catch::Contains("token_bucket.rate"));
  CHECK(keel::limit::TokenBucket::Create({.rate = 1e9}).ok());
}

TEST_CASE("keyed options default as documented") {
  const keel::limit::KeyedOptions options;
  CHECK(options.name == "keyed");
  CHECK(options.max_keys == 100'000);
  CHECK(options.shards == 16);
  CHECK_FALSE(options.idle_ttl.has_value());
  CHECK_FALSE(options.block_for.has_value());
  CHECK(keel::limit::TokenBucket::Options{}.burst == 1);
  CHECK(keel::limit::Gcra::Options{}.max_burst == 0);
}
