// postgres::ForEachBatch on the shared PostgreSQL: 100 000 rows walked exactly once each, resumed
// from a saved key after an interruption, pacing, deadline and cancellation, bad input.
#include "keel/postgres/batch.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "keel/clock.h"
#include "keel/limit/token_bucket.h"
#include "support/subprocess.h"

namespace keel::postgres {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Pool> SharedPool() {
  auto pool =
      Pool::Create({.conninfo = test::RequireEnv("KEEL_TEST_POSTGRES_URL"),
                    .pool = {.name = "pg-batch", .max_size = 2, .background_maintenance = false}});
  REQUIRE(pool.ok());
  return std::move(*pool);
}

std::unique_ptr<Router> RouterOn(std::unique_ptr<Pool> primary) {
  auto router = Router::Create({.name = "batch"}, std::move(primary), {});
  REQUIRE(router.ok());
  return std::move(*router);
}

// keel_batch_rows(id bigint primary key, grp int): ids 1..n with gaps (every 7th missing), so
// keys are not positions.
int64_t FillTable(Pool& pool, int n) {
  REQUIRE(pool.Execute(Deadline::After(10s), "DROP TABLE IF EXISTS keel_batch_rows").ok());
  REQUIRE(pool.Execute(Deadline::After(10s),
                       "CREATE TABLE keel_batch_rows (id bigint PRIMARY KEY, grp int NOT NULL)")
              .ok());
  REQUIRE(pool.Execute(Deadline::After(30s),
                       "INSERT INTO keel_batch_rows SELECT g, g % 10 FROM generate_series(1, $1) g "
                       "WHERE g % 7 <> 0",
                       n)
              .ok());
  auto count = pool.Execute(Deadline::After(10s), "SELECT count(*) FROM keel_batch_rows");
  REQUIRE(count.ok());
  return count->Get<int64_t>(0, 0).value();
}

// Records each id a walk hands over: the ids, in order.
struct Seen {
  std::vector<int64_t> ids;
  absl::Status Take(const Rows& rows) {
    for (int r = 0; r < rows.size(); ++r) ids.push_back(rows.Get<int64_t>(r, 0).value());
    return absl::OkStatus();
  }
};

TEST_CASE(
    "postgres ForEachBatch walks 100 000 rows exactly once each, and resumes from a saved key",
    "[postgres]") {
  auto router = RouterOn(SharedPool());
  const int64_t total = FillTable(router->primary(), 100'000);
  Seen seen;
  int calls = 0;
  // Interrupted by the handler after 37 batches of 1000.
  BatchResult first = ForEachBatch(
      *router,
      BatchOptions{.name = "walk",
                   .query = "SELECT id, grp FROM keel_batch_rows",
                   .key_column = "id",
                   .batch_size = 1000},
      [&](const Rows& rows) {
        if (++calls > 37) return absl::AbortedError("interrupted");
        CHECK(rows.size() == 1000);
        return seen.Take(rows);
      },
      Deadline::After(60s));
  CHECK(first.status.code() == absl::StatusCode::kAborted);
  CHECK(first.progress.batches == 37);
  CHECK(first.progress.rows == 37'000);
  CHECK_FALSE(first.progress.done);
  REQUIRE(first.progress.last_key.has_value());
  CHECK(*first.progress.last_key == std::to_string(seen.ids.back()));

  // Rows written behind the walk's position meanwhile are not seen again; rows ahead are.
  REQUIRE(router->primary()
              .Execute(Deadline::After(5s), "DELETE FROM keel_batch_rows WHERE id = 1")
              .ok());
  BatchResult second = ForEachBatch(
      *router,
      BatchOptions{.name = "walk",
                   .query = "SELECT id, grp FROM keel_batch_rows",
                   .key_column = "id",
                   .batch_size = 1000,
                   .start_after = first.progress.last_key},
      [&](const Rows& rows) { return seen.Take(rows); }, Deadline::After(60s));
  REQUIRE(second.status.ok());
  CHECK(second.progress.done);
  CHECK(second.progress.rows == total - 37'000);
  // Exactly once each, in key order.
  REQUIRE(static_cast<int64_t>(seen.ids.size()) == total);
  for (size_t i = 1; i < seen.ids.size(); ++i) REQUIRE(seen.ids[i - 1] < seen.ids[i]);
  CHECK(seen.ids.front() == 1);
  CHECK(seen.ids.back() == 100'000 - (100'000 % 7 == 0 ? 1 : 0));
}

TEST_CASE(
    "postgres ForEachBatch filters in the query, paces between batches, and stops on the "
    "deadline or cancellation",
    "[postgres]") {
  auto pool = SharedPool();
  FillTable(*pool, 5'000);
  SECTION("a WHERE in the query and a batch that ends the walk short") {
    Seen seen;
    BatchResult r = ForEachBatch(
        *pool,
        BatchOptions{.name = "grp3",
                     .query = "SELECT id FROM keel_batch_rows WHERE grp = 3",
                     .key_column = "id",
                     .batch_size = 100},
        [&](const Rows& rows) { return seen.Take(rows); }, Deadline::After(30s));
    REQUIRE(r.status.ok());
    CHECK(r.progress.done);
    for (int64_t id : seen.ids) CHECK(id % 10 == 3);
    CHECK(seen.ids.size() == static_cast<size_t>(r.progress.rows));
    CHECK(r.progress.batches == (r.progress.rows + 99) / 100);
  }
  SECTION("pacing: a token bucket of 2000 rows a second, burst 1000, over 4286 rows") {
    auto bucket = limit::TokenBucket::Create({.rate = 2000, .burst = 1000}).value();
    int64_t asked = 0;
    const auto start = std::chrono::steady_clock::now();
    BatchResult r = ForEachBatch(
        *pool,
        BatchOptions{.name = "paced",
                     .query = "SELECT id FROM keel_batch_rows",
                     .key_column = "id",
                     .batch_size = 1000,
                     .pace =
                         [&](int64_t rows) {
                           asked += rows;
                           return bucket.TryAcquire(rows);
                         }},
        [](const Rows&) { return absl::OkStatus(); }, Deadline::After(30s));
    REQUIRE(r.status.ok());
    CHECK(r.progress.batches == 5);
    // Four batches of 1000 asked for (the first goes unpaced): at 2000 rows/s after the burst,
    // the walk takes at least 1.5 s.
    CHECK(std::chrono::steady_clock::now() - start >= 1400ms);
    CHECK(asked >= 4000);
  }
  SECTION("a deadline the pacing would pass stops the walk at once with DEADLINE_EXCEEDED") {
    auto bucket = limit::TokenBucket::Create({.rate = 10, .burst = 100}).value();
    const auto start = std::chrono::steady_clock::now();
    BatchResult r = ForEachBatch(
        *pool,
        BatchOptions{.name = "slow",
                     .query = "SELECT id FROM keel_batch_rows",
                     .key_column = "id",
                     .batch_size = 100,
                     .pace = [&](int64_t rows) { return bucket.TryAcquire(rows); }},
        [](const Rows&) { return absl::OkStatus(); }, Deadline::After(500ms));
    CHECK(r.status.code() == absl::StatusCode::kDeadlineExceeded);
    CHECK(r.status.message().find("postgres batch \"slow\"") != std::string_view::npos);
    CHECK(r.progress.batches >= 1);
    CHECK(std::chrono::steady_clock::now() - start < 500ms);
  }
  SECTION("cancellation stops after the batch in hand") {
    CancellationSource source;
    int64_t last_id = 0;
    BatchResult r = ForEachBatch(
        *pool,
        BatchOptions{.name = "cancel",
                     .query = "SELECT id FROM keel_batch_rows",
                     .key_column = "id",
                     .batch_size = 100,
                     .cancellation = source.token()},
        [&](const Rows& rows) {
          last_id = rows.Get<int64_t>(rows.size() - 1, 0).value();
          source.Cancel();
          return absl::OkStatus();
        },
        Deadline::After(30s));
    CHECK(r.status.code() == absl::StatusCode::kCancelled);
    CHECK(r.progress.batches == 1);
    CHECK(r.progress.last_key == std::optional<std::string>(std::to_string(last_id)));
  }
}

TEST_CASE("postgres ForEachBatch refuses bad options naming the field, and a query without its key",
          "[postgres]") {
  auto pool = SharedPool();
  auto run = [&](BatchOptions o) {
    return ForEachBatch(
               *pool, std::move(o), [](const Rows&) { return absl::OkStatus(); },
               Deadline::After(5s))
        .status;
  };
  const std::string q = "SELECT 1 AS id";
  absl::Status s = run({.name = "", .query = q, .key_column = "id"});
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message().find("name") != std::string_view::npos);
  s = run({.name = "b", .query = "", .key_column = "id"});
  CHECK(s.message().find("query") != std::string_view::npos);
  s = run({.name = "b", .query = q, .key_column = "id; DROP TABLE x"});
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message().find("key_column") != std::string_view::npos);
  s = run({.name = "b", .query = q, .key_column = "id", .batch_size = 0});
  CHECK(s.message().find("batch_size") != std::string_view::npos);
  s = run({.name = "b", .query = "SELECT 1 AS x, 2 AS id", .key_column = "x"});
  CHECK(s.ok());  // x is selected
  s = run({.name = "b", .query = "SELECT 1 AS id", .key_column = "idx"});
  CHECK(s.code() != absl::StatusCode::kOk);  // the server rejects the unknown column
  s = run({.name = "b", .query = "SELECT NULL::int AS id", .key_column = "id"});
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message().find("NULL") != std::string_view::npos);
}

}  // namespace
}  // namespace keel::postgres
