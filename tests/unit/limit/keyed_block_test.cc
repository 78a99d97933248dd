// Penalty blocks under memory pressure: a flood of distinct keys must never lift a block.
#include <catch2/catch.hpp>
#include <string>

#include "keel/limit/keyed.h"
#include "keel/limit/token_bucket.h"

using namespace std::chrono_literals;
using keel::limit::Decision;
using keel::limit::Keyed;
using keel::limit::TokenBucket;

namespace {

// One shard, so every key competes for the same max_keys slots.
std::unique_ptr<Keyed<TokenBucket>> Login(keel::ManualClock& clock, size_t max_keys) {
  return Keyed<TokenBucket>::Create(
             {.name = "login", .max_keys = max_keys, .block_for = 15min, .shards = 1},
             {{.rate = 1, .burst = 1}}, clock)
      .value();
}

}  // namespace

TEST_CASE("keyed limiter keeps a penalty block through a flood of max_keys distinct keys") {
  keel::ManualClock clock;
  auto keyed = Login(clock, 64);
  REQUIRE(keyed->TryAcquire("alice").value().allowed);
  REQUIRE_FALSE(keyed->TryAcquire("alice").value().allowed);  // denied: starts the block
  // "alice" is now the least recently used key; every new key after the 63rd needs room.
  for (int i = 0; i < 64; ++i) {
    clock.Advance(1ms);
    REQUIRE(keyed->TryAcquire("ip-" + std::to_string(i)).value().allowed);
  }
  CHECK(keyed->Stats().evicted_capacity_total > 0);
  const Decision d = keyed->TryAcquire("alice").value();
  CHECK_FALSE(d.allowed);
  CHECK(d.retry_after == 15min - 64ms);
  CHECK(keyed->Stats().blocked_denials_total == 1);
}

TEST_CASE("keyed limiter refuses a new key when every slot holds a block, and keeps the blocks") {
  keel::ManualClock clock;
  auto keyed = Login(clock, 4);
  for (int i = 0; i < 4; ++i) {
    const std::string key = "user-" + std::to_string(i);
    REQUIRE(keyed->TryAcquire(key).value().allowed);
    REQUIRE_FALSE(keyed->TryAcquire(key).value().allowed);  // blocked for 15 minutes
    clock.Advance(1s);
  }
  // Blocks end at 15min, 15min + 1s, ...: the first one in 15min - 4s.
  const Decision refused = keyed->TryAcquire("newcomer").value();
  CHECK_FALSE(refused.allowed);
  CHECK(refused.remaining == 0);
  CHECK(refused.retry_after == 15min - 4s);
  const keel::limit::KeyedStats stats = keyed->Stats();
  CHECK(stats.refused_full_total == 1);
  CHECK(stats.keys == 4);
  CHECK(stats.evicted_capacity_total == 0);
  for (int i = 0; i < 4; ++i) {
    CHECK_FALSE(keyed->TryAcquire("user-" + std::to_string(i)).value().allowed);
  }
  // Once the first block has ended its slot is free again.
  clock.Advance(15min - 4s);
  CHECK(keyed->TryAcquire("newcomer").value().allowed);
  CHECK(keyed->TryAcquire("user-3").value().allowed == false);
}
