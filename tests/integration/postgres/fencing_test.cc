// postgres::Fencing on a real PostgreSQL: tokens not older than the recorded one write, an older
// one is refused with ABORTED and its transaction's write is rolled back, and a stale writer
// racing a newer one is refused after waiting for it.
#include "keel/postgres/fencing.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "keel/internal/status_macros.h"
#include "keel/postgres/pool.h"
#include "support/subprocess.h"

namespace keel::postgres {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Pool> FencingPool() {
  auto pool = Pool::Create({.conninfo = test::RequireEnv("KEEL_TEST_POSTGRES_URL"),
                            .pool = {.name = "pg-fencing", .max_size = 3}});
  REQUIRE(pool.ok());
  return std::move(*pool);
}

// A fencing table and a guarded table of this test's own, emptied first.
Fencing Tables(Pool& pool, const std::string& suffix) {
  Fencing fencing = Fencing::Create({.table = "keel_fencing_" + suffix}).value();
  REQUIRE(fencing.CreateTable(pool, Deadline::After(5s)).ok());
  REQUIRE(fencing.CreateTable(pool, Deadline::After(5s)).ok());  // idempotent
  REQUIRE(pool.Execute(Deadline::After(5s), "TRUNCATE " + fencing.table()).ok());
  REQUIRE(pool.Execute(Deadline::After(5s), "CREATE TABLE IF NOT EXISTS guarded_" + suffix +
                                                " (id int PRIMARY KEY, v text)")
              .ok());
  REQUIRE(pool.Execute(Deadline::After(5s), "TRUNCATE guarded_" + suffix).ok());
  return fencing;
}

// Writes `v` to the guarded row under `token`, as a lock holder would.
absl::Status Write(Pool& pool, const Fencing& fencing, const std::string& suffix, int64_t token,
                   const std::string& v) {
  return pool.Transact(Deadline::After(5s), [&](Transaction& tx) -> absl::Status {
    KEEL_RETURN_IF_ERROR(fencing.Check(tx, "row:1", token));
    return tx
        .Execute("INSERT INTO guarded_" + suffix +
                     " (id, v) VALUES (1, $1) ON CONFLICT (id) DO UPDATE SET v = EXCLUDED.v",
                 v)
        .status();
  });
}

std::string Stored(Pool& pool, const std::string& suffix) {
  auto rows =
      pool.Execute(Deadline::After(5s), "SELECT v FROM guarded_" + suffix + " WHERE id = 1");
  REQUIRE(rows.ok());
  return rows->empty() ? "" : std::string(rows->Text(0, 0));
}

TEST_CASE("postgres fencing applies writes of tokens not older than the last and refuses older",
          "[postgres]") {
  auto pool = FencingPool();
  const Fencing fencing = Tables(*pool, "order");
  CHECK(Write(*pool, fencing, "order", 5, "five").ok());
  CHECK(Write(*pool, fencing, "order", 5, "five again").ok());  // same holder, another write
  const absl::Status stale = Write(*pool, fencing, "order", 3, "three");
  CHECK(absl::IsAborted(stale));
  CHECK(stale.message().find("postgres fencing \"keel_fencing_order\": token 3 for resource "
                             "\"row:1\" is older") == 0);
  CHECK(Stored(*pool, "order") == "five again");  // the stale write was rolled back
  CHECK(Write(*pool, fencing, "order", 7, "seven").ok());
  CHECK(absl::IsAborted(Write(*pool, fencing, "order", 6, "six")));
  CHECK(Stored(*pool, "order") == "seven");
  auto token = pool->Execute(Deadline::After(5s),
                             "SELECT token FROM keel_fencing_order WHERE resource = 'row:1'");
  CHECK(token->Get<int64_t>(0, 0).value() == 7);
}

TEST_CASE("postgres fencing: a stale writer racing a newer one waits for it, then is refused",
          "[postgres]") {
  auto pool = FencingPool();
  const Fencing fencing = Tables(*pool, "race");
  REQUIRE(Write(*pool, fencing, "race", 1, "one").ok());
  // The newer holder checks its token and holds the row lock while it works.
  std::atomic<bool> newer_checked{false};
  std::atomic<bool> release_newer{false};
  absl::Status newer_status;
  std::thread newer([&] {
    newer_status = pool->Transact(Deadline::After(10s), [&](Transaction& tx) -> absl::Status {
      KEEL_RETURN_IF_ERROR(fencing.Check(tx, "row:1", 9));
      newer_checked.store(true);
      while (!release_newer.load()) std::this_thread::sleep_for(1ms);
      return tx.Execute("UPDATE guarded_race SET v = 'nine' WHERE id = 1").status();
    });
  });
  while (!newer_checked.load()) std::this_thread::sleep_for(1ms);
  std::thread finish([&] {
    std::this_thread::sleep_for(100ms);
    release_newer.store(true);
  });
  // Token 4 is newer than what was committed (1) but older than what the running transaction
  // records: the check blocks on the row until that commits, and is then refused.
  const absl::Status stale = Write(*pool, fencing, "race", 4, "four");
  finish.join();
  newer.join();
  CHECK(newer_status.ok());
  CHECK(absl::IsAborted(stale));
  CHECK(Stored(*pool, "race") == "nine");
}

TEST_CASE("postgres fencing rejects bad options and input naming them", "[postgres]") {
  CHECK(Fencing::Create({.table = "bad name"}).status().message() ==
        "fencing.table must be an unquoted identifier, optionally schema-qualified, got \"bad "
        "name\"");
  CHECK(absl::IsInvalidArgument(Fencing::Create({.table = ""}).status()));
  CHECK(absl::IsInvalidArgument(Fencing::Create({.table = "1abc"}).status()));
  CHECK(absl::IsInvalidArgument(Fencing::Create({.table = "a.b.c"}).status()));
  CHECK(Fencing::Create({.table = "app.fencing_v2"}).ok());
  auto pool = FencingPool();
  const Fencing fencing = Tables(*pool, "input");
  const absl::Status empty = pool->Transact(
      Deadline::After(5s), [&](Transaction& tx) { return fencing.Check(tx, "", 1); });
  CHECK(absl::IsInvalidArgument(empty));
  const absl::Status zero = pool->Transact(
      Deadline::After(5s), [&](Transaction& tx) { return fencing.Check(tx, "r", 0); });
  CHECK(zero.message() == "postgres fencing \"keel_fencing_input\": token must be >= 1, got 0");
}

}  // namespace
}  // namespace keel::postgres
