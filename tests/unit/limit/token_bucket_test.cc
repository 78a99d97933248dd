#include "keel/limit/token_bucket.h"

#include <catch2/catch.hpp>
#include <vector>

using namespace std::chrono_literals;
using keel::limit::Decision;
using keel::limit::kNever;
using keel::limit::TokenBucket;

TEST_CASE("token bucket admits a full burst at once, then one token per interval") {
  keel::ManualClock clock;
  auto bucket = TokenBucket::Create({.rate = 10, .burst = 5}, clock).value();
  for (int i = 0; i < 5; ++i) {
    const Decision d = bucket.TryAcquire().value();
    CHECK(d.allowed);
    CHECK(d.remaining == 4 - i);
  }
  Decision denied = bucket.TryAcquire().value();
  CHECK_FALSE(denied.allowed);
  CHECK(denied.retry_after == 100ms);
  CHECK(denied.reset_after == 500ms);
  clock.Advance(99ms);
  CHECK_FALSE(bucket.TryAcquire().value().allowed);
  clock.Advance(1ms);
  CHECK(bucket.TryAcquire().value().allowed);
  CHECK_FALSE(bucket.TryAcquire().value().allowed);
  // Steady state: one per 100ms, never more.
  int admitted = 0;
  for (int step = 0; step < 100; ++step) {
    clock.Advance(10ms);
    admitted += bucket.TryAcquire().value().allowed ? 1 : 0;
  }
  CHECK(admitted == 10);
}

TEST_CASE("token bucket never holds more than its burst after a long idle time") {
  keel::ManualClock clock;
  auto bucket = TokenBucket::Create({.rate = 100, .burst = 3}, clock).value();
  clock.Advance(1h);
  CHECK(bucket.Available() == 3);
  CHECK(bucket.TryAcquire(3).value().allowed);
  CHECK_FALSE(bucket.TryAcquire(1).value().allowed);
}

TEST_CASE("token bucket peek with quantity zero changes nothing") {
  keel::ManualClock clock;
  auto bucket = TokenBucket::Create({.rate = 1, .burst = 2}, clock).value();
  REQUIRE(bucket.TryAcquire().value().allowed);
  const Decision peek = bucket.TryAcquire(0).value();
  CHECK(peek.allowed);
  CHECK(peek.remaining == 1);
  for (int i = 0; i < 10; ++i) CHECK(bucket.TryAcquire(0).value() == peek);
  CHECK(bucket.Available() == 1);
}

TEST_CASE("token bucket denies a quantity larger than its burst forever, consuming nothing") {
  keel::ManualClock clock;
  auto bucket = TokenBucket::Create({.rate = 1, .burst = 4}, clock).value();
  const Decision d = bucket.TryAcquire(5).value();
  CHECK_FALSE(d.allowed);
  CHECK(d.retry_after == kNever);
  CHECK(d.remaining == 4);
  CHECK(bucket.Available() == 4);
  CHECK(bucket.TryAcquire(4).value().allowed);
}

TEST_CASE("token bucket denied multi-token request reports when all of it will be there") {
  keel::ManualClock clock;
  auto bucket = TokenBucket::Create({.rate = 2, .burst = 4}, clock).value();
  REQUIRE(bucket.TryAcquire(3).value().allowed);
  const Decision d = bucket.TryAcquire(3).value();
  CHECK_FALSE(d.allowed);
  CHECK(d.retry_after == 1s);  // 1 token left, 2 more at 500ms each
  CHECK(bucket.Available() == 1);
  clock.Advance(d.retry_after);
  CHECK(bucket.TryAcquire(3).value().allowed);
}

TEST_CASE("token bucket reservations borrow from the future and are served in FIFO order") {
  keel::ManualClock clock;
  auto bucket = TokenBucket::Create({.rate = 10, .burst = 2}, clock).value();
  std::vector<keel::Duration> waits;
  for (int i = 0; i < 5; ++i) waits.push_back(bucket.Reserve().value());
  CHECK(waits == std::vector<keel::Duration>{0ms, 0ms, 100ms, 200ms, 300ms});
  // A try-acquire cannot barge ahead of the reservations in debt.
  CHECK(bucket.Available() == 0);
  const Decision d = bucket.TryAcquire().value();
  CHECK_FALSE(d.allowed);
  CHECK(d.retry_after == 400ms);
  clock.Advance(400ms);
  CHECK(bucket.TryAcquire().value().allowed);
}

TEST_CASE("token bucket reservation of more than the burst is rejected as invalid") {
  auto bucket = TokenBucket::Create({.rate = 10, .burst = 2}).value();
  const auto r = bucket.Reserve(3);
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(bucket.Available() == 2);
}

TEST_CASE("token bucket supports fractional rates") {
  keel::ManualClock clock;
  auto bucket = TokenBucket::Create({.rate = 0.5, .burst = 1}, clock).value();
  CHECK(bucket.interval() == 2s);
  CHECK(bucket.TryAcquire().value().allowed);
  clock.Advance(1999ms);
  CHECK_FALSE(bucket.TryAcquire().value().allowed);
  clock.Advance(1ms);
  CHECK(bucket.TryAcquire().value().allowed);
}

TEST_CASE("token bucket rejects invalid options and negative quantities naming the field") {
  auto bad_rate = TokenBucket::Create({.rate = 0, .burst = 1});
  REQUIRE_FALSE(bad_rate.ok());
  CHECK(bad_rate.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(bad_rate.status().message()).find("token_bucket.rate") != std::string::npos);
  CHECK_FALSE(TokenBucket::Create({.rate = -1, .burst = 1}).ok());
  auto bad_burst = TokenBucket::Create({.rate = 1, .burst = 0});
  REQUIRE_FALSE(bad_burst.ok());
  CHECK(std::string(bad_burst.status().message()).find("token_bucket.burst") != std::string::npos);
  auto bucket = TokenBucket::Create({.rate = 1, .burst = 1}).value();
  const auto neg = bucket.TryAcquire(-1);
  REQUIRE_FALSE(neg.ok());
  CHECK(neg.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(neg.status().message()).find("quantity") != std::string::npos);
  CHECK_FALSE(bucket.Reserve(-1).ok());
}

TEST_CASE("token bucket check is a dry run of try-acquire") {
  keel::ManualClock clock;
  auto bucket = TokenBucket::Create({.rate = 1, .burst = 2}, clock).value();
  const Decision dry = bucket.Check(2, clock.Now()).value();
  CHECK(dry.allowed);
  CHECK(bucket.Available() == 2);
  CHECK(bucket.TryAcquire(2).value() == dry);
}
