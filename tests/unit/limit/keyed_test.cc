#include "keel/limit/keyed.h"

#include <catch2/catch.hpp>
#include <string>

#include "keel/limit/fixed_window.h"
#include "keel/limit/gcra.h"
#include "keel/limit/sliding_window.h"
#include "keel/limit/token_bucket.h"

using namespace std::chrono_literals;
using keel::limit::Decision;
using keel::limit::FixedWindow;
using keel::limit::Gcra;
using keel::limit::Keyed;
using keel::limit::SlidingWindowLog;
using keel::limit::TokenBucket;

TEST_CASE("keyed limiter keeps an independent limit per key") {
  keel::ManualClock clock;
  auto keyed = Keyed<TokenBucket>::Create({}, {{.rate = 1, .burst = 2}}, clock).value();
  CHECK(keyed->TryAcquire("alice").value().allowed);
  CHECK(keyed->TryAcquire("alice").value().allowed);
  CHECK_FALSE(keyed->TryAcquire("alice").value().allowed);
  CHECK(keyed->TryAcquire("bob").value().allowed);
  CHECK(keyed->Stats().keys == 2);
}

TEST_CASE("keyed limiter with several limits consumes from all or none") {
  keel::ManualClock clock;
  // 3 per second and 5 per 10 seconds.
  auto keyed = Keyed<FixedWindow>::Create(
                   {}, {{.limit = 3, .window = 1s}, {.limit = 5, .window = 10s}}, clock)
                   .value();
  for (int i = 0; i < 3; ++i) CHECK(keyed->TryAcquire("k").value().allowed);
  const Decision per_second = keyed->TryAcquire("k").value();
  CHECK_FALSE(per_second.allowed);
  CHECK(per_second.retry_after == 1s);
  clock.Advance(1s);
  // The denial above consumed nothing from the 10-second limit: 2 of its 5 remain.
  const Decision two = keyed->TryAcquire("k", 2).value();
  CHECK(two.allowed);
  CHECK(two.remaining == 0);  // the binding limit is now the 10-second one (5 - 5)
  CHECK(two.limit == 5);
  const Decision denied = keyed->TryAcquire("k").value();
  CHECK_FALSE(denied.allowed);
  CHECK(denied.retry_after == 9s);
  // A request the per-second limit would admit but the 10-second one denies consumes nothing
  // from the per-second limit either.
  clock.Advance(9s);
  for (int i = 0; i < 3; ++i) CHECK(keyed->TryAcquire("k").value().allowed);
}

TEST_CASE("keyed limiter blocks a key for block_for after a denial without counting") {
  keel::ManualClock clock;
  auto keyed =
      Keyed<SlidingWindowLog>::Create({.block_for = 15min}, {{.limit = 3, .window = 1min}}, clock)
          .value();
  for (int i = 0; i < 3; ++i) REQUIRE(keyed->TryAcquire("login:alice").value().allowed);
  const Decision tripped = keyed->TryAcquire("login:alice").value();
  CHECK_FALSE(tripped.allowed);
  CHECK(tripped.retry_after == 15min);
  clock.Advance(1min);  // the window has emptied, but the block holds
  const Decision blocked = keyed->TryAcquire("login:alice").value();
  CHECK_FALSE(blocked.allowed);
  CHECK(blocked.retry_after == 14min);
  CHECK(keyed->Stats().blocked_denials_total == 1);
  clock.Advance(14min);
  // The block ended and the attempts during it were not counted: a full window is available.
  for (int i = 0; i < 3; ++i) CHECK(keyed->TryAcquire("login:alice").value().allowed);
  CHECK(keyed->TryAcquire("login:bob").value().allowed);
}

TEST_CASE("keyed limiter evicts keys idle for idle_ttl and counts them") {
  keel::ManualClock clock;
  auto keyed =
      Keyed<Gcra>::Create({.idle_ttl = 10s, .shards = 1}, {{.count = 1, .period = 1s}}, clock)
          .value();
  REQUIRE(keyed->TryAcquire("a").value().allowed);
  clock.Advance(5s);
  REQUIRE(keyed->TryAcquire("b").value().allowed);
  clock.Advance(5s);
  REQUIRE(keyed->TryAcquire("c").value().allowed);  // "a" is 10s idle: dropped
  CHECK(keyed->Stats().keys == 2);
  CHECK(keyed->Stats().evicted_idle_total == 1);
}

TEST_CASE("keyed limiter idle_ttl defaults to the longest limit's horizon") {
  auto keyed = Keyed<Gcra>::Create({}, {{.count = 10, .period = 1s, .max_burst = 9},
                                        {.count = 100, .period = 1min, .max_burst = 99}})
                   .value();
  CHECK(keyed->idle_ttl() == 1min);
}

TEST_CASE("keyed limiter holds at most max_keys under a flood of distinct keys") {
  keel::ManualClock clock;
  auto keyed =
      Keyed<TokenBucket>::Create({.max_keys = 64, .shards = 4}, {{.rate = 1, .burst = 1}}, clock)
          .value();
  for (int i = 0; i < 10'000; ++i) {
    REQUIRE(keyed->TryAcquire("ip-" + std::to_string(i)).value().allowed);
  }
  const keel::limit::KeyedStats stats = keyed->Stats();
  CHECK(stats.keys <= 64);
  CHECK(stats.keys + stats.evicted_capacity_total == 10'000);
}

TEST_CASE("keyed limiter evicts the least recently used key at the cap") {
  keel::ManualClock clock;
  auto keyed =
      Keyed<TokenBucket>::Create({.max_keys = 2, .shards = 1}, {{.rate = 1, .burst = 1}}, clock)
          .value();
  REQUIRE(keyed->TryAcquire("a").value().allowed);
  clock.Advance(1ms);
  REQUIRE(keyed->TryAcquire("b").value().allowed);
  clock.Advance(1ms);
  REQUIRE_FALSE(keyed->TryAcquire("a").value().allowed);  // "a" is now the most recent
  clock.Advance(1ms);
  REQUIRE(keyed->TryAcquire("c").value().allowed);  // evicts "b"
  clock.Advance(1ms);
  CHECK_FALSE(keyed->TryAcquire("a").value().allowed);  // "a" kept its state
  CHECK(keyed->TryAcquire("b").value().allowed);        // "b" starts fresh
  CHECK(keyed->Stats().evicted_capacity_total == 2);
}

TEST_CASE("keyed limiter rejects long keys, negative quantities and bad options") {
  auto keyed = Keyed<TokenBucket>::Create({.name = "per-ip"}, {{.rate = 1, .burst = 1}}).value();
  const auto long_key = keyed->TryAcquire(std::string(1025, 'x'));
  REQUIRE_FALSE(long_key.ok());
  CHECK(long_key.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(long_key.status().message()).find("per-ip") != std::string::npos);
  CHECK(keyed->TryAcquire(std::string(1024, 'x')).ok());
  CHECK(keyed->TryAcquire("k", -1).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_FALSE(Keyed<TokenBucket>::Create({}, {}).ok());
  auto bad_limit = Keyed<TokenBucket>::Create({}, {{.rate = 0, .burst = 1}});
  REQUIRE_FALSE(bad_limit.ok());
  CHECK(std::string(bad_limit.status().message()).find("token_bucket.rate") != std::string::npos);
  CHECK_FALSE(Keyed<TokenBucket>::Create({.max_keys = 4, .shards = 8}, {{.rate = 1}}).ok());
  CHECK_FALSE(Keyed<TokenBucket>::Create({.block_for = 0s}, {{.rate = 1}}).ok());
  auto forever = Keyed<TokenBucket>::Create({.block_for = keel::Duration::max()}, {{.rate = 1}});
  REQUIRE_FALSE(forever.ok());
  CHECK(std::string(forever.status().message()) ==
        "keyed rate limiter \"keyed\": block_for must be in (0, 50 years], got inf");
  CHECK_FALSE(Keyed<TokenBucket>::Create({.idle_ttl = -1s}, {{.rate = 1}}).ok());
}

TEST_CASE("keyed limiter counts its decisions and exports them as metrics") {
  keel::ManualClock clock;
  keel::MetricsRegistry metrics;
  auto keyed = Keyed<TokenBucket>::Create({.name = "login", .block_for = 1min},
                                          {{.rate = 1, .burst = 2}}, clock, &metrics)
                   .value();
  CHECK(keyed->TryAcquire("alice").value().allowed);
  CHECK(keyed->TryAcquire("alice").value().allowed);
  CHECK_FALSE(keyed->TryAcquire("alice").value().allowed);  // denied, starts the block
  CHECK_FALSE(keyed->TryAcquire("alice").value().allowed);  // blocked
  CHECK(keyed->TryAcquire("bob").value().allowed);
  const keel::limit::KeyedStats stats = keyed->Stats();
  CHECK(stats.allowed_total == 3);
  CHECK(stats.denied_total == 1);
  CHECK(stats.blocked_denials_total == 1);
  const std::string text = metrics.RenderPrometheus();
  CHECK_THAT(text, Catch::Contains("keel_rate_limit_keys{name=\"login\"} 2\n"));
  CHECK_THAT(text, Catch::Contains("keel_rate_limit_decisions_total{backend=\"local\",decision="
                                   "\"allowed\",name=\"login\"} 3\n"));
  CHECK_THAT(text, Catch::Contains("keel_rate_limit_decisions_total{backend=\"local\",decision="
                                   "\"denied\",name=\"login\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("keel_rate_limit_decisions_total{backend=\"local\",decision="
                                   "\"blocked\",name=\"login\"} 1\n"));
  CHECK_THAT(
      text, Catch::Contains("keel_rate_limit_evictions_total{name=\"login\",reason=\"idle\"} 0\n"));
  // A second limiter under the same name would export the same series: refused, naming it.
  auto twin = Keyed<TokenBucket>::Create({.name = "login"}, {{.rate = 1}}, clock, &metrics);
  CHECK(twin.status().code() == absl::StatusCode::kAlreadyExists);
}

TEST_CASE("keyed limiter unregisters its metrics when destroyed") {
  keel::MetricsRegistry metrics;
  {
    auto keyed = Keyed<Gcra>::Create({.name = "api"}, {{.count = 10, .period = 1s}},
                                     keel::SteadyClock(), &metrics)
                     .value();
    CHECK_THAT(metrics.RenderPrometheus(), Catch::Contains("keel_rate_limit_keys{name=\"api\"}"));
  }
  CHECK_THAT(metrics.RenderPrometheus(), !Catch::Contains("keel_rate_limit_keys{name=\"api\"}"));
}
