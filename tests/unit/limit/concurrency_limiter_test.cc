#include "keel/limit/concurrency_limiter.h"

#include <catch2/catch.hpp>
#include <vector>

using keel::limit::ConcurrencyLimiter;

TEST_CASE("concurrency limiter hands out at most max permits") {
  auto limiter = ConcurrencyLimiter::Create({.max = 2}).value();
  auto a = limiter->TryAcquire();
  auto b = limiter->TryAcquire();
  REQUIRE(a.has_value());
  REQUIRE(b.has_value());
  CHECK_FALSE(limiter->TryAcquire().has_value());
  CHECK(limiter->in_flight() == 2);
}

TEST_CASE("concurrency limiter permit frees its slot when destroyed or released, once") {
  auto limiter = ConcurrencyLimiter::Create({.max = 1}).value();
  {
    auto p = limiter->TryAcquire();
    REQUIRE(p.has_value());
    CHECK_FALSE(limiter->TryAcquire().has_value());
  }
  CHECK(limiter->in_flight() == 0);
  auto p = limiter->TryAcquire();
  REQUIRE(p.has_value());
  p->Release();
  p->Release();
  CHECK_FALSE(p->held());
  CHECK(limiter->in_flight() == 0);
  auto q = limiter->TryAcquire();
  CHECK(q.has_value());
}

TEST_CASE("concurrency limiter permits move without double release") {
  auto limiter = ConcurrencyLimiter::Create({.max = 2}).value();
  std::vector<ConcurrencyLimiter::Permit> held;
  held.push_back(*limiter->TryAcquire());
  held.push_back(*limiter->TryAcquire());
  ConcurrencyLimiter::Permit moved = std::move(held[0]);
  CHECK_FALSE(held[0].held());
  CHECK(moved.held());
  held.clear();
  CHECK(limiter->in_flight() == 1);
  moved = *limiter->TryAcquire();  // releases the old slot, takes a new one
  CHECK(limiter->in_flight() == 1);
}

TEST_CASE("concurrency limiter rejects a max below one naming the field") {
  auto bad = ConcurrencyLimiter::Create({.max = 0});
  REQUIRE_FALSE(bad.ok());
  CHECK(std::string(bad.status().message()).find("concurrency_limiter.max") != std::string::npos);
}

TEST_CASE("concurrency limiter counts acquisitions and rejections in Stats") {
  auto limiter = ConcurrencyLimiter::Create({.max = 1}).value();
  {
    auto a = limiter->TryAcquire();
    REQUIRE(a.has_value());
    CHECK_FALSE(limiter->TryAcquire().has_value());
    CHECK(limiter->Stats().in_flight == 1);
  }
  REQUIRE(limiter->TryAcquire().has_value());
  const keel::limit::ConcurrencyLimiterStats stats = limiter->Stats();
  CHECK(stats.acquired_total == 2);
  CHECK(stats.rejected_total == 1);
  CHECK(stats.in_flight == 0);
}
