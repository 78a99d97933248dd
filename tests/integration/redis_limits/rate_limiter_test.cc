// redis::RateLimiter against a real Redis: each algorithm's script, key layout and expiry,
// validation, TryAcquireMany, the blocked-key cache and fail modes.
#include "keel/redis/rate_limiter.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "integration/redis/test_server.h"
#include "integration/redis_limits/helpers.h"
#include "keel/limit/gcra.h"
#include "keel/limit/keyed.h"
#include "keel/limit/token_bucket.h"

using keel::Deadline;
using keel::Duration;
using keel::limit::Decision;
using keel::redis::FailMode;
using keel::redis::RateLimiter;
using keel::test::MakeLimiter;
using namespace std::chrono_literals;

namespace {

int64_t Pttl(keel::redis::Client& client, const std::string& key) {
  auto r = client.Command(Deadline::After(1s), "PTTL", key);
  REQUIRE(r.ok());
  return r->integer();
}

}  // namespace

TEST_CASE("redis gcra admits the burst then paces at the rate, using the server clock",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  auto gcra = MakeLimiter(*client, {.name = keel::test::UniqueName("gcra"),
                                    .algorithm = keel::limit::Gcra::Options{
                                        .count = 10, .period = 10s, .max_burst = 2}});
  for (int i = 0; i < 3; ++i) {
    auto d = gcra->TryAcquire(Deadline::After(1s), "user:1", 1);
    REQUIRE(d.ok());
    CHECK(d->allowed);
    CHECK(d->limit == 3);
    CHECK(d->remaining == 2 - i);
  }
  auto denied = gcra->TryAcquire(Deadline::After(1s), "user:1", 1);
  REQUIRE(denied.ok());
  CHECK_FALSE(denied->allowed);
  CHECK(denied->retry_after > 900ms);  // one emission interval (1 s), less the test's own time
  CHECK(denied->retry_after <= 1s);
  CHECK(denied->reset_after > 2s);
  CHECK(denied->reset_after <= 3s);
  // Another key is independent.
  CHECK(gcra->TryAcquire(Deadline::After(1s), "user:2", 1)->allowed);
  // The state expires when it is back to fresh: at most tau = 3 s from now.
  const auto keys = gcra->RedisKeys("user:1");
  REQUIRE(keys.size() == 1);
  CHECK(keys[0].find("{" + gcra->name() + ":user:1}") == 0);
  const int64_t ttl = Pttl(*client, keys[0]);
  CHECK(ttl > 2000);
  CHECK(ttl <= 3000);
}

TEST_CASE("redis gcra matches the in-process gcra at explicit times, including peeks and n > limit",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  const keel::limit::Gcra::Options options{.count = 5, .period = 1s, .max_burst = 3};
  auto redis_gcra =
      MakeLimiter(*client, {.name = keel::test::UniqueName("gcra-exact"), .algorithm = options});
  keel::ManualClock clock;
  auto local = keel::limit::Gcra::Create(options, clock).value();
  const int64_t quantities[] = {1, 1, 2, 0, 1, 5, 1, 3, 1, 0, 4, 1};
  Duration at = 0ms;
  for (int step = 0; step < 60; ++step) {
    const int64_t n = quantities[step % 12];
    at += std::chrono::milliseconds((step * 37) % 230);
    const Decision expect = local.TryAcquire(n, keel::ManualClock::kDefaultStart + at).value();
    const auto got = redis_gcra->TryAcquireAtForTesting(
        Deadline::After(1s), "k", n,
        keel::test::kTestEpoch + std::chrono::duration_cast<std::chrono::microseconds>(at));
    REQUIRE(got.ok());
    INFO("step " << step << " n=" << n);
    CHECK(*got == expect);
  }
}

TEST_CASE("redis token bucket admits the burst, denies with the time to the next token, sets a TTL",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  auto bucket = MakeLimiter(
      *client, {.name = keel::test::UniqueName("tb"),
                .algorithm = keel::limit::TokenBucket::Options{.rate = 10, .burst = 3}});
  const auto t0 = keel::test::kTestEpoch;
  CHECK(bucket->TryAcquireAtForTesting(Deadline::Infinite(), "k", 3, t0)->allowed);
  const auto denied = bucket->TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, t0);
  REQUIRE(denied.ok());
  CHECK_FALSE(denied->allowed);
  CHECK(denied->retry_after == 100ms);
  CHECK(bucket->TryAcquireAtForTesting(Deadline::Infinite(), "k", 4, t0)->retry_after ==
        keel::limit::kNever);
  CHECK(bucket->TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, t0 + 100ms)->allowed);
  // With the server's clock: full again 300 ms after being emptied, so the key lives no longer.
  for (int i = 0; i < 3; ++i) REQUIRE(bucket->TryAcquire(Deadline::After(1s), "real", 1).ok());
  const int64_t ttl = Pttl(*client, bucket->RedisKeys("real")[0]);
  CHECK(ttl > 0);
  CHECK(ttl <= 300);
}

TEST_CASE("redis fixed window, sliding log and sliding counter hold the limit per window",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  // 60 s windows aligned to the server's clock: a run that straddles a boundary (the server's
  // TIME before and after it differ in window) may rightly admit more, so it is run again.
  const auto window_of_now = [&] {
    auto t = client->Command(Deadline::After(1s), "TIME");
    REQUIRE(t.ok());
    return std::stoll(t->elements()[0].str()) / 60;
  };
  const keel::limit::SlidingWindowOptions w{.limit = 4, .window = 60s};
  const RateLimiter::Algorithm algorithms[] = {
      keel::limit::FixedWindow::Options{.limit = 4, .window = 60s},
      keel::limit::FixedWindow::Options{
          .limit = 4,
          .window = 60s,
          .alignment = keel::limit::FixedWindow::Alignment::kFirstRequest},
      keel::redis::SlidingWindowLogOptions{w}, keel::redis::SlidingWindowCounterOptions{w}};
  for (const auto& algorithm : algorithms) {
    INFO("algorithm index " << algorithm.index());
    for (int attempt = 0;; ++attempt) {
      REQUIRE(attempt < 3);
      auto limiter =
          MakeLimiter(*client, {.name = keel::test::UniqueName("window"), .algorithm = algorithm});
      const int64_t before = window_of_now();
      int admitted = 0;
      for (int i = 0; i < 10; ++i) {
        auto d = limiter->TryAcquire(Deadline::After(1s), "k", 1);
        REQUIRE(d.ok());
        admitted += d->allowed ? 1 : 0;
        if (!d->allowed) {
          CHECK(d->retry_after > 0ms);
          CHECK(d->retry_after <= 120s);
        }
      }
      if (window_of_now() != before) continue;
      CHECK(admitted == 4);
      for (const std::string& key : limiter->RedisKeys("k")) {
        const int64_t ttl = Pttl(*client, key);
        CHECK(ttl > 0);
        CHECK(ttl <= 120'000);
      }
      break;
    }
  }
}

TEST_CASE("redis sliding log counts each admission for exactly one window", "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  auto log = MakeLimiter(
      *client, {.name = keel::test::UniqueName("log"),
                .algorithm = keel::redis::SlidingWindowLogOptions{{.limit = 3, .window = 1s}}});
  const auto t0 = keel::test::kTestEpoch;
  CHECK(log->TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, t0)->allowed);
  CHECK(log->TryAcquireAtForTesting(Deadline::Infinite(), "k", 2, t0 + 500ms)->allowed);
  const auto denied = log->TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, t0 + 999ms).value();
  CHECK_FALSE(denied.allowed);
  CHECK(denied.retry_after == 1ms);
  CHECK(log->TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, t0 + 1000ms)->allowed);
  CHECK_FALSE(log->TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, t0 + 1499ms)->allowed);
  CHECK(log->TryAcquireAtForTesting(Deadline::Infinite(), "k", 2, t0 + 1500ms)->allowed);
}

TEST_CASE("redis rate limiter rejects bad options naming the field", "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  const auto error = [&](RateLimiter::Options o) {
    auto l = RateLimiter::Create(std::move(o), *client);
    REQUIRE_FALSE(l.ok());
    CHECK(l.status().code() == absl::StatusCode::kInvalidArgument);
    return std::string(l.status().message());
  };
  CHECK_THAT(error({.name = "", .algorithm = keel::limit::Gcra::Options{.count = 1}}),
             Catch::Contains("redis rate limiter \"\": name must be 1 to 128 bytes, got 0 bytes"));
  // An algorithm's own check, named under the limiter that holds it.
  CHECK(error({.name = "x", .algorithm = keel::limit::Gcra::Options{.count = 0}}) ==
        "redis rate limiter \"x\": gcra.count must be >= 1, got 0");
  CHECK(error({.name = "x",
               .algorithm = keel::limit::Gcra::Options{.count = 1},
               .block_for = std::chrono::nanoseconds(1500)}) ==
        "redis rate limiter \"x\": block_for must be a whole number of microseconds for the "
        "Redis limiter (TIME has microsecond resolution), got 1.5us");
  CHECK_THAT(error({.name = "x",
                    .algorithm = keel::limit::Gcra::Options{.count = 1'000'000'000, .period = 1s}}),
             Catch::Contains("gcra.period / gcra.count"));
  CHECK_THAT(error({.name = "x", .algorithm = keel::limit::TokenBucket::Options{.rate = -1}}),
             Catch::Contains("token_bucket.rate"));
  CHECK_THAT(error({.name = "x",
                    .algorithm =
                        keel::limit::FixedWindow::Options{
                            .limit = 1, .window = std::chrono::nanoseconds(1500)}}),
             Catch::Contains("fixed_window.window"));
  CHECK_THAT(error({.name = "x", .algorithm = keel::redis::SlidingWindowLogOptions{{.limit = 0}}}),
             Catch::Contains("sliding_window_log.limit"));
  CHECK_THAT(
      error({.name = "x",
             .algorithm = keel::redis::SlidingWindowCounterOptions{{.limit = int64_t{1} << 40,
                                                                    .window = 1h}}}),
      Catch::Contains("sliding_window_counter.limit"));
}

TEST_CASE("redis rate limiter rejects keys over 1 KiB and negative quantities", "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  auto gcra = MakeLimiter(*client, {.name = keel::test::UniqueName("keys"),
                                    .algorithm = keel::limit::Gcra::Options{.count = 10}});
  const std::string longest(keel::limit::kMaxKeyBytes, 'k');
  CHECK(gcra->TryAcquire(Deadline::After(1s), longest, 1).ok());
  const auto too_long = gcra->TryAcquire(Deadline::After(1s), longest + "k", 1);
  CHECK(too_long.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(gcra->TryAcquire(Deadline::Infinite(), "", 1).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(gcra->TryAcquire(Deadline::Infinite(), "k", -1).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("redis TryAcquireMany decides each key in one round trip", "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  auto limiter = MakeLimiter(
      *client, {.name = keel::test::UniqueName("many"),
                .algorithm = keel::limit::FixedWindow::Options{.limit = 1, .window = 60s}});
  std::vector<std::string> names;
  for (int i = 0; i < 100; ++i) names.push_back("key:" + std::to_string(i));
  std::vector<std::string_view> keys(names.begin(), names.end());
  REQUIRE(limiter->TryAcquire(Deadline::After(1s), "key:7", 1)->allowed);  // key:7 is now full
  auto decisions = limiter->TryAcquireMany(Deadline::After(1s), keys, 1);
  REQUIRE(decisions.ok());
  REQUIRE(decisions->size() == 100);
  for (int i = 0; i < 100; ++i) CHECK((*decisions)[i].allowed == (i != 7));
  auto again = limiter->TryAcquireMany(Deadline::After(1s), keys, 1);
  REQUIRE(again.ok());
  for (const Decision& d : *again) CHECK_FALSE(d.allowed);
  CHECK(limiter->Stats().allowed_total == 100);

  const std::string huge(keel::limit::kMaxKeyBytes + 1, 'x');
  const std::vector<std::string_view> bad = {"fine", huge};
  CHECK(limiter->TryAcquireMany(Deadline::Infinite(), bad, 1).status().code() ==
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("redis TryAcquireMany loads its script on a server that does not know it",
          "[redis_limits]") {
  keel::test::RedisServer server;  // a new server has no scripts: every entry gets NOSCRIPT
  auto client = keel::test::MakeRedisClient(server.url());
  auto limiter = MakeLimiter(
      *client, {.name = "many",
                .algorithm = keel::limit::FixedWindow::Options{.limit = 2, .window = 60s},
                .fail_mode = FailMode::kClosed});
  const std::vector<std::string_view> keys = {"a", "b", "a", "a"};
  auto decisions = limiter->TryAcquireMany(Deadline::After(1s), keys, 1);
  REQUIRE(decisions.ok());
  // Each entry ran exactly once, in order: a, b, a admitted; the third a denied.
  CHECK((*decisions)[0].allowed);
  CHECK((*decisions)[1].allowed);
  CHECK((*decisions)[2].allowed);
  CHECK_FALSE((*decisions)[3].allowed);
  // After SCRIPT FLUSH (as after a restart or a failover) one call still answers every key,
  // each entry run once: b's second admission, a denied.
  REQUIRE(client->Command(Deadline::After(1s), "SCRIPT", "FLUSH").ok());
  const std::vector<std::string_view> more = {"b", "a"};
  auto after_flush = limiter->TryAcquireMany(Deadline::After(1s), more, 1);
  REQUIRE(after_flush.ok());
  CHECK((*after_flush)[0].allowed);
  CHECK((*after_flush)[0].remaining == 0);
  CHECK_FALSE((*after_flush)[1].allowed);
  CHECK(limiter->Stats().fail_closed_total == 0);
}

TEST_CASE("redis blocked-key cache answers repeated denials without a round trip",
          "[redis_limits]") {
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  keel::ManualClock clock;
  auto limiter = RateLimiter::Create(
                     // GCRA, not an aligned window: a window boundary between the two checks
                     // below (1 run in 60) would admit the second or leave under 1 s to retry.
                     {.name = keel::test::UniqueName("cache"),
                      .algorithm = keel::limit::Gcra::Options{.count = 1, .period = 60s},
                      .fail_mode = FailMode::kClosed},
                     *client, clock)
                     .value();
  REQUIRE(limiter->TryAcquire(Deadline::After(1s), "k", 1)->allowed);
  const auto first = limiter->TryAcquire(Deadline::After(1s), "k", 1).value();
  REQUIRE_FALSE(first.allowed);
  CHECK(limiter->Stats().blocked_cache_hits_total == 0);
  // With Redis gone, a blocked key is still denied (from the cache), not failed closed.
  server.Kill();
  clock.Advance(1s);
  const auto cached = limiter->TryAcquire(Deadline::After(1s), "k", 1);
  REQUIRE(cached.ok());
  CHECK_FALSE(cached->allowed);
  CHECK(cached->retry_after == first.retry_after - 1s);
  CHECK(limiter->Stats().blocked_cache_hits_total == 1);
  // A larger quantity is blocked too; a peek (smaller) must ask Redis, which is down.
  CHECK_FALSE(limiter->TryAcquire(Deadline::After(1s), "k", 1)->allowed);
  CHECK(limiter->TryAcquire(Deadline::After(1s), "k", 0).status().code() ==
        absl::StatusCode::kUnavailable);
  // Once retry_after has passed, the cache no longer answers.
  clock.Advance(first.retry_after);
  CHECK(limiter->TryAcquire(Deadline::After(1s), "k", 1).status().code() ==
        absl::StatusCode::kUnavailable);
  CHECK(limiter->Stats().blocked_cache_hits_total == 2);
}

TEST_CASE("redis rate limiter fails open or closed when Redis is down, counted in stats",
          "[redis_limits]") {
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  auto open = RateLimiter::Create({.name = "open",
                                   .algorithm = keel::limit::Gcra::Options{.count = 1},
                                   .fail_mode = FailMode::kOpen},
                                  *client)
                  .value();
  auto closed = RateLimiter::Create({.name = "closed",
                                     .algorithm = keel::limit::Gcra::Options{.count = 1},
                                     .fail_mode = FailMode::kClosed},
                                    *client)
                    .value();
  REQUIRE(open->TryAcquire(Deadline::After(1s), "k", 1)->allowed);
  REQUIRE(closed->TryAcquire(Deadline::After(1s), "k", 1)->allowed);
  server.Kill();
  for (int i = 0; i < 3; ++i) {
    const auto o = open->TryAcquire(Deadline::After(1s), "k", 1);
    REQUIRE(o.ok());
    CHECK(o->allowed);
    const auto c = closed->TryAcquire(Deadline::After(1s), "k", 1);
    CHECK(c.status().code() == absl::StatusCode::kUnavailable);
    CHECK_THAT(std::string(c.status().message()), Catch::Contains("\"closed\""));
  }
  const std::vector<std::string_view> keys = {"a", "b"};
  const auto many_open = open->TryAcquireMany(Deadline::After(1s), keys, 1);
  REQUIRE(many_open.ok());
  CHECK((*many_open)[0].allowed);
  CHECK((*many_open)[1].allowed);
  CHECK(closed->TryAcquireMany(Deadline::After(1s), keys, 1).status().code() ==
        absl::StatusCode::kUnavailable);
  CHECK(open->Stats().fail_open_total == 5);
  CHECK(closed->Stats().fail_closed_total == 5);
  CHECK(open->Stats().allowed_total == 1);
  // Back up: decisions come from Redis again.
  REQUIRE(server.Start());
  bool recovered = false;
  for (int i = 0; i < 50 && !recovered; ++i) {
    auto c = closed->TryAcquire(Deadline::After(1s), "fresh", 1);
    recovered = c.ok() && c->allowed;
  }
  CHECK(recovered);
}

TEST_CASE("redis rate limiter never waits past the caller's deadline on a stalled server",
          "[redis_limits]") {
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  auto open = RateLimiter::Create({.name = "stalled",
                                   .algorithm = keel::limit::Gcra::Options{.count = 1},
                                   .fail_mode = FailMode::kOpen},
                                  *client)
                  .value();
  REQUIRE(open->TryAcquire(Deadline::After(1s), "warm", 1).ok());
  server.Stop();  // SIGSTOP: connections stay open, nothing answers
  const auto start = std::chrono::steady_clock::now();
  const auto d = open->TryAcquire(Deadline::After(100ms), "k", 1);
  const auto took = std::chrono::steady_clock::now() - start;
  server.Continue();
  REQUIRE(d.ok());
  CHECK(d->allowed);
  CHECK(open->Stats().fail_open_total == 1);
  CHECK(took < 400ms);
  // An already expired deadline fails without touching Redis.
  CHECK(open->TryAcquire(Deadline::After(0ms), "k", 1)->allowed);
  CHECK(open->Stats().fail_open_total == 2);
}

TEST_CASE("redis rate limiter exports its stats as Prometheus counters", "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  keel::MetricsRegistry registry;
  const std::string name = keel::test::UniqueName("metrics");
  auto limiter =
      RateLimiter::Create({.name = name, .algorithm = keel::limit::Gcra::Options{.count = 1}},
                          *client, keel::SteadyClock(), &registry)
          .value();
  REQUIRE(limiter->TryAcquire(Deadline::After(1s), "k", 1)->allowed);
  REQUIRE_FALSE(limiter->TryAcquire(Deadline::After(1s), "k", 1)->allowed);
  REQUIRE_FALSE(limiter->TryAcquire(Deadline::After(1s), "k", 1)->allowed);  // from the cache
  // An in-process limiter counts in the same family, told apart by backend.
  auto local = keel::limit::Keyed<keel::limit::Gcra>::Create(
                   {.name = "local-" + name}, {{.count = 1}}, keel::SteadyClock(), &registry)
                   .value();
  REQUIRE(local->TryAcquire("k").value().allowed);
  const std::string text = registry.RenderPrometheus();
  const auto series = [&](const char* backend, const char* decision, const std::string& n) {
    return std::string("keel_rate_limit_decisions_total{backend=\"") + backend + "\",decision=\"" +
           decision + "\",name=\"" + n + "\"}";
  };
  CHECK_THAT(text, Catch::Contains(series("redis", "allowed", name) + " 1"));
  CHECK_THAT(text, Catch::Contains(series("redis", "denied", name) + " 2"));
  CHECK_THAT(text, Catch::Contains(series("redis", "fail_open", name) + " 0"));
  CHECK_THAT(text, Catch::Contains(series("redis", "fallback_allowed", name) + " 0"));
  CHECK_THAT(text, Catch::Contains(series("local", "allowed", "local-" + name) + " 1"));
  CHECK_THAT(text, Catch::Contains("keel_redis_rate_limiter_blocked_cache_hits_total{name=\"" +
                                   name + "\"} 1"));
  // One family, one HELP and TYPE line.
  const std::string type_line = "# TYPE keel_rate_limit_decisions_total counter\n";
  const size_t first = text.find(type_line);
  REQUIRE(first != std::string::npos);
  CHECK(text.find(type_line, first + 1) == std::string::npos);
}
