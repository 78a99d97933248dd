// Helpers for the Redis rate-limiter integration tests. Test code only.
#pragma once

#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <string_view>

#include "keel/limit/decision.h"
#include "keel/redis/client.h"
#include "keel/redis/rate_limiter.h"
#include "support/subprocess.h"

namespace keel::test {

inline std::unique_ptr<redis::Client> MakeRedisClient(const std::string& url, int max_size = 4) {
  auto o = redis::Options::FromUrl(url);
  REQUIRE(o.ok());
  o->pool.max_size = max_size;
  auto c = redis::Client::Create(*o);
  REQUIRE(c.ok());
  return std::move(*c);
}

inline std::unique_ptr<redis::Client> SharedRedisClient(int max_size = 4) {
  return MakeRedisClient(RequireEnv("KEEL_TEST_REDIS_URL"), max_size);
}

inline std::unique_ptr<redis::RateLimiter> MakeLimiter(redis::Client& client,
                                                       redis::RateLimiter::Options options) {
  auto l = redis::RateLimiter::Create(std::move(options), client);
  REQUIRE(l.ok());
  return std::move(*l);
}

// An in-process Decision as the Redis limiter gives it: Redis keeps microseconds, so its
// durations are the in-process ones rounded up (the documented difference); every other field,
// the estimate included, is the same.
inline limit::Decision AtMicrosecondResolution(limit::Decision d) {
  for (Duration* t : {&d.reset_after, &d.retry_after}) {
    if (*t != limit::kNever) *t = std::chrono::ceil<std::chrono::microseconds>(*t);
  }
  return d;
}

// A limiter name no other test (or earlier run of this one) uses, so tests on the shared server
// never see each other's keys.
inline std::string UniqueName(std::string_view base) {
  static int counter = 0;
  const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  return std::string(base) + "-" + std::to_string(::getpid()) + "-" + std::to_string(now) + "-" +
         std::to_string(++counter);
}

// A server time (microseconds since the epoch) on a boundary of every window the tests use
// (a whole number of days), near the present so it behaves like TIME.
inline constexpr std::chrono::microseconds kTestEpoch = std::chrono::hours(24) * 20'000;

}  // namespace keel::test
