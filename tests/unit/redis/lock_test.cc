// Server-free tests of keel::redis::Lock and Redlock: the lease arithmetic, the majority rule,
// tokens, and option validation (Create does no I/O).
#include "keel/redis/lock.h"

#include <catch2/catch.hpp>
#include <set>
#include <string>

#include "keel/async/timer.h"
#include "keel/redis/client.h"
#include "keel/redis/redlock.h"
#include "redis/lease.h"

using keel::redis::Lock;
using keel::redis::internal::DriftAllowance;
using keel::redis::internal::LeaseValidity;
using keel::redis::internal::Quorum;
using keel::redis::internal::RedlockHolds;
using namespace std::chrono_literals;

TEST_CASE("lock validity is ttl minus elapsed minus ttl/100 + 2 ms, never negative") {
  CHECK(DriftAllowance(10s) == 102ms);
  CHECK(DriftAllowance(100ms) == 3ms);
  CHECK(LeaseValidity(10s, 0s) == 10s - 102ms);
  CHECK(LeaseValidity(10s, 4s) == 6s - 102ms);
  CHECK(LeaseValidity(10s, 9898ms - 1ns) == 1ns);
  CHECK(LeaseValidity(10s, 9898ms) == 0s);
  CHECK(LeaseValidity(10s, 20s) == 0s);
  CHECK(LeaseValidity(100ms, 0s) == 97ms);
}

TEST_CASE("redlock holds with a strict majority of nodes and validity left") {
  CHECK(Quorum(1) == 1);
  CHECK(Quorum(2) == 2);
  CHECK(Quorum(3) == 2);
  CHECK(Quorum(4) == 3);
  CHECK(Quorum(5) == 3);
  CHECK(RedlockHolds(3, 5, 1s, 10ms));
  CHECK_FALSE(RedlockHolds(2, 5, 1s, 10ms));
  CHECK(RedlockHolds(2, 3, 1s, 10ms));
  CHECK_FALSE(RedlockHolds(1, 3, 1s, 10ms));
  CHECK_FALSE(RedlockHolds(2, 4, 1s, 10ms));  // half is not a majority
  // A majority that took the whole validity to gather holds nothing.
  CHECK(RedlockHolds(5, 5, 1s, 1s - 12ms - 1ns));
  CHECK_FALSE(RedlockHolds(5, 5, 1s, 1s - 12ms));
}

TEST_CASE("lock tokens are 128 random bits in hex, distinct") {
  std::set<std::string> seen;
  for (int i = 0; i < 1000; ++i) {
    const std::string t = keel::redis::internal::NewLockToken();
    CHECK(t.size() == 32);
    CHECK(t.find_first_not_of("0123456789abcdef") == std::string::npos);
    seen.insert(t);
  }
  CHECK(seen.size() == 1000);
}

TEST_CASE("redis lock rejects bad options naming the field") {
  auto client = keel::redis::Client::Create(keel::redis::Options{}).value();
  auto err = [&](Lock::Options o) {
    return std::string(Lock::Create(o, *client).status().message());
  };
  CHECK(err({.name = ""}) == "redis lock \"\": name must be 1 to 128 bytes, got 0 bytes");
  CHECK(err({.name = "x", .ttl = 0s}) ==
        "redis lock \"x\": ttl must be in [10ms, 365 days], got 0");
  CHECK(err({.name = "x", .ttl = 1500us}).find("ttl must be in") != std::string::npos);
  CHECK(err({.name = "x", .ttl = 10500us}) ==
        "redis lock \"x\": ttl must be a whole number of milliseconds, got 10.5ms");
  CHECK(err({.name = "x", .retry = {.base = 0s}}).find("redis lock \"x\": retry.base") == 0);
  CHECK(err({.name = "x", .release_timeout = 0s}).find("release_timeout must be > 0") !=
        std::string::npos);
  auto pooled = keel::redis::Options{};
  pooled.transport = keel::redis::Transport::kPooled;
  auto pooled_client = keel::redis::Client::Create(pooled).value();
  CHECK(Lock::Create({.name = "x", .watchdog = true}, *pooled_client).status().message() ==
        "redis lock \"x\": watchdog must be used with a client on the multiplexed transport, got a "
        "pooled client");
  // Without the watchdog a pooled client is fine.
  CHECK(Lock::Create({.name = "x"}, *pooled_client).ok());
  keel::ManualClock other_clock;
  auto timer = keel::Timer::Create({}, other_clock).value();
  CHECK(
      Lock::Create({.name = "x", .watchdog = true}, *client, keel::SteadyClock(), nullptr,
                   timer.get())
          .status()
          .message() ==
      "redis lock \"x\": timer must be a Timer on the lock's clock, got a Timer on another clock");
}

TEST_CASE("redlock rejects bad options naming the field") {
  auto client = keel::redis::Client::Create(keel::redis::Options{}).value();
  auto err = [&](keel::redis::Redlock::Options o, std::vector<keel::redis::Client*> nodes) {
    return std::string(keel::redis::Redlock::Create(o, nodes).status().message());
  };
  const std::vector<keel::redis::Client*> one = {client.get()};
  CHECK(err({.name = "x", .node_timeout = 0s}, one) ==
        "redlock \"x\": node_timeout must be in (0, ttl / 10 = 3s], got 0");
  CHECK(err({.name = "x", .ttl = 100ms, .node_timeout = 50ms}, one) ==
        "redlock \"x\": node_timeout must be in (0, ttl / 10 = 10ms], got 50ms");
  CHECK(err({.name = "x"}, {}) == "redlock \"x\": nodes must be non-empty, got none");
  CHECK(err({.name = "x"}, {one[0], one[0]}) ==
        "redlock \"x\": nodes[1] must be a distinct client, got a repeated one");
  CHECK(err({.name = "x"}, {one[0], nullptr}) ==
        "redlock \"x\": nodes[1] must be a client, got null");
  CHECK(err({.name = "x", .fencing_node = 1}, one) ==
        "redlock \"x\": fencing_node must be < 1, got 1");
  CHECK(err({.name = ""}, one).find("name must be 1 to 128 bytes") != std::string::npos);
  keel::redis::Options pooled;
  pooled.transport = keel::redis::Transport::kPooled;
  auto pooled_client = keel::redis::Client::Create(pooled).value();
  CHECK(err({.name = "x"}, {client.get(), pooled_client.get()}) ==
        "redlock \"x\": nodes[1] must be a client on the multiplexed transport, got a pooled "
        "client");
}
