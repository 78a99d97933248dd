#include "keel/limit/keyed_concurrency_limiter.h"

#include <catch2/catch.hpp>
#include <optional>
#include <string>
#include <vector>

using keel::limit::KeyedConcurrencyLimiter;
using Permit = KeyedConcurrencyLimiter::Permit;

namespace {
std::optional<Permit> Acquire(KeyedConcurrencyLimiter& limiter, const std::string& key) {
  return std::move(limiter.TryAcquire(key).value());
}
}  // namespace

TEST_CASE("keyed concurrency limiter allows max in flight per key, independently") {
  auto limiter = KeyedConcurrencyLimiter::Create({.max = 2}).value();
  std::optional<Permit> a1 = Acquire(*limiter, "alice");
  std::optional<Permit> a2 = Acquire(*limiter, "alice");
  REQUIRE(a1);
  REQUIRE(a2);
  CHECK_FALSE(Acquire(*limiter, "alice"));  // a third for alice is refused
  std::optional<Permit> b1 = Acquire(*limiter, "bob");
  CHECK(b1);  // bob is unaffected
  CHECK(limiter->InFlight("alice") == 2);
  CHECK(limiter->InFlight("bob") == 1);
  a1.reset();  // frees one of alice's slots
  CHECK(limiter->InFlight("alice") == 1);
  CHECK(Acquire(*limiter, "alice"));
  const keel::limit::KeyedConcurrencyStats stats = limiter->Stats();
  CHECK(stats.acquired_total == 4);
  CHECK(stats.rejected_total == 1);
}

TEST_CASE("keyed concurrency limiter forgets a key when its last permit is released") {
  auto limiter = KeyedConcurrencyLimiter::Create({.max = 3}).value();
  {
    std::vector<Permit> permits;
    for (int i = 0; i < 100; ++i) {
      auto p = Acquire(*limiter, "user-" + std::to_string(i));
      REQUIRE(p);
      permits.push_back(std::move(*p));
    }
    CHECK(limiter->Stats().keys == 100);
    CHECK(limiter->Stats().in_flight == 100);
  }
  CHECK(limiter->Stats().keys == 0);
  CHECK(limiter->Stats().in_flight == 0);
  CHECK(limiter->InFlight("user-7") == 0);
}

TEST_CASE("keyed concurrency limiter refuses a new key when max_keys keys hold permits") {
  auto limiter = KeyedConcurrencyLimiter::Create({.max = 5, .max_keys = 2, .shards = 1}).value();
  std::optional<Permit> a = Acquire(*limiter, "a");
  std::optional<Permit> b = Acquire(*limiter, "b");
  REQUIRE(a);
  REQUIRE(b);
  CHECK_FALSE(Acquire(*limiter, "c"));  // memory stays bounded: no third key
  CHECK(Acquire(*limiter, "a"));        // known keys still get their slots
  CHECK(limiter->Stats().rejected_capacity_total == 1);
  b.reset();
  CHECK(Acquire(*limiter, "c"));  // room again once "b" is gone
}

TEST_CASE("keyed concurrency permit releases once, moves and releases early") {
  auto limiter = KeyedConcurrencyLimiter::Create({.max = 1}).value();
  std::optional<Permit> p = Acquire(*limiter, "k");
  REQUIRE(p);
  Permit moved = std::move(*p);
  CHECK_FALSE(p->held());
  CHECK(moved.held());
  CHECK_FALSE(Acquire(*limiter, "k"));
  moved.Release();
  CHECK_FALSE(moved.held());
  moved.Release();  // a second release does nothing
  CHECK(limiter->InFlight("k") == 0);
  std::optional<Permit> again = Acquire(*limiter, "k");
  REQUIRE(again);
  // Move-assigning over a held permit releases the one it replaces.
  std::optional<Permit> other = Acquire(*limiter, "j");
  REQUIRE(other);
  *again = std::move(*other);
  CHECK(limiter->InFlight("k") == 0);
  CHECK(limiter->InFlight("j") == 1);
}

TEST_CASE("keyed concurrency limiter exports its counts as metrics") {
  keel::MetricsRegistry metrics;
  auto limiter = KeyedConcurrencyLimiter::Create({.name = "chat", .max = 1}, &metrics).value();
  std::optional<Permit> p = Acquire(*limiter, "u");
  CHECK_FALSE(Acquire(*limiter, "u"));
  const std::string text = metrics.RenderPrometheus();
  CHECK_THAT(text, Catch::Contains("keel_concurrency_limit_in_flight{name=\"chat\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("keel_concurrency_limit_keys{name=\"chat\"} 1\n"));
  CHECK_THAT(text, Catch::Contains("keel_concurrency_limit_acquired_total{name=\"chat\"} 1\n"));
  CHECK_THAT(text, Catch::Contains(
                       "keel_concurrency_limit_rejected_total{name=\"chat\",reason=\"max\"} 1\n"));
}

TEST_CASE("keyed concurrency limiter rejects long keys and bad options, naming them") {
  auto limiter = KeyedConcurrencyLimiter::Create({.name = "chat", .max = 1}).value();
  auto long_key = limiter->TryAcquire(std::string(1025, 'x'));
  REQUIRE_FALSE(long_key.ok());
  CHECK(long_key.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(long_key.status().message()), Catch::Contains("chat"));
  auto no_max = KeyedConcurrencyLimiter::Create({.name = "chat"});
  REQUIRE_FALSE(no_max.ok());
  CHECK_THAT(std::string(no_max.status().message()),
             Catch::Contains("keyed concurrency limiter \"chat\": max must be >= 1"));
  CHECK(KeyedConcurrencyLimiter::Create({.max = 1, .shards = 0}).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(KeyedConcurrencyLimiter::Create({.max = 1, .max_keys = 4, .shards = 8}).status().code() ==
        absl::StatusCode::kInvalidArgument);
}
