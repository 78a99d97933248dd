// postgres::Pool::Transact: k + 1 round trips for k statements (counted on the wire by a proxy),
// commit and rollback, isolation, and every way a transaction can end (statement error, callback
// error or exception, serialization failure, deadline, a server paused during COMMIT).
#include "keel/postgres/transaction.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <stdexcept>
#include <string>

#include "keel/internal/status_macros.h"
#include "keel/postgres/pool.h"
#include "support/postgres_server.h"
#include "support/subprocess.h"
#include "support/tcp_proxy.h"

namespace keel::postgres {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Pool> MakePool(std::string conninfo, int max_size = 2) {
  auto pool = Pool::Create(
      {.conninfo = std::move(conninfo),
       .pool = {.name = "pg-tx", .max_size = max_size, .background_maintenance = false}});
  REQUIRE(pool.ok());
  return std::move(*pool);
}

std::unique_ptr<Pool> SharedPool() { return MakePool(test::RequireEnv("KEEL_TEST_POSTGRES_URL")); }

// The port of a postgresql://user@host:port/db URL.
int PortOf(const std::string& url) {
  const size_t at = url.find('@');
  const size_t colon = url.find(':', at);
  return std::stoi(url.substr(colon + 1, url.find('/', colon) - colon - 1));
}

// A table of this test's own, emptied first.
void Table(Pool& pool, const std::string& name) {
  REQUIRE(pool.Execute(Deadline::After(5s),
                       "CREATE TABLE IF NOT EXISTS " + name + " (id int PRIMARY KEY, v text)")
              .ok());
  REQUIRE(pool.Execute(Deadline::After(5s), "TRUNCATE " + name).ok());
}

int64_t Count(Pool& pool, const std::string& table) {
  auto rows = pool.Execute(Deadline::After(5s), "SELECT count(*) FROM " + table);
  REQUIRE(rows.ok());
  return rows->Get<int64_t>(0, 0).value();
}

TEST_CASE("postgres Transact costs k + 1 round trips for k statements, Run k + 2", "[postgres]") {
  const std::string url = test::RequireEnv("KEEL_TEST_POSTGRES_URL");
  test::TcpProxy proxy(PortOf(url));
  std::string via = url;
  via.replace(via.find(':', via.find('@')) + 1, std::to_string(PortOf(url)).size(),
              std::to_string(proxy.port()));
  auto pool = MakePool(via);
  auto lease = pool->Acquire(Deadline::After(5s));
  REQUIRE(lease.ok());

  auto flights = [&](auto&& call) {
    const uint64_t before = proxy.flights();
    call();
    return proxy.flights() - before;
  };
  auto three = [](Transaction& tx) -> absl::Status {
    for (int i = 1; i <= 3; ++i) KEEL_RETURN_IF_ERROR(tx.Execute("SELECT $1::int", i).status());
    return absl::OkStatus();
  };
  CHECK(flights([&] { CHECK(pool->Transact(Deadline::After(5s), *lease, three).ok()); }) == 4);
  CHECK(flights([&] {
          CHECK(pool->Transact(Deadline::After(5s), *lease,
                               [](Transaction& tx) { return tx.Execute("SELECT 1").status(); })
                    .ok());
        }) == 2);
  // No statement: nothing to begin or commit.
  CHECK(flights([&] {
          CHECK(pool->Transact(Deadline::After(5s), *lease, [](Transaction&) {}).ok());
        }) == 0);
  CHECK(flights([&] { CHECK(pool->Execute(Deadline::After(5s), *lease, "SELECT 1").ok()); }) == 1);
  CHECK(flights([&] {
          CHECK(pool->Run(Deadline::After(5s), *lease,
                          [](pqxx::work& tx) {
                            for (int i = 0; i < 3; ++i) tx.exec("SELECT 1");
                          })
                    .ok());
        }) == 5);
}

TEST_CASE("postgres Transact commits what the callback did and returns its value", "[postgres]") {
  auto pool = SharedPool();
  Table(*pool, "tx_commit");
  absl::StatusOr<int64_t> inserted =
      pool->Transact(Deadline::After(5s), [](Transaction& tx) -> absl::StatusOr<int64_t> {
        KEEL_ASSIGN_OR_RETURN(
            Rows a, tx.Execute("INSERT INTO tx_commit VALUES ($1, $2), ($3, $4)", 1, "a", 2, "b"));
        KEEL_ASSIGN_OR_RETURN(Rows b, tx.Execute("SELECT count(*) FROM tx_commit"));
        CHECK(b.Get<int64_t>(0, 0).value() == 2);  // its own writes, before COMMIT
        return a.affected_rows();
      });
  REQUIRE(inserted.ok());
  CHECK(*inserted == 2);
  CHECK(Count(*pool, "tx_commit") == 2);
}

TEST_CASE("postgres Transact rolls back on a callback error, an exception, a failed statement",
          "[postgres]") {
  auto pool = SharedPool();
  Table(*pool, "tx_rollback");
  auto insert = [](Transaction& tx) {
    REQUIRE(tx.Execute("INSERT INTO tx_rollback VALUES (1, 'x')").ok());
  };
  SECTION("the callback returns an error: returned as is") {
    absl::Status s = pool->Transact(Deadline::After(5s), [&](Transaction& tx) {
      insert(tx);
      return absl::FailedPreconditionError("changed my mind");
    });
    CHECK(s == absl::FailedPreconditionError("changed my mind"));
  }
  SECTION("the callback throws: INTERNAL") {
    absl::Status s = pool->Transact(Deadline::After(5s), [&](Transaction& tx) {
      insert(tx);
      throw std::runtime_error("boom");
    });
    CHECK(s.code() == absl::StatusCode::kInternal);
    CHECK(s.message().find("boom") != absl::string_view::npos);
  }
  SECTION("a statement fails: later ones are refused unsent, and an OK return still rolls back") {
    absl::Status s = pool->Transact(Deadline::After(5s), [&](Transaction& tx) {
      insert(tx);
      auto dup = tx.Execute("INSERT INTO tx_rollback VALUES (1, 'again')");
      CHECK(dup.status().code() == absl::StatusCode::kAlreadyExists);
      auto after = tx.Execute("SELECT 1");
      CHECK(after.status().code() == absl::StatusCode::kFailedPrecondition);
      CHECK(after.status().message().find("aborted by an earlier error") !=
            absl::string_view::npos);
      return absl::OkStatus();  // ignoring the error does not commit anything
    });
    CHECK(s.code() == absl::StatusCode::kAlreadyExists);
  }
  SECTION("BEGIN's own statement fails: nothing ran") {
    absl::Status s = pool->Transact(Deadline::After(5s),
                                    [](Transaction& tx) { return tx.Execute("SELEC 1").status(); });
    CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  }
  CHECK(Count(*pool, "tx_rollback") == 0);
  CHECK(pool->Stats().destroyed_total == 0);  // every one of these left the connection usable
  // and idle: the next transaction starts cleanly on it
  CHECK(pool->Transact(Deadline::After(5s), insert).ok());
  CHECK(Count(*pool, "tx_rollback") == 1);
}

TEST_CASE("postgres Transact applies the isolation level and read-only mode", "[postgres]") {
  auto pool = SharedPool();
  absl::StatusOr<std::string> level = pool->Transact(
      Deadline::After(5s), {.isolation = IsolationLevel::kSerializable, .read_only = true},
      [](Transaction& tx) -> absl::StatusOr<std::string> {
        KEEL_ASSIGN_OR_RETURN(Rows r, tx.Execute("SHOW transaction_isolation"));
        KEEL_ASSIGN_OR_RETURN(Rows ro, tx.Execute("SHOW transaction_read_only"));
        return std::string(r.Text(0, 0)) + "/" + std::string(ro.Text(0, 0));
      });
  REQUIRE(level.ok());
  CHECK(*level == "serializable/on");
  absl::Status write = pool->Transact(
      Deadline::After(5s), {.read_only = true},
      [](Transaction& tx) { return tx.Execute("CREATE TEMP TABLE t (x int)").status(); });
  CHECK(write.code() == absl::StatusCode::kFailedPrecondition);  // 25006
}

TEST_CASE("postgres Transact reports a serialization failure as ABORTED", "[postgres]") {
  auto pool = SharedPool();
  Table(*pool, "tx_oncall");
  REQUIRE(
      pool->Execute(Deadline::After(5s), "INSERT INTO tx_oncall VALUES (1, 'on'), (2, 'on')").ok());
  const TransactionOptions serializable{.isolation = IsolationLevel::kSerializable};
  // Write skew: each transaction sees two doctors on call and takes one off; SSI lets only one
  // of them commit.
  auto off = [](Transaction& tx, int id) -> absl::Status {
    KEEL_ASSIGN_OR_RETURN(Rows on, tx.Execute("SELECT count(*) FROM tx_oncall WHERE v = 'on'"));
    if (on.Get<int64_t>(0, 0).value() < 2) return absl::FailedPreconditionError("last one");
    return tx.Execute("UPDATE tx_oncall SET v = 'off' WHERE id = $1", id).status();
  };
  absl::Status inner;
  absl::Status outer = pool->Transact(Deadline::After(5s), serializable, [&](Transaction& tx) {
    KEEL_RETURN_IF_ERROR(off(tx, 1));
    inner = pool->Transact(Deadline::After(5s), serializable,
                           [&](Transaction& other) { return off(other, 2); });
    return absl::OkStatus();
  });
  CHECK(inner.ok());
  CHECK(outer.code() == absl::StatusCode::kAborted);  // 40001, retryable
  CHECK(outer.message().find("40001") != absl::string_view::npos);
  auto left = pool->Execute(Deadline::After(5s), "SELECT count(*) FROM tx_oncall WHERE v = 'on'");
  CHECK(left->Get<int64_t>(0, 0).value() == 1);
}

TEST_CASE("postgres Transact ends by its deadline, and COMMIT cut by a paused server is UNKNOWN",
          "[postgres]") {
  auto server = test::PgServer::StartPrimary();
  REQUIRE(server.ok());
  auto pool = MakePool((*server)->url());
  Table(*pool, "tx_deadline");
  {  // a slow statement: DEADLINE_EXCEEDED, the connection discarded, nothing committed
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = pool->Transact(Deadline::After(200ms), [](Transaction& tx) -> absl::Status {
      KEEL_RETURN_IF_ERROR(tx.Execute("INSERT INTO tx_deadline VALUES (1, 'x')").status());
      return tx.Execute("SELECT pg_sleep(5)").status();
    });
    const auto took = std::chrono::steady_clock::now() - start;
    CHECK(s.code() == absl::StatusCode::kDeadlineExceeded);
    CHECK(took < 250ms);
    CHECK(pool->Stats().destroyed_total == 1);
    CHECK(Count(*pool, "tx_deadline") == 0);
  }
  {  // the server paused before COMMIT: UNKNOWN by the deadline
    const auto start = std::chrono::steady_clock::now();
    absl::Status s = pool->Transact(Deadline::After(300ms), [&](Transaction& tx) -> absl::Status {
      KEEL_RETURN_IF_ERROR(tx.Execute("INSERT INTO tx_deadline VALUES (2, 'y')").status());
      REQUIRE((*server)->Pause().ok());
      return absl::OkStatus();
    });
    const auto took = std::chrono::steady_clock::now() - start;
    REQUIRE((*server)->Resume().ok());
    CHECK(s.code() == absl::StatusCode::kUnknown);
    CHECK(s.message().find("commit outcome unknown") != absl::string_view::npos);
    CHECK(took < 350ms);
    CHECK(pool->Stats().destroyed_total == 2);
    // The server got COMMIT before its pause took hold or after it ended: either is possible,
    // which is why the outcome is UNKNOWN. The pool works again.
    CHECK(pool->Execute(Deadline::After(5s), "SELECT 1").ok());
  }
}

}  // namespace
}  // namespace keel::postgres
