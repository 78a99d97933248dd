// redis::Redlock against 3 and 5 real redis-servers of the test's own, some of them killed or
// paused: the majority rule, the cleanup after a failed attempt, fencing from the designated
// node, the watchdog, and Lockable.
#include "keel/redis/redlock.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "integration/redis/test_server.h"
#include "integration/redis_lock/helpers.h"

using keel::Deadline;
using keel::redis::LockGuard;
using keel::redis::Redlock;
using keel::test::UniqueName;
using namespace std::chrono_literals;

namespace {

// N servers and a client for each.
struct Cluster {
  explicit Cluster(int n) {
    for (int i = 0; i < n; ++i) {
      servers.push_back(std::make_unique<keel::test::RedisServer>());
      clients.push_back(keel::test::MakeRedisClient(servers.back()->url()));
    }
  }
  std::vector<keel::redis::Client*> nodes() const {
    std::vector<keel::redis::Client*> out;
    for (const auto& c : clients) out.push_back(c.get());
    return out;
  }
  // How many servers hold `key` (servers that do not answer count as not holding it).
  int Holding(const std::string& key) const {
    int n = 0;
    for (const auto& c : clients) {
      auto r = c->Command(Deadline::After(200ms), "EXISTS", key);
      if (r.ok() && r->integer() == 1) ++n;
    }
    return n;
  }
  std::vector<std::unique_ptr<keel::test::RedisServer>> servers;
  std::vector<std::unique_ptr<keel::redis::Client>> clients;
};

std::unique_ptr<Redlock> MakeRedlock(const Cluster& cluster, Redlock::Options options) {
  auto lock = Redlock::Create(std::move(options), cluster.nodes());
  REQUIRE(lock.ok());
  return std::move(*lock);
}

std::string KeyOf(const std::string& name) { return "{keel:lock:" + name + "}"; }

}  // namespace

TEST_CASE("redlock on 3 nodes holds on every node, excludes a second holder, releases everywhere",
          "[redis_lock]") {
  Cluster cluster(3);
  const std::string name = UniqueName("rl3");
  // Node timeouts with room for a loaded machine: the test expects every node to answer.
  auto a = MakeRedlock(cluster, {.name = name, .ttl = 5s, .node_timeout = 300ms});
  auto b = MakeRedlock(cluster, {.name = name, .ttl = 5s, .node_timeout = 300ms});
  auto held = a->TryAcquire(Deadline::After(1s));
  REQUIRE(held.ok());
  REQUIRE(held->has_value());
  LockGuard guard = std::move(**held);
  CHECK(cluster.Holding(KeyOf(name)) == 3);
  CHECK(guard.fencing_token() == 1);
  CHECK(guard.Validity() > 4500ms);
  auto contended = b->TryAcquire(Deadline::After(1s));
  REQUIRE(contended.ok());
  CHECK_FALSE(contended->has_value());
  CHECK(b->Stats().contended_total == 1);
  REQUIRE(guard.Release().ok());
  CHECK(cluster.Holding(KeyOf(name)) == 0);
  auto next = b->TryAcquire(Deadline::After(1s));
  REQUIRE(next.ok());
  REQUIRE(next->has_value());
  CHECK((*next)->fencing_token() == 2);  // the designated node's counter
}

TEST_CASE("redlock releases its minority after a failed attempt", "[redis_lock]") {
  Cluster cluster(3);
  const std::string name = UniqueName("split");
  // Someone else holds the lock on two nodes (a majority); our attempt wins only the third.
  for (int i = 0; i < 2; ++i) {
    REQUIRE(cluster.clients[i]
                ->Command(Deadline::After(1s), "SET", KeyOf(name), "someone-else", "PX", 5000)
                .ok());
  }
  auto lock = MakeRedlock(cluster, {.name = name, .ttl = 5s});
  auto got = lock->TryAcquire(Deadline::After(1s));
  REQUIRE(got.ok());
  CHECK_FALSE(got->has_value());
  // The third node's grant was taken back at once, not left to expire after the ttl.
  CHECK(cluster.clients[2]->Command(Deadline::After(1s), "EXISTS", KeyOf(name))->integer() == 0);
  CHECK(cluster.clients[0]->Command(Deadline::After(1s), "GET", KeyOf(name))->str() ==
        "someone-else");
}

TEST_CASE("redlock on 5 nodes acquires with 2 killed and fails within the deadline with 3 killed",
          "[redis_lock]") {
  Cluster cluster(5);
  const std::string name = UniqueName("rl5");
  auto lock = MakeRedlock(
      cluster, {.name = name,
                .ttl = 2s,
                .node_timeout = 200ms,
                .fencing_node = 4,
                .retry = {.kind = keel::Backoff::Kind::kFullJitter, .base = 5ms, .cap = 20ms}});
  cluster.servers[0]->Kill();
  cluster.servers[1]->Kill();
  {
    auto guard = lock->Acquire(Deadline::After(2s));
    REQUIRE(guard.ok());
    CHECK(cluster.Holding(KeyOf(name)) == 3);
    CHECK(guard->fencing_token().has_value());  // node 4 is up
    CHECK(guard->Release().ok());               // a majority released
  }
  cluster.servers[2]->Kill();
  auto once = lock->TryAcquire(Deadline::After(1s));
  CHECK(absl::IsUnavailable(once.status()));
  CHECK(once.status().message().find("redlock \"" + name +
                                     "\": only 2 of 5 nodes answered (3 "
                                     "needed)") == 0);
  const auto t0 = std::chrono::steady_clock::now();
  auto waited = lock->Acquire(Deadline::After(300ms));
  const auto took = std::chrono::steady_clock::now() - t0;
  CHECK(absl::IsDeadlineExceeded(waited.status()));
  CHECK(waited.status().message().find("last error") != std::string::npos);
  CHECK(took < 600ms);
  // The two nodes that did grant were released after every failed attempt.
  CHECK(cluster.Holding(KeyOf(name)) == 0);
}

TEST_CASE("redlock on 5 nodes with 2 paused acquires within the node timeout, with 3 fails in time",
          "[redis_lock]") {
  Cluster cluster(5);
  const std::string name = UniqueName("paused5");
  auto lock =
      MakeRedlock(cluster, {.name = name, .ttl = 2s, .node_timeout = 100ms, .fencing_node = 0});
  cluster.servers[0]->Stop();
  cluster.servers[3]->Stop();
  const auto t0 = std::chrono::steady_clock::now();
  auto got = lock->TryAcquire(Deadline::After(1s));
  const auto took = std::chrono::steady_clock::now() - t0;
  REQUIRE(got.ok());
  REQUIRE(got->has_value());
  CHECK(took < 500ms);  // bounded by node_timeout, not by the paused servers
  // The paused designated node gave no fencing token; the validity paid for the wait.
  CHECK_FALSE((*got)->fencing_token().has_value());
  CHECK((*got)->Validity() < 2s - 20ms - 100ms);
  CHECK((*got)->Release().ok());
  // A third paused node leaves no majority: Acquire gives up by its deadline.
  cluster.servers[4]->Stop();
  const auto t1 = std::chrono::steady_clock::now();
  auto refused = lock->Acquire(Deadline::After(300ms));
  const auto waited = std::chrono::steady_clock::now() - t1;
  CHECK(absl::IsDeadlineExceeded(refused.status()));
  CHECK(waited < 1s);
  for (int i : {0, 3, 4}) cluster.servers[i]->Continue();
}

TEST_CASE("redlock watchdog keeps the lock past its ttl with a node killed meanwhile",
          "[redis_lock]") {
  Cluster cluster(3);
  const std::string name = UniqueName("rlwatch");
  keel::test::LostProbe lost;
  auto lock = MakeRedlock(cluster, {.name = name,
                                    .ttl = 1s,
                                    .node_timeout = 100ms,
                                    .watchdog = true,
                                    .on_lost = lost.callback()});
  auto other = MakeRedlock(cluster, {.name = name, .ttl = 1s, .node_timeout = 100ms});
  auto guard = lock->Acquire(Deadline::After(1s));
  REQUIRE(guard.ok());
  // Two ttls, a node killed after the first extension.
  const auto until = std::chrono::steady_clock::now() + 2s;
  bool killed = false;
  while (std::chrono::steady_clock::now() < until) {
    if (!killed && std::chrono::steady_clock::now() > until - 1600ms) {
      cluster.servers[1]->Kill();
      killed = true;
    }
    auto attempt = other->TryAcquire(Deadline::After(1s));
    CHECK((!attempt.ok() || !attempt->has_value()));
    std::this_thread::sleep_for(50ms);
  }
  CHECK_FALSE(guard->lost());
  CHECK(guard->Validity() > 0s);
  CHECK(lock->Stats().extended_total >= 5);  // every ttl/3 = 333 ms
  CHECK(cluster.Holding(KeyOf(name)) == 2);
  // Losing a second node leaves no majority: the next extension fails, and the lease is lost.
  cluster.servers[2]->Kill();
  CHECK_FALSE(lost.future.Get(Deadline::After(3s)).ok());
  CHECK(guard->lost());
  CHECK(guard->cancellation().cancelled());
}

TEST_CASE("redlock works with std::unique_lock: try_lock_for, and lock() after the holder unlocks",
          "[redis_lock]") {
  Cluster cluster(3);
  const std::string name = UniqueName("lockable");
  auto a = MakeRedlock(cluster, {.name = name, .ttl = 5s, .node_timeout = 300ms});
  auto b = MakeRedlock(
      cluster, {.name = name,
                .ttl = 5s,
                .retry = {.kind = keel::Backoff::Kind::kFullJitter, .base = 5ms, .cap = 20ms}});
  std::unique_lock<Redlock> held(*a);
  CHECK(held.owns_lock());
  CHECK(cluster.Holding(KeyOf(name)) == 3);
  {
    std::unique_lock<Redlock> second(*b, std::defer_lock);
    CHECK_FALSE(second.try_lock_for(100ms));
    CHECK_FALSE(second.try_lock());
  }
  std::thread unlocker([&] {
    std::this_thread::sleep_for(100ms);
    held.unlock();
  });
  {
    std::unique_lock<Redlock> waiting(*b);  // lock(): blocks until the holder unlocks
    CHECK(waiting.owns_lock());
    unlocker.join();
    // A majority: an attempt racing the holder's release may find one node not released yet.
    CHECK(cluster.Holding(KeyOf(name)) >= 2);
  }
  CHECK(cluster.Holding(KeyOf(name)) == 0);
}
