// Keyed::Check, the dry run: the answer TryAcquire would give, with nothing changed.
#include <catch2/catch.hpp>
#include <string>

#include "keel/limit/gcra.h"
#include "keel/limit/keyed.h"
#include "keel/limit/sliding_window.h"

using namespace std::chrono_literals;
using keel::limit::Decision;
using keel::limit::Gcra;
using keel::limit::Keyed;
using keel::limit::SlidingWindowLog;

TEST_CASE("keyed Check answers as TryAcquire would and changes nothing") {
  keel::ManualClock clock;
  auto keyed = Keyed<Gcra>::Create({.block_for = 10min},
                                   {{.count = 3, .period = 1min, .max_burst = 2},
                                    {.count = 10, .period = 1h, .max_burst = 9}},
                                   clock)
                   .value();
  for (int i = 0; i < 10; ++i) REQUIRE(keyed->Check("k", 1).value().allowed);
  CHECK(keyed->Stats().keys == 0);  // a dry run adds no key
  for (int i = 0; i < 3; ++i) {
    const Decision predicted = keyed->Check("k", 1).value();
    const Decision got = keyed->TryAcquire("k", 1).value();
    CHECK(predicted == got);
  }
  // Full: the dry run predicts the denial with the block TryAcquire would start, starts none.
  const Decision predicted = keyed->Check("k", 1).value();
  CHECK_FALSE(predicted.allowed);
  CHECK(predicted.retry_after == 10min);
  const keel::limit::KeyedStats before = keyed->Stats();
  CHECK(before.denied_total == 0);
  CHECK(before.allowed_total == 3);
  clock.Advance(20s);  // one request's worth back: admitted, so no block was started
  CHECK(keyed->TryAcquire("k", 1).value().allowed);
  REQUIRE_FALSE(keyed->TryAcquire("k", 1).value().allowed);  // starts the block
  const Decision during = keyed->Check("k", 0).value();
  CHECK_FALSE(during.allowed);
  CHECK(during.retry_after == 10min);
  CHECK(keyed->Stats().blocked_denials_total == 0);  // Check counts nothing
}

TEST_CASE("keyed Check works for limiters whose peek tidies their state") {
  keel::ManualClock clock;
  auto keyed = Keyed<SlidingWindowLog>::Create({}, {{.limit = 2, .window = 1s}}, clock).value();
  REQUIRE(keyed->TryAcquire("k", 2).value().allowed);
  CHECK_FALSE(keyed->Check("k", 1).value().allowed);
  clock.Advance(1s);
  CHECK(keyed->Check("k", 2).value().allowed);
  CHECK(keyed->TryAcquire("k", 2).value().allowed);
}

TEST_CASE("keyed limiter refuses an empty key, as the Redis limiter does") {
  auto keyed = Keyed<Gcra>::Create({.name = "per-user"}, {{.count = 1}}).value();
  const auto empty = keyed->TryAcquire("");
  CHECK(empty.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(empty.status().message() ==
        "keyed rate limiter \"per-user\": key must be 1 to 1024 bytes, got 0");
  CHECK(keyed->Check("", 1).status().code() == absl::StatusCode::kInvalidArgument);
}
