// Several limits on one key and penalty blocks (RateLimiter::Options::more_limits, block_for)
// against keel::limit::Keyed with the same limits and block_for, decision by decision.
//
// As in scenario_test.cc, every check passes the time explicitly (TryAcquireAtForTesting), so both
// implementations see the same instants; the Redis limiter's durations are the in-process ones
// rounded up to the microsecond (the documented difference; every other field must be equal).
#include <catch2/catch.hpp>
#include <optional>
#include <random>
#include <sstream>

#include "integration/redis_limits/helpers.h"
#include "keel/limit/keyed.h"
#include "keel/redis/rate_limiter.h"

using keel::Deadline;
using keel::Duration;
using keel::limit::Decision;
using keel::limit::FixedWindow;
using keel::limit::Gcra;
using keel::limit::Keyed;
using keel::limit::SlidingWindowCounter;
using keel::limit::SlidingWindowLog;
using keel::limit::SlidingWindowOptions;
using keel::limit::TokenBucket;
using keel::redis::RateLimiter;
using keel::test::AtMicrosecondResolution;
using namespace std::chrono_literals;

namespace {

struct Step {
  Duration at;
  std::string key;
  int64_t quantity;
};

// Bursts (several calls at one instant) separated by gaps of 0 to 250 ms, on two keys, with
// peeks and quantities above the limits now and then.
std::vector<Step> RandomTraffic(uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<Step> steps;
  Duration at = 0ms;
  for (int i = 0; i < 300; ++i) {
    if (rng() % 3 == 0) at += std::chrono::milliseconds(rng() % 251);
    const std::string key = rng() % 4 == 0 ? "b" : "a";
    const int64_t n = rng() % 10 == 0 ? static_cast<int64_t>(rng() % 25) : (rng() % 8 == 0 ? 0 : 1);
    steps.push_back({at, key, n});
  }
  return steps;
}

RateLimiter::Algorithm ToAlgorithm(const Gcra::Options& o) { return o; }
RateLimiter::Algorithm ToAlgorithm(const TokenBucket::Options& o) { return o; }
RateLimiter::Algorithm ToAlgorithm(const FixedWindow::Options& o) { return o; }

// Runs `steps` through Keyed<L> (limits, block_for) and through a RateLimiter with the same
// limits; returns one line per step where they differ.
template <typename L, typename ToRedis>
std::vector<std::string> Compare(keel::redis::Client& client,
                                 const std::vector<typename L::Options>& limits,
                                 std::optional<Duration> block_for, const std::vector<Step>& steps,
                                 ToRedis to_redis) {
  keel::ManualClock clock;
  auto keyed = Keyed<L>::Create({.block_for = block_for}, limits, clock);
  if (!keyed.ok()) return {"cannot create Keyed: " + keyed.status().ToString()};
  RateLimiter::Options options{.name = keel::test::UniqueName("multi"),
                               .algorithm = to_redis(limits[0]),
                               .block_for = block_for};
  for (size_t i = 1; i < limits.size(); ++i) options.more_limits.push_back(to_redis(limits[i]));
  auto redis = RateLimiter::Create(std::move(options), client);
  if (!redis.ok()) return {"cannot create RateLimiter: " + redis.status().ToString()};
  std::vector<std::string> mismatches;
  for (size_t i = 0; i < steps.size(); ++i) {
    const Step& step = steps[i];
    clock.Set(keel::ManualClock::kDefaultStart + step.at);
    const auto want = (*keyed)->TryAcquire(step.key, step.quantity, clock.Now());
    const auto got = (*redis)->TryAcquireAtForTesting(
        Deadline::After(2s), step.key, step.quantity,
        keel::test::kTestEpoch + std::chrono::duration_cast<std::chrono::microseconds>(step.at));
    std::ostringstream line;
    line << "step " << i << " (at " << step.at.count() << "ns, key " << step.key << ", n "
         << step.quantity << "): ";
    if (!want.ok() || !got.ok()) {
      line << "error: " << want.status() << " / " << got.status();
      mismatches.push_back(line.str());
    } else if (!(AtMicrosecondResolution(*want) == *got)) {
      line << "keyed {" << *want << "}, redis {" << *got << "}";
      mismatches.push_back(line.str());
    }
  }
  return mismatches;
}

void Report(const std::vector<std::string>& mismatches) {
  for (size_t i = 0; i < mismatches.size() && i < 10; ++i) FAIL_CHECK(mismatches[i]);
  CHECK(mismatches.empty());
}

const std::optional<Duration> kBlocks[] = {std::nullopt, 700ms};

}  // namespace

TEST_CASE("redis gcra with two limits and a block decides like Keyed<Gcra>") {
  auto client = keel::test::SharedRedisClient();
  const std::vector<Gcra::Options> two = {{.count = 8, .period = 1s, .max_burst = 3},
                                          {.count = 20, .period = 10s, .max_burst = 9}};
  for (const auto& block : kBlocks) {
    INFO("block_for " << (block ? block->count() : 0) << "ns");
    for (uint32_t seed : {1u, 2u}) {
      INFO("seed " << seed);
      Report(Compare<Gcra>(*client, two, block, RandomTraffic(seed),
                           [](const auto& o) { return ToAlgorithm(o); }));
      // One limit with a block (the script's general path) and without (its fast path).
      Report(Compare<Gcra>(*client, {two[0]}, block, RandomTraffic(seed),
                           [](const auto& o) { return ToAlgorithm(o); }));
    }
  }
}

TEST_CASE("redis token bucket and fixed windows with two limits and a block decide like Keyed") {
  auto client = keel::test::SharedRedisClient();
  const auto to_redis = [](const auto& o) { return ToAlgorithm(o); };
  for (const auto& block : kBlocks) {
    INFO("block_for " << (block ? block->count() : 0) << "ns");
    Report(Compare<TokenBucket>(*client, {{.rate = 8, .burst = 5}, {.rate = 2, .burst = 10}}, block,
                                RandomTraffic(3), to_redis));
    Report(Compare<FixedWindow>(*client,
                                {{.limit = 6, .window = 500ms}, {.limit = 15, .window = 3s}}, block,
                                RandomTraffic(4), to_redis));
    const auto first = FixedWindow::Alignment::kFirstRequest;
    Report(Compare<FixedWindow>(*client,
                                {{.limit = 6, .window = 500ms, .alignment = first},
                                 {.limit = 15, .window = 3s, .alignment = first}},
                                block, RandomTraffic(5), to_redis));
  }
}

TEST_CASE("redis sliding windows with two limits and a block decide like Keyed") {
  auto client = keel::test::SharedRedisClient();
  for (const auto& block : kBlocks) {
    INFO("block_for " << (block ? block->count() : 0) << "ns");
    Report(Compare<SlidingWindowLog>(
        *client, {{.limit = 6, .window = 700ms}, {.limit = 12, .window = 3s}}, block,
        RandomTraffic(6), [](const SlidingWindowOptions& o) -> RateLimiter::Algorithm {
          return keel::redis::SlidingWindowLogOptions{o};
        }));
    Report(Compare<SlidingWindowCounter>(
        *client, {{.limit = 9, .window = 300ms}, {.limit = 20, .window = 1500ms}}, block,
        RandomTraffic(7), [](const SlidingWindowOptions& o) -> RateLimiter::Algorithm {
          return keel::redis::SlidingWindowCounterOptions{o};
        }));
  }
}

TEST_CASE("redis multi-limit check is all-or-none: a denial by one limit consumes from none") {
  auto client = keel::test::SharedRedisClient();
  // 2 per second and 3 per minute (fixed windows: the counts are easy to read).
  auto limiter =
      RateLimiter::Create({.name = keel::test::UniqueName("all-or-none"),
                           .algorithm = FixedWindow::Options{.limit = 2, .window = 1s},
                           .more_limits = {FixedWindow::Options{.limit = 3, .window = 60s}}},
                          *client);
  REQUIRE(limiter.ok());
  const auto at = [](Duration d) {
    return keel::test::kTestEpoch + std::chrono::duration_cast<std::chrono::microseconds>(d);
  };
  auto& l = **limiter;
  CHECK(l.limit() == 2);
  CHECK(l.TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, at(0ms))->allowed);
  CHECK(l.TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, at(0ms))->allowed);
  // The per-second limit denies: the per-minute one must not be charged.
  const auto denied = l.TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, at(0ms));
  REQUIRE(denied.ok());
  CHECK_FALSE(denied->allowed);
  CHECK(denied->retry_after == 1s);  // the longest wait: the per-second window's end
  CHECK(denied->reset_after == 60s);
  // Next second: the per-minute limit has exactly one left (2 + 1 = 3), not zero.
  const auto third = l.TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, at(1s));
  REQUIRE(third.ok());
  CHECK(third->allowed);
  CHECK(third->remaining == 0);
  CHECK(third->limit == 3);  // the limit with the smallest remaining is reported
  const auto fourth = l.TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, at(1s));
  REQUIRE(fourth.ok());
  CHECK_FALSE(fourth->allowed);
  CHECK(fourth->retry_after == 59s);
  // Each limit has its own key, named by its parameters.
  const auto keys = l.RedisKeys("k");
  REQUIRE(keys.size() == 2);
  CHECK(keys[0] != keys[1]);
}
