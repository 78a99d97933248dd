// redis::ConcurrencyLimiter against a real Redis: the cap, release, lease reclaim, renewal and
// fail modes.
#include "keel/redis/concurrency_limiter.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "integration/redis/test_server.h"
#include "integration/redis_limits/helpers.h"

using keel::Deadline;
using keel::redis::ConcurrencyLimiter;
using keel::redis::FailMode;
using namespace std::chrono_literals;

TEST_CASE("redis concurrency limiter holds at most max permits per key and frees on release",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  auto limiter =
      ConcurrencyLimiter::Create({.name = keel::test::UniqueName("cc"), .max = 3}, *client).value();
  std::vector<ConcurrencyLimiter::Permit> held;
  for (int i = 0; i < 3; ++i) {
    auto p = limiter->TryAcquire(Deadline::After(1s), "u");
    REQUIRE(p.ok());
    REQUIRE(p->has_value());
    held.push_back(std::move(**p));
  }
  auto full = limiter->TryAcquire(Deadline::After(1s), "u");
  REQUIRE(full.ok());
  CHECK_FALSE(full->has_value());
  CHECK(limiter->TryAcquire(Deadline::After(1s), "other")->has_value());  // keys independent
  const keel::redis::ConcurrencyLimiterStats stats = limiter->Stats();
  CHECK(stats.acquired_total == 4);
  CHECK(stats.rejected_total == 1);
  CHECK(stats.fail_open_total == 0);
  // The set of holders expires with the lease, so idle keys vanish.
  const auto ttl = client->Command(Deadline::After(1s), "PTTL", limiter->RedisKey("u"));
  CHECK(ttl->integer() > 59'000);
  CHECK(ttl->integer() <= 60'000);
  held[1].Release();
  CHECK_FALSE(held[1].held());
  auto again = limiter->TryAcquire(Deadline::After(1s), "u");
  REQUIRE(again.ok());
  CHECK(again->has_value());
  held.pop_back();  // destructor releases
  CHECK(limiter->TryAcquire(Deadline::After(1s), "u")->has_value());
}

TEST_CASE("redis concurrency limiter reclaims permits whose lease ran out (a dead holder)",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  auto limiter = ConcurrencyLimiter::Create(
                     {.name = keel::test::UniqueName("lease"), .max = 2, .lease = 10s}, *client)
                     .value();
  const auto t0 = keel::test::kTestEpoch;
  auto a = limiter->TryAcquireAtForTesting(Deadline::Infinite(), "u", t0).value();
  auto b = limiter->TryAcquireAtForTesting(Deadline::Infinite(), "u", t0 + 1s).value();
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  CHECK_FALSE(limiter->TryAcquireAtForTesting(Deadline::Infinite(), "u", t0 + 9999ms)->has_value());
  // At t0 + 10 s the first holder's lease is over: its slot goes to a new caller, not the second.
  auto c = limiter->TryAcquireAtForTesting(Deadline::Infinite(), "u", t0 + 10s).value();
  CHECK(c.has_value());
  CHECK_FALSE(limiter->TryAcquireAtForTesting(Deadline::Infinite(), "u", t0 + 10s)->has_value());
  auto score = client->Command(Deadline::After(1s), "ZSCORE", limiter->RedisKey("u"), a->id());
  CHECK(score->is_nil());
}

TEST_CASE("redis concurrency permit renewal extends the lease and reports a lost one",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  auto limiter = ConcurrencyLimiter::Create(
                     {.name = keel::test::UniqueName("renew"), .max = 1, .lease = 300ms}, *client)
                     .value();
  auto p = limiter->TryAcquire(Deadline::After(1s), "u").value();
  REQUIRE(p.has_value());
  CHECK(p->Renew(Deadline::After(1s)).ok());
  // Let the lease run out (real server time), then the slot is reclaimed by the next acquire.
  std::this_thread::sleep_for(350ms);
  CHECK(limiter->TryAcquire(Deadline::After(1s), "u")->has_value());
  CHECK(p->Renew(Deadline::After(1s)).code() == absl::StatusCode::kAborted);
  p->Release();
  CHECK(p->Renew().code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("redis concurrency limiter rejects bad options and keys", "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  auto bad = ConcurrencyLimiter::Create({.name = "x", .max = 0}, *client);
  CHECK(std::string(bad.status().message()) ==
        "redis concurrency limiter \"x\": max must be >= 1, got 0");
  bad = ConcurrencyLimiter::Create({.name = "x", .max = 1, .lease = 0s}, *client);
  CHECK(std::string(bad.status().message()) ==
        "redis concurrency limiter \"x\": lease must be in [1ms, 365 days], got 0");
  auto ok = ConcurrencyLimiter::Create({.name = "x", .max = 1}, *client).value();
  CHECK(ok->TryAcquire(Deadline::Infinite(), std::string(1025, 'k')).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("redis concurrency limiter fails open or closed when Redis is down", "[redis_limits]") {
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  auto open = ConcurrencyLimiter::Create({.name = "o", .max = 1}, *client).value();
  auto closed =
      ConcurrencyLimiter::Create({.name = "c", .max = 1, .fail_mode = FailMode::kClosed}, *client)
          .value();
  server.Kill();
  auto p = open->TryAcquire(Deadline::After(1s), "u");
  REQUIRE(p.ok());
  REQUIRE(p->has_value());
  CHECK((*p)->id().empty());
  CHECK(open->Stats().fail_open_total == 1);
  CHECK(closed->TryAcquire(Deadline::After(1s), "u").status().code() ==
        absl::StatusCode::kUnavailable);
  CHECK(closed->Stats().fail_closed_total == 1);
  CHECK(closed->Stats().fail_open_total == 0);
}
