// postgres::Router against a real primary and a streaming replica (pg_basebackup -R) started by
// the test: reads go to the replica, writes to the primary, reads fall back while the replica is
// down and return when it is back; a replica lagging past the bound is skipped.
#include "keel/postgres/router.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "support/postgres_server.h"

namespace keel::postgres {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Pool> PoolFor(const test::PgServer& server, const std::string& name,
                              int max_size = 2) {
  return Pool::Create(
             {.conninfo = server.url(),
              .pool = {.name = name, .max_size = max_size, .background_maintenance = false}})
      .value();
}

// Which server answered: true on the replica.
absl::StatusOr<bool> InRecovery(Router& router, Consistency c) {
  return router.RunRead(Deadline::After(5s), c, [](pqxx::work& tx) {
    return tx.exec1("SELECT pg_is_in_recovery()")[0].as<bool>();
  });
}

template <typename Pred>
bool Eventually(Pred pred, std::chrono::milliseconds limit = 10s) {
  const auto give_up = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < give_up) {
    if (pred()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

struct Cluster {
  std::unique_ptr<test::PgServer> primary;
  std::unique_ptr<test::PgServer> replica;
};

Cluster StartCluster() {
  Cluster c;
  auto primary = test::PgServer::StartPrimary();
  REQUIRE(primary.ok());
  c.primary = std::move(*primary);
  auto replica = test::PgServer::StartReplicaOf(*c.primary);
  REQUIRE(replica.ok());
  c.replica = std::move(*replica);
  return c;
}

// A router over `cluster` with `max_replay_lag` (measured every 50 ms) and a table t created
// through it.
std::unique_ptr<Router> LagBoundRouter(const Cluster& cluster, Duration max_replay_lag) {
  std::vector<std::unique_ptr<Pool>> replicas;
  replicas.push_back(PoolFor(*cluster.replica, "pg-replica"));
  auto router = Router::Create({.max_replay_lag = max_replay_lag, .lag_check_interval = 50ms},
                               PoolFor(*cluster.primary, "pg-primary"), std::move(replicas))
                    .value();
  REQUIRE(
      router
          ->RunWrite(Deadline::After(5s), [](pqxx::work& tx) { tx.exec("CREATE TABLE t (v int)"); })
          .ok());
  return router;
}

TEST_CASE("router reads from the replica, writes to the primary, falls back and returns",
          "[postgres][router]") {
  Cluster cluster = StartCluster();
  std::vector<std::unique_ptr<Pool>> replicas;
  replicas.push_back(PoolFor(*cluster.replica, "pg-replica"));
  auto router = Router::Create({.failure_cooldown = 300ms}, PoolFor(*cluster.primary, "pg-primary"),
                               std::move(replicas))
                    .value();

  REQUIRE(router
              ->RunWrite(Deadline::After(5s),
                         [](pqxx::work& tx) {
                           tx.exec("CREATE TABLE diary (id int PRIMARY KEY)");
                           tx.exec("INSERT INTO diary VALUES (1)");
                         })
              .ok());
  CHECK(InRecovery(*router, Consistency::kEventual).value() == true);
  CHECK(InRecovery(*router, Consistency::kReadYourWrites).value() == false);
  // The replica catches up with the write (asynchronous streaming).
  CHECK(Eventually([&] {
    auto n = router->RunRead(Deadline::After(5s), Consistency::kEventual, [](pqxx::work& tx) {
      return tx.exec1("SELECT count(*) FROM diary")[0].as<int>();
    });
    return n.ok() && *n == 1;
  }));
  // A write through a read lease that landed on the replica is refused by the server.
  auto wrong = router->RunRead(Deadline::After(5s), Consistency::kEventual, [](pqxx::work& tx) {
    tx.exec("INSERT INTO diary VALUES (2)");
    return 0;
  });
  CHECK(wrong.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(wrong.status().message().find("read-only transaction") != absl::string_view::npos);
  // TransactWrite goes to the primary and counts as a write.
  const uint64_t writes = router->Stats().writes_total;
  CHECK(router
            ->TransactWrite(
                Deadline::After(5s),
                [](Transaction& tx) { return tx.Execute("INSERT INTO diary VALUES (3)").status(); })
            .ok());
  CHECK(router->Stats().writes_total == writes + 1);

  // Replica down: reads succeed on the primary (at most the one read on a stale connection is
  // retried there by RunRead).
  REQUIRE(cluster.replica->Stop("fast").ok());
  for (int i = 0; i < 5; ++i) {
    auto on_replica = InRecovery(*router, Consistency::kEventual);
    REQUIRE(on_replica.ok());
    CHECK(*on_replica == false);
  }
  CHECK(router->Stats().fallbacks_total >= 4);
  CHECK(router->Stats().replica_failures_total >= 1);
  auto raw = router->Read(Deadline::After(5s));
  REQUIRE(raw.ok());

  // Replica back: once its cooldown has passed, reads return to it.
  REQUIRE(cluster.replica->Start().ok());
  CHECK(Eventually([&] {
    auto on_replica = InRecovery(*router, Consistency::kEventual);
    return on_replica.ok() && *on_replica;
  }));
}

TEST_CASE("router skips a replica whose replay lag exceeds the bound", "[postgres][router]") {
  Cluster cluster = StartCluster();
  auto router = LagBoundRouter(cluster, 200ms);
  CHECK(Eventually([&] { return InRecovery(*router, Consistency::kEventual).value_or(false); }));

  // Pause replay on the replica, then write: it receives the WAL but falls behind.
  REQUIRE(cluster.replica->Psql("SELECT pg_wal_replay_pause()").ok());
  std::this_thread::sleep_for(400ms);
  REQUIRE(router
              ->RunWrite(Deadline::After(5s),
                         [](pqxx::work& tx) { tx.exec("INSERT INTO t VALUES (1)"); })
              .ok());
  REQUIRE(Eventually([&] {
    return cluster.replica->Psql("SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()")
               .value_or("") == "t";
  }));
  std::this_thread::sleep_for(100ms);  // let the last measurement go stale
  CHECK(Eventually(
      [&] { return InRecovery(*router, Consistency::kEventual).value_or(true) == false; }, 2s));
  const uint64_t fallbacks = router->Stats().fallbacks_total;
  CHECK(InRecovery(*router, Consistency::kEventual).value_or(true) == false);
  CHECK(router->Stats().fallbacks_total == fallbacks + 1);

  REQUIRE(cluster.replica->Psql("SELECT pg_wal_replay_resume()").ok());
  CHECK(Eventually([&] { return InRecovery(*router, Consistency::kEventual).value_or(false); }));
}

// The replica's WAL receiver pointed at a dead port: it stays up, answers reads, and its received
// and replayed positions agree, but it gets nothing new from the primary.
void CutOff(test::PgServer& replica) {
  REQUIRE(replica.Psql("ALTER SYSTEM SET primary_conninfo = 'host=127.0.0.1 port=1 user=postgres'")
              .ok());
  REQUIRE(replica.Psql("SELECT pg_reload_conf()").ok());
  REQUIRE(Eventually([&] {
    return replica.Psql("SELECT count(*) FROM pg_stat_wal_receiver").value_or("") == "0";
  }));
}

TEST_CASE("router lag bound holds from the very first reads", "[postgres][router]") {
  Cluster cluster = StartCluster();
  REQUIRE(cluster.primary->Psql("CREATE TABLE t (v int)").ok());
  REQUIRE(Eventually([&] {
    return cluster.replica->Psql("SELECT count(*) FROM pg_class WHERE relname = 't'")
               .value_or("") == "1";
  }));
  REQUIRE(cluster.replica->Psql("SELECT pg_wal_replay_pause()").ok());
  std::this_thread::sleep_for(1500ms);
  REQUIRE(cluster.primary->Psql("INSERT INTO t VALUES (1)").ok());
  REQUIRE(Eventually([&] {
    return cluster.replica->Psql("SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()")
               .value_or("") == "t";
  }));
  std::vector<std::unique_ptr<Pool>> replicas;
  replicas.push_back(PoolFor(*cluster.replica, "pg-replica", 8));
  auto router = Router::Create({.max_replay_lag = 1s}, PoolFor(*cluster.primary, "pg-primary", 8),
                               std::move(replicas))
                    .value();
  // Eight first reads at once: one measures, none may use the replica before it is measured.
  std::atomic<int> ready{0};
  std::atomic<int> on_replica{0};
  std::atomic<int> failed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      ready.fetch_add(1);
      while (ready.load() < 8) std::this_thread::yield();
      auto r = InRecovery(*router, Consistency::kEventual);
      if (!r.ok()) {
        failed.fetch_add(1);
      } else if (*r) {
        on_replica.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failed.load() == 0);
  CHECK(on_replica.load() == 0);
  CHECK(router->Stats().lag_checks_total >= 1);
  CHECK(router->Stats().primary_reads_total == 8);
  REQUIRE(cluster.replica->Psql("SELECT pg_wal_replay_resume()").ok());
  CHECK(Eventually([&] { return InRecovery(*router, Consistency::kEventual).value_or(false); }));
}

TEST_CASE("router stops reading from a replica cut off from its primary once the primary writes",
          "[postgres][router]") {
  Cluster cluster = StartCluster();
  auto router = LagBoundRouter(cluster, 300ms);
  // Current, and the primary idle: no lag although its last commit is getting old.
  std::this_thread::sleep_for(500ms);
  CHECK(Eventually([&] { return InRecovery(*router, Consistency::kEventual).value_or(false); }));
  CutOff(*cluster.replica);
  REQUIRE(router
              ->RunWrite(Deadline::After(5s),
                         [](pqxx::work& tx) { tx.exec("INSERT INTO t VALUES (1)"); })
              .ok());
  // What a "received == replayed means no lag" rule would have believed forever:
  CHECK(cluster.replica->Psql("SELECT pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn()")
            .value_or("") == "t");
  std::this_thread::sleep_for(400ms);
  CHECK(Eventually(
      [&] { return InRecovery(*router, Consistency::kEventual).value_or(true) == false; }, 2s));
  for (int i = 0; i < 5; ++i) {
    std::this_thread::sleep_for(60ms);  // past lag_check_interval: measured again each time
    CHECK(InRecovery(*router, Consistency::kEventual).value_or(true) == false);
  }
  CHECK(router->Stats().lag_skips_total >= 5);
}

TEST_CASE("router with read_attempts = 1 leaves every retry to the caller", "[postgres][router]") {
  Cluster cluster = StartCluster();
  std::vector<std::unique_ptr<Pool>> replicas;
  replicas.push_back(PoolFor(*cluster.replica, "pg-replica"));
  auto router = Router::Create({.failure_cooldown = 10s, .read_attempts = 1},
                               PoolFor(*cluster.primary, "pg-primary"), std::move(replicas))
                    .value();
  REQUIRE(cluster.replica->Stop("fast").ok());
  int calls = 0;
  auto read = [&] {
    return router->RunRead(Deadline::After(5s), Consistency::kEventual, [&](pqxx::work& tx) {
      ++calls;
      return tx.exec1("SELECT pg_is_in_recovery()")[0].as<bool>();
    });
  };
  auto first = read();
  CHECK(first.status().code() == absl::StatusCode::kUnavailable);
  CHECK(first.status().message().find("postgres pool \"pg-replica\"") == 0);
  CHECK(calls == 0);
  CHECK(router->Stats().read_retries_total == 0);
  auto second = read();  // the replica is cooling down: straight to the primary
  REQUIRE(second.ok());
  CHECK(*second == false);
  CHECK(calls == 1);
  CHECK(router->Stats().replica_failures_total == 1);
}

TEST_CASE("router reads end by their deadline while a replica is paused, served by the primary",
          "[postgres][router]") {
  Cluster cluster = StartCluster();
  std::vector<std::unique_ptr<Pool>> replicas;
  replicas.push_back(PoolFor(*cluster.replica, "pg-replica", 4));
  auto router = Router::Create({.failure_cooldown = 500ms},
                               PoolFor(*cluster.primary, "pg-primary", 8), std::move(replicas))
                    .value();
  REQUIRE(Eventually([&] { return InRecovery(*router, Consistency::kEventual).value_or(false); }));
  struct Call {
    std::chrono::steady_clock::time_point start, end;
    absl::StatusCode code;
    bool on_replica;
    std::string message;
  };
  std::mutex mu;
  std::vector<Call> calls;
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&] {
      while (!stop) {
        const auto start = std::chrono::steady_clock::now();
        auto r = router->RunRead(
            Deadline::After(400ms), Consistency::kEventual,
            [](pqxx::work& tx) { return tx.exec1("SELECT pg_is_in_recovery()")[0].as<bool>(); });
        const auto end = std::chrono::steady_clock::now();
        std::lock_guard<std::mutex> lock(mu);
        calls.push_back(
            {start, end, r.status().code(), r.ok() && *r, std::string(r.status().message())});
      }
    });
  }
  std::this_thread::sleep_for(300ms);
  REQUIRE(cluster.replica->Pause().ok());
  const auto paused_at = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(5s);
  REQUIRE(cluster.replica->Resume().ok());
  const auto resumed_at = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(1500ms);
  stop = true;
  for (auto& t : threads) t.join();
  int late = 0;
  int failed = 0;
  int on_replica_after = 0;
  std::string failures;
  auto worst = std::chrono::steady_clock::duration::zero();
  for (const Call& c : calls) {
    worst = std::max(worst, c.end - c.start);
    if (c.end - c.start > 450ms) ++late;
    if (c.code != absl::StatusCode::kOk) {
      ++failed;
      failures += c.message + "\n";
    }
    if (c.start > resumed_at + 1s && c.on_replica) ++on_replica_after;
  }
  INFO(calls.size() << " reads, paused at +" << (paused_at - calls.front().start).count() / 1000000
                    << " ms");
  INFO(failures);
  INFO("slowest read " << std::chrono::duration_cast<std::chrono::milliseconds>(worst).count()
                       << " ms");
  CHECK(late == 0);
  CHECK(failed == 0);  // a hung replica costs its share of the deadline, the primary answers
  CHECK(router->Stats().replica_timeouts_total >= 1);
  CHECK(on_replica_after > 0);  // back on the replica once it answers and its cooldown passed
}

}  // namespace
}  // namespace keel::postgres
