// redis::RateLimiter's verbs against a real Redis, checked against the in-process limiters:
// TryAcquire consumes and Check is a dry run; the same key rules; a limit listed twice counts
// once.
#include <catch2/catch.hpp>
#include <chrono>
#include <string>

#include "integration/redis_limits/helpers.h"
#include "keel/limit/gcra.h"
#include "keel/limit/keyed.h"
#include "keel/limit/token_bucket.h"
#include "keel/redis/rate_limiter.h"
#include "keel/resilience/pipeline.h"
#include "keel/status.h"

using keel::Deadline;
using keel::limit::Decision;
using keel::redis::RateLimiter;
using namespace std::chrono_literals;

namespace {

const keel::limit::Gcra::Options kFivePerMinute = {.count = 5, .period = 1min, .max_burst = 4};

}  // namespace

TEST_CASE("redis Check is a dry run: it decides as TryAcquire would and consumes nothing",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  // The generated one-limit GCRA script and the general script with a block both honour it.
  auto block = GENERATE(false, true);
  RateLimiter::Options options = {.name = keel::test::UniqueName("dry-run"),
                                  .algorithm = kFivePerMinute};
  if (block) options.block_for = 10min;
  auto limiter = RateLimiter::Create(options, *client).value();
  for (int i = 0; i < 20; ++i) {
    const Decision d = limiter->Check(Deadline::After(1s), "k", 1).value();
    REQUIRE(d.allowed);
    REQUIRE(d.remaining == 4);
  }
  CHECK(limiter->Stats().allowed_total == 0);
  for (int i = 0; i < 5; ++i) REQUIRE(limiter->TryAcquire(Deadline::After(1s), "k", 1)->allowed);
  // Full: the dry run says so (with the block TryAcquire would start), but starts no block.
  const Decision predicted = limiter->Check(Deadline::After(1s), "k", 1).value();
  CHECK_FALSE(predicted.allowed);
  CHECK(predicted.retry_after >= (block ? 10min : 11s));
  CHECK(limiter->Check(Deadline::After(1s), "k", 0)->allowed);
  CHECK(limiter->Stats().denied_total == 0);
  auto exists = client->Command(Deadline::After(1s), "EXISTS", limiter->RedisKeys("k").back());
  REQUIRE(exists.ok());
  // The last key is the block's when there is one: still absent after the dry run.
  CHECK(exists->integer() == (block ? 0 : 1));
}

TEST_CASE("redis and in-process limiters refuse an empty key alike", "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  auto redis = RateLimiter::Create(
                   {.name = keel::test::UniqueName("empty"), .algorithm = kFivePerMinute}, *client)
                   .value();
  auto local = keel::limit::Keyed<keel::limit::Gcra>::Create({}, {kFivePerMinute}).value();
  CHECK(redis->TryAcquire(Deadline::After(1s), "", 1).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(redis->Check(Deadline::After(1s), "", 1).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(local->TryAcquire("", 1).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(local->Check("", 1).status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("redis more_limits entry equal to the main limit counts once, as in-process",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  const keel::limit::TokenBucket::Options bucket = {.rate = 1, .burst = 4};
  auto redis =
      RateLimiter::Create(
          {.name = keel::test::UniqueName("twice"), .algorithm = bucket, .more_limits = {bucket}},
          *client)
          .value();
  keel::ManualClock clock;
  auto local =
      keel::limit::Keyed<keel::limit::TokenBucket>::Create({}, {bucket, bucket}, clock).value();
  const auto t0 = keel::test::kTestEpoch;
  for (int i = 0; i < 5; ++i) {
    const Decision r = redis->TryAcquireAtForTesting(Deadline::After(1s), "k", 1, t0).value();
    const Decision l = local->TryAcquire("k", 1).value();
    INFO("request " << i << ": redis " << r << ", local " << l);
    CHECK(r.allowed == (i < 4));
    CHECK(r.allowed == l.allowed);
    CHECK(r.remaining == l.remaining);
  }
  // One key for the one limit: the plan's layout without more_limits.
  CHECK(redis->RedisKeys("k").size() == 1);
}

TEST_CASE("redis blocked-key cache at its cap drops ended entries soonest first",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  keel::ManualClock clock;
  auto limiter =
      RateLimiter::Create({.name = keel::test::UniqueName("cache-cap"),
                           .algorithm = keel::limit::Gcra::Options{.count = 1, .period = 1h},
                           .fail_mode = keel::redis::FailMode::kClosed,
                           .blocked_cache_size = 2},
                          *client, clock)
          .value();
  const auto deny = [&](const char* key) {
    REQUIRE(limiter->TryAcquire(Deadline::After(1s), key, 1)->allowed);
    REQUIRE_FALSE(limiter->TryAcquire(Deadline::After(1s), key, 1)->allowed);
  };
  deny("a");  // remembered until about 1h
  clock.Advance(30min);
  deny("b");             // until about 1h30m
  clock.Advance(31min);  // "a" has ended in the cache's clock, "b" runs
  deny("c");             // the cache is full: "a" makes room
  const uint64_t hits = limiter->Stats().blocked_cache_hits_total;
  CHECK_FALSE(limiter->TryAcquire(Deadline::After(1s), "b", 1)->allowed);
  CHECK_FALSE(limiter->TryAcquire(Deadline::After(1s), "c", 1)->allowed);
  CHECK(limiter->Stats().blocked_cache_hits_total == hits + 2);
  // Full of running entries: a new denial is answered by Redis and not remembered.
  deny("d");
  CHECK_FALSE(limiter->TryAcquire(Deadline::After(1s), "d", 1)->allowed);
  CHECK(limiter->Stats().blocked_cache_hits_total == hits + 2);
}

TEST_CASE("redis rate limiter as a pipeline stage rejects with RESOURCE_EXHAUSTED and retry-after",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  auto limiter =
      RateLimiter::Create({.name = keel::test::UniqueName("stage"), .algorithm = kFivePerMinute},
                          *client)
          .value();
  auto pipeline = keel::Pipeline<int>::Builder()
                      .AddRateLimiter(*limiter, {.name = "users-api", .key = "users-api"})
                      .Build();
  const auto call = [](const keel::CallContext&) -> absl::StatusOr<int> { return 1; };
  for (int i = 0; i < 5; ++i) REQUIRE(pipeline.Execute(Deadline::After(1s), call).ok());
  const absl::StatusOr<int> denied = pipeline.Execute(Deadline::After(1s), call);
  REQUIRE(denied.status().code() == absl::StatusCode::kResourceExhausted);
  REQUIRE(keel::RetryAfter(denied.status()).has_value());
  CHECK(*keel::RetryAfter(denied.status()) > 11s);
  CHECK(*keel::RetryAfter(denied.status()) <= 12s);
}
