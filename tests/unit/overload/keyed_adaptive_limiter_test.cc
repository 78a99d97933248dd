#include "keel/overload/keyed_adaptive_limiter.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "unit/overload/fake_limit.h"

namespace {

using namespace std::chrono_literals;
using keel::overload::KeyedAdaptiveLimiter;

KeyedAdaptiveLimiter::AlgorithmFactory Fixed(int limit) {
  return [limit]() -> absl::StatusOr<std::unique_ptr<keel::overload::LimitAlgorithm>> {
    return std::make_unique<keel_test::FakeLimit>(limit);
  };
}

std::unique_ptr<KeyedAdaptiveLimiter> Make(keel::ManualClock& clock, size_t max_keys = 100,
                                           keel::MetricsRegistry* metrics = nullptr) {
  auto k = KeyedAdaptiveLimiter::Create(
      {.name = "tenants", .max_keys = max_keys, .idle_ttl = 1min, .shards = 1}, Fixed(2), clock,
      metrics);
  REQUIRE(k.ok());
  return std::move(k).value();
}

TEST_CASE("keyed adaptive limiter keeps one limit per key") {
  keel::ManualClock clock;
  auto k = Make(clock);
  auto a1 = k->TryAcquire("a");
  auto a2 = k->TryAcquire("a");
  REQUIRE(a1.ok());
  REQUIRE(a2.ok());
  auto a3 = k->TryAcquire("a");
  REQUIRE_FALSE(a3.ok());
  CHECK(a3.status().message() == "adaptive limiter \"tenants/a\": limit reached (2/2 in flight)");
  CHECK(k->TryAcquire("b").ok());  // another key, another limit
  CHECK(k->Stats("a")->in_flight == 2);
  CHECK_FALSE(k->Stats("zzz").has_value());
  CHECK(k->Stats().keys == 2);
  a1->OnSuccess();
  CHECK(k->Stats("a")->success_total == 1);
  CHECK(k->TryAcquire("a").ok());
}

TEST_CASE("keyed adaptive limiter evicts the least recently used idle key for a new one") {
  keel::ManualClock clock;
  auto k = Make(clock, 2);
  k->TryAcquire("old")->OnSuccess();
  clock.Advance(1s);
  k->TryAcquire("newer")->OnSuccess();
  clock.Advance(1s);
  k->TryAcquire("third")->OnSuccess();  // full: "old" goes
  CHECK(k->Stats().evicted_capacity_total == 1);
  CHECK_FALSE(k->Stats("old").has_value());
  CHECK(k->Stats("newer").has_value());
}

TEST_CASE("keyed adaptive limiter never evicts a key in use and refuses a new key instead") {
  keel::ManualClock clock;
  auto k = Make(clock, 2);
  auto a = k->TryAcquire("a");
  auto b = k->TryAcquire("b");
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  auto c = k->TryAcquire("c");
  REQUIRE_FALSE(c.ok());
  CHECK(absl::IsResourceExhausted(c.status()));
  CHECK(std::string(c.status().message()).find("no room for a new key") != std::string::npos);
  CHECK(k->Stats().refused_capacity_total == 1);
  a->OnSuccess();  // "a" is idle now: it can make room
  CHECK(k->TryAcquire("c").ok());
  CHECK_FALSE(k->Stats("a").has_value());
}

TEST_CASE("keyed adaptive limiter drops keys idle for idle_ttl") {
  keel::ManualClock clock;
  auto k = Make(clock);
  k->TryAcquire("a")->OnSuccess();
  auto held = k->TryAcquire("busy");
  clock.Advance(1min);
  CHECK(k->TryAcquire("b").ok());  // the sweep runs on a call
  CHECK_FALSE(k->Stats("a").has_value());
  CHECK(k->Stats("busy").has_value());  // in use: kept
  CHECK(k->Stats().evicted_idle_total == 1);
}

TEST_CASE("keyed adaptive limiter permit outlives its key's eviction") {
  keel::ManualClock clock;
  auto k = Make(clock, 1);
  auto p = k->TryAcquire("a");
  REQUIRE(p.ok());
  KeyedAdaptiveLimiter::Permit moved = std::move(*p);
  CHECK(moved.held());
  moved.OnSuccess();
  CHECK_FALSE(moved.held());
}

TEST_CASE("keyed adaptive limiter validates keys, options and the factory") {
  keel::ManualClock clock;
  auto k = Make(clock);
  CHECK(absl::IsInvalidArgument(k->TryAcquire("").status()));
  CHECK(absl::IsInvalidArgument(k->TryAcquire(std::string(1025, 'x')).status()));
  CHECK(KeyedAdaptiveLimiter::Create({.name = "t", .max_keys = 4, .shards = 8}, Fixed(1), clock)
            .status()
            .message() == "keyed adaptive limiter \"t\": max_keys must be >= 8, got 4");
  auto failing = []() -> absl::StatusOr<std::unique_ptr<keel::overload::LimitAlgorithm>> {
    return absl::InvalidArgumentError("bad algorithm");
  };
  CHECK(KeyedAdaptiveLimiter::Create({.name = "t"}, failing, clock).status().message() ==
        "bad algorithm");
  CHECK_FALSE(KeyedAdaptiveLimiter::Create({.name = "t"}, nullptr, clock).ok());
}

TEST_CASE("keyed adaptive limiter registers its series") {
  keel::ManualClock clock;
  keel::MetricsRegistry metrics;
  auto k = Make(clock, 100, &metrics);
  k->TryAcquire("a")->OnSuccess();
  const std::string text = metrics.RenderPrometheus();
  CHECK(text.find("keel_adaptive_limit_keys{name=\"tenants\"} 1") != std::string::npos);
  CHECK(text.find("keel_adaptive_limit_key_evictions_total{name=\"tenants\",reason=\"idle\"} 0") !=
        std::string::npos);
  CHECK(text.find("keel_adaptive_limit_key_refused_total{name=\"tenants\"} 0") !=
        std::string::npos);
}

}  // namespace
