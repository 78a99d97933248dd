// Server-free tests of keel::redis::RateLimiter's validation of more_limits and block_for.
#include <catch2/catch.hpp>
#include <string>

#include "keel/redis/client.h"
#include "keel/redis/rate_limiter.h"

using keel::Duration;
using keel::limit::Gcra;
using keel::limit::TokenBucket;
using keel::redis::RateLimiter;
using namespace std::chrono_literals;

TEST_CASE("redis rate limiter validates more_limits and block_for, naming the field") {
  // Create does no I/O: a client for a server that is not there is enough.
  auto client = keel::redis::Client::Create(keel::redis::Options{}).value();
  auto mixed = RateLimiter::Create({.name = "mixed",
                                    .algorithm = Gcra::Options{.count = 1, .period = 1s},
                                    .more_limits = {TokenBucket::Options{.rate = 1, .burst = 1}}},
                                   *client);
  REQUIRE_FALSE(mixed.ok());
  CHECK(mixed.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(std::string(mixed.status().message()).find("more_limits[0]") != std::string::npos);

  auto bad = RateLimiter::Create({.name = "bad",
                                  .algorithm = Gcra::Options{.count = 1, .period = 1s},
                                  .more_limits = {Gcra::Options{.count = 0, .period = 1s}}},
                                 *client);
  REQUIRE_FALSE(bad.ok());
  CHECK(std::string(bad.status().message()).find("gcra.count") != std::string::npos);

  RateLimiter::Options too_many{.name = "many",
                                .algorithm = Gcra::Options{.count = 1, .period = 1s}};
  too_many.more_limits.assign(16, Gcra::Options{.count = 1, .period = 1s});
  auto many = RateLimiter::Create(too_many, *client);
  REQUIRE_FALSE(many.ok());
  CHECK(std::string(many.status().message()).find("more_limits") != std::string::npos);

  for (Duration b : {Duration(0), Duration(-1s), Duration(1500ns)}) {
    auto blocked = RateLimiter::Create(
        {.name = "b", .algorithm = Gcra::Options{.count = 1, .period = 1s}, .block_for = b},
        *client);
    REQUIRE_FALSE(blocked.ok());
    CHECK(std::string(blocked.status().message()).find("block_for") != std::string::npos);
  }

  // Fifteen more limits and a whole-microsecond block are fine.
  too_many.more_limits.resize(15);
  too_many.block_for = 1500us;
  CHECK(RateLimiter::Create(too_many, *client).ok());
}
