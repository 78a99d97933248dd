// redis::RateLimiter with Redis killed or paused: degraded decisions are marked and counted, the
// local fallback holds each process to its share, and checks Redis runs after their callers gave
// up charge nothing.
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "integration/redis/test_server.h"
#include "integration/redis_limits/helpers.h"
#include "keel/limit/gcra.h"
#include "keel/limit/http_headers.h"
#include "keel/redis/rate_limiter.h"

using keel::Deadline;
using keel::limit::Decision;
using keel::redis::FailMode;
using keel::redis::RateLimiter;
using namespace std::chrono_literals;

namespace {

const keel::limit::Gcra::Options kFivePerMinute = {.count = 5, .period = 1min, .max_burst = 4};

bool HasHeader(const Decision& d, const std::string& name) {
  for (const auto& h : keel::limit::HttpHeaders(d, {.name = "api", .window = 1min})) {
    if (h.name == name) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("redis fail-open decision is marked degraded and its headers carry no invented figures",
          "[redis_limits]") {
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  auto open =
      RateLimiter::Create(
          {.name = "open", .algorithm = kFivePerMinute, .fail_mode = FailMode::kOpen}, *client)
          .value();
  const Decision real = open->TryAcquire(Deadline::After(1s), "k", 1).value();
  CHECK_FALSE(real.degraded);
  CHECK(HasHeader(real, "RateLimit-Remaining"));
  server.Kill();
  const Decision d = open->TryAcquire(Deadline::After(1s), "k", 1).value();
  CHECK(d.allowed);
  CHECK(d.degraded);
  CHECK(d.limit == 5);
  CHECK_FALSE(HasHeader(d, "RateLimit-Remaining"));
  CHECK_FALSE(HasHeader(d, "RateLimit-Reset"));
  CHECK_FALSE(HasHeader(d, "RateLimit"));
  CHECK(HasHeader(d, "RateLimit-Policy"));
  CHECK(open->Stats().fail_open_total == 1);
}

TEST_CASE("redis local fallback holds each process to its share while Redis is down",
          "[redis_limits]") {
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  keel::ManualClock clock;
  keel::MetricsRegistry metrics;
  // 10 per minute over 2 processes: 5 each while Redis is down.
  auto limiter =
      RateLimiter::Create(
          {.name = "insured",
           .algorithm = keel::limit::Gcra::Options{.count = 10, .period = 1min, .max_burst = 9},
           .fail_mode = FailMode::kClosed,
           .local_fallback = keel::redis::LocalFallbackOptions{.processes = 2}},
          *client, clock, &metrics)
          .value();
  REQUIRE(limiter->TryAcquire(Deadline::After(1s), "k", 1)->allowed);
  server.Kill();
  // A dry run asks the fallback too, and consumes nothing there either.
  const Decision dry = limiter->Check(Deadline::After(1s), "k", 1).value();
  CHECK(dry.allowed);
  CHECK(dry.degraded);
  for (int i = 0; i < 5; ++i) {
    const Decision d = limiter->TryAcquire(Deadline::After(1s), "k", 1).value();
    INFO("request " << i << ": " << d);
    CHECK(d.allowed);
    CHECK(d.degraded);
    CHECK(d.limit == 10);  // the configured limit; the rest is this process's share
  }
  const Decision denied = limiter->TryAcquire(Deadline::After(1s), "k", 1).value();
  CHECK_FALSE(denied.allowed);
  CHECK(denied.degraded);
  CHECK(denied.retry_after == 12s);  // the fallback's own pace: one per 60s / 5
  // Another key has its own share.
  CHECK(limiter->TryAcquire(Deadline::After(1s), "other", 1)->allowed);
  const keel::redis::RateLimiterStats stats = limiter->Stats();
  CHECK(stats.fallback_allowed_total == 6);
  CHECK(stats.fallback_denied_total == 1);
  CHECK(stats.fail_closed_total == 0);
  CHECK(stats.fail_open_total == 0);
  CHECK_THAT(metrics.RenderPrometheus(),
             Catch::Contains("keel_rate_limit_decisions_total{backend=\"redis\",decision="
                             "\"fallback_denied\",name=\"insured\"} 1"));
  // The fallback's time is the injected clock.
  clock.Advance(12s);
  CHECK(limiter->TryAcquire(Deadline::After(1s), "k", 1)->allowed);
}

TEST_CASE("redis local fallback options are validated", "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  auto bad = RateLimiter::Create({.name = "insured",
                                  .algorithm = kFivePerMinute,
                                  .local_fallback = keel::redis::LocalFallbackOptions{}},
                                 *client);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(bad.status().message()),
             Catch::Contains("local_fallback.processes must be >= 1"));
  auto skew = RateLimiter::Create(
      {.name = "skew", .algorithm = kFivePerMinute, .late_check_allowance = -1ms}, *client);
  CHECK(skew.status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("redis checks that run after their callers gave up charge nothing", "[redis_limits]") {
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url(), /*max_size=*/8);
  // The same limit twice: with the late-check rule (an allowance far above this machine's zero
  // skew, far below the pause), and without it, to show what the rule prevents.
  auto guarded =
      RateLimiter::Create(
          {.name = "guarded", .algorithm = kFivePerMinute, .late_check_allowance = 100ms}, *client)
          .value();
  // A client of its own: a connection that owes a late reply sends nothing more until it has
  // drained it, so with one shared client the guarded limiter's timed-out check would keep the
  // unguarded ones from ever reaching Redis.
  auto other_client = keel::test::MakeRedisClient(server.url(), /*max_size=*/8);
  auto unguarded =
      RateLimiter::Create(
          {.name = "unguarded", .algorithm = kFivePerMinute, .late_check_allowance = std::nullopt},
          *other_client)
          .value();
  REQUIRE(guarded->Check(Deadline::After(1s), "k", 0).ok());  // connections and scripts warm
  REQUIRE(unguarded->Check(Deadline::After(1s), "k", 0).ok());
  server.Stop();  // SIGSTOP: the checks reach the socket, nothing answers
  for (int i = 0; i < 5; ++i) {
    const Decision g = guarded->TryAcquire(Deadline::After(20ms), "k", 1).value();
    const Decision u = unguarded->TryAcquire(Deadline::After(20ms), "k", 1).value();
    REQUIRE(g.degraded);  // failed open: the callers were answered
    REQUIRE(u.degraded);
  }
  std::this_thread::sleep_for(1s);  // well past every deadline + allowance
  server.Continue();
  // Redis now runs the queued checks; give it time to drain them before looking.
  std::this_thread::sleep_for(300ms);
  for (int i = 0; i < 5; ++i) {
    const Decision d = guarded->TryAcquire(Deadline::After(1s), "k", 1).value();
    INFO("request " << i << ": " << d);
    CHECK_FALSE(d.degraded);
    CHECK(d.allowed);  // the whole burst is still there
  }
  // Without the rule, the late checks that reached Redis charged the burst: at least the first,
  // sent on a clean connection (the next ones may have waited behind its late reply).
  const Decision charged = unguarded->TryAcquire(Deadline::After(1s), "k", 1).value();
  INFO("unguarded after the pause: " << charged);
  CHECK_FALSE(charged.degraded);
  CHECK(charged.remaining < kFivePerMinute.count - 1);
}
