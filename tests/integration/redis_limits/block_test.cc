// RateLimiter::Options::block_for against a real Redis: the penalty block lives in Redis, so
// every process (here: a second RateLimiter with its own client and cache) sees it; it ends after
// block_for; a request that can never fit does not start one; the local cache answers the
// blocked key's requests without a round trip. Keyed equivalence, decision by decision, is in
// multi_limit_test.cc.
#include <catch2/catch.hpp>

#include "integration/redis_limits/helpers.h"
#include "keel/redis/rate_limiter.h"

using keel::Deadline;
using keel::Duration;
using keel::limit::FixedWindow;
using keel::limit::Gcra;
using keel::redis::RateLimiter;
using namespace std::chrono_literals;

namespace {

std::chrono::microseconds At(Duration d) {
  return keel::test::kTestEpoch + std::chrono::duration_cast<std::chrono::microseconds>(d);
}

std::unique_ptr<RateLimiter> Make(keel::redis::Client& client, const std::string& name,
                                  RateLimiter::Algorithm algorithm, Duration block_for) {
  auto l = RateLimiter::Create(
      {.name = name, .algorithm = std::move(algorithm), .block_for = block_for}, client);
  REQUIRE(l.ok());
  return std::move(*l);
}

}  // namespace

TEST_CASE("redis block starts on a denial and denies every request until it ends") {
  auto client = keel::test::SharedRedisClient();
  // 2 per second window, blocked 10 s after exceeding.
  auto l = Make(*client, keel::test::UniqueName("block"),
                FixedWindow::Options{.limit = 2, .window = 1s}, 10s);
  CHECK(l->TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, At(0ms))->allowed);
  CHECK(l->TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, At(0ms))->allowed);
  const auto denied = l->TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, At(0ms));
  REQUIRE(denied.ok());
  CHECK_FALSE(denied->allowed);
  CHECK(denied->retry_after == 10s);  // the block, longer than the window's 1 s
  CHECK(denied->reset_after == 10s);
  // The window has long reset, but the block holds: any quantity, peeks included.
  for (int64_t n : {1, 0, 5}) {
    INFO("n " << n);
    const auto d = l->TryAcquireAtForTesting(Deadline::Infinite(), "k", n, At(4s));
    REQUIRE(d.ok());
    CHECK_FALSE(d->allowed);
    CHECK(d->remaining == 0);
    CHECK(d->retry_after == 6s);
  }
  // The block's requests touched no counter: at its end the window admits the full limit.
  CHECK_FALSE(l->TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, At(10s) - 1us)->allowed);
  CHECK(l->TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, At(10s))->allowed);
  CHECK(l->TryAcquireAtForTesting(Deadline::Infinite(), "k", 1, At(10s))->allowed);
  // Another key was never blocked.
  CHECK(l->TryAcquireAtForTesting(Deadline::Infinite(), "other", 1, At(4s))->allowed);
}

TEST_CASE("redis block is seen by another limiter instance with its own client") {
  auto client_a = keel::test::SharedRedisClient();
  auto client_b = keel::test::SharedRedisClient();
  const std::string name = keel::test::UniqueName("block-shared");
  const Gcra::Options gcra{.count = 1, .period = 1h, .max_burst = 0};
  auto a = Make(*client_a, name, gcra, 30s);
  auto b = Make(*client_b, name, gcra, 30s);
  REQUIRE(a->TryAcquire(Deadline::After(1s), "user", 1)->allowed);
  const auto started = a->TryAcquire(Deadline::After(1s), "user", 1);
  REQUIRE(started.ok());
  CHECK_FALSE(started->allowed);
  // The GCRA alone would say "retry in an hour"; the block is shorter, so the longer wins.
  CHECK(started->retry_after > 59min);
  // b has never seen the key: its answer comes from Redis, and it is the block.
  const auto peek = b->TryAcquire(Deadline::After(1s), "user", 0);
  REQUIRE(peek.ok());
  CHECK_FALSE(peek->allowed);
  CHECK(peek->retry_after > 29s);
  CHECK(peek->retry_after <= 30s);
  CHECK(b->Stats().blocked_cache_hits_total == 0);
  CHECK(b->Stats().denied_total == 1);
  // The block key expires with the block.
  const auto keys = b->RedisKeys("user");
  REQUIRE(keys.size() == 2);
  CHECK(keys[1] == "{" + name + ":user}:block");
  const auto ttl = client_a->Command(Deadline::After(1s), "PTTL", keys[1]);
  REQUIRE(ttl.ok());
  CHECK(ttl->integer() > 29000);
  CHECK(ttl->integer() <= 30000);
}

TEST_CASE("redis block feeds the local cache: the blocked key costs no round trip") {
  auto client = keel::test::SharedRedisClient();
  auto l = Make(*client, keel::test::UniqueName("block-cache"),
                Gcra::Options{.count = 1, .period = 1h, .max_burst = 0}, 30s);
  REQUIRE(l->TryAcquire(Deadline::After(1s), "user", 1)->allowed);
  REQUIRE_FALSE(l->TryAcquire(Deadline::After(1s), "user", 1)->allowed);  // starts the block
  // Every quantity, peeks included, is answered locally while the block runs.
  for (int64_t n : {1, 0}) {
    const auto d = l->TryAcquire(Deadline::After(1s), "user", n);
    REQUIRE(d.ok());
    CHECK_FALSE(d->allowed);
    CHECK(d->retry_after <= 30s);
    CHECK(d->retry_after > 29s);
  }
  CHECK(l->Stats().blocked_cache_hits_total == 2);
}

TEST_CASE("redis request that can never fit does not start a block") {
  auto client = keel::test::SharedRedisClient();
  auto l = Make(*client, keel::test::UniqueName("block-never"),
                FixedWindow::Options{.limit = 3, .window = 1s}, 10s);
  const auto never = l->TryAcquireAtForTesting(Deadline::Infinite(), "k", 4, At(0ms));
  REQUIRE(never.ok());
  CHECK_FALSE(never->allowed);
  CHECK(never->retry_after == keel::limit::kNever);
  const auto next = l->TryAcquireAtForTesting(Deadline::Infinite(), "k", 3, At(0ms));
  REQUIRE(next.ok());
  CHECK(next->allowed);
  auto exists = client->Command(Deadline::After(1s), "EXISTS", l->RedisKeys("k").back());
  REQUIRE(exists.ok());
  CHECK(exists->integer() == 0);
}
