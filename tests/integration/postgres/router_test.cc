// postgres::Router against a real primary and a streaming replica (pg_basebackup -R) started by
// the test: reads go to the replica, writes to the primary, reads fall back while the replica is
// down and return when it is back; a replica lagging past the bound is skipped.
#include "keel/postgres/router.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "support/postgres_server.h"

namespace keel::postgres {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Pool> PoolFor(const test::PgServer& server, const std::string& name) {
  return Pool::Create({.conninfo = server.url(),
                       .pool = {.name = name, .max_size = 2, .background_maintenance = false}})
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
  std::vector<std::unique_ptr<Pool>> replicas;
  replicas.push_back(PoolFor(*cluster.replica, "pg-replica"));
  auto router = Router::Create({.max_replay_lag = 200ms, .lag_check_interval = 50ms},
                               PoolFor(*cluster.primary, "pg-primary"), std::move(replicas))
                    .value();
  REQUIRE(
      router
          ->RunWrite(Deadline::After(5s), [](pqxx::work& tx) { tx.exec("CREATE TABLE t (v int)"); })
          .ok());
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

}  // namespace
}  // namespace keel::postgres
