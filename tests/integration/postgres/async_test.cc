// Pool::AsyncExecute / AsyncPipeline: many calls pipelined over one connection, each with its own
// result; a paused server holds futures, not threads, and keeps its connection; kill, restart,
// backpressure, Shutdown; a coroutine awaiting a query.
#include <dirent.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "keel/async/task.h"
#include "keel/postgres/pool.h"
#include "support/postgres_server.h"
#include "support/subprocess.h"

namespace keel::postgres {
namespace {

using namespace std::chrono_literals;
using Steady = std::chrono::steady_clock;

std::unique_ptr<Pool> MakePool(std::string conninfo, PoolOptions::Async async = {}) {
  auto pool = Pool::Create({.conninfo = std::move(conninfo),
                            .async = async,
                            .pool = {.name = "pg-async", .background_maintenance = false}});
  REQUIRE(pool.ok());
  return std::move(*pool);
}

int Threads() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (dirent* e = ::readdir(d)) n += e->d_name[0] != '.';
    ::closedir(d);
  }
  return n;
}

TEST_CASE("postgres async calls pipelined over one connection each get their own result",
          "[postgres][async]") {
  auto pool = MakePool(test::RequireEnv("KEEL_TEST_POSTGRES_URL"));
  constexpr int kCalls = 500;
  std::vector<Future<Rows>> calls;
  for (int i = 0; i < kCalls; ++i) {
    calls.push_back(pool->AsyncExecute(Deadline::After(10s), "SELECT $1::int * 2, $2::text", i,
                                       "call-" + std::to_string(i)));
  }
  for (int i = 0; i < kCalls; ++i) {
    absl::StatusOr<Rows> r = calls[i].Get(Deadline::After(10s));
    REQUIRE(r.ok());
    CHECK(r->Get<int>(0, 0).value() == 2 * i);
    CHECK(r->Text(0, 1) == "call-" + std::to_string(i));
  }
  const AsyncStats s = pool->GetAsyncStats();
  CHECK(s.connects_total == 1);
  CHECK(s.completed_total == kCalls);
  CHECK(s.in_flight == 0);
  // Errors are per call: a bad statement fails alone.
  Future<Rows> bad = pool->AsyncExecute(Deadline::After(5s), "SELEC 1");
  Future<Rows> good = pool->AsyncExecute(Deadline::After(5s), "SELECT 1");
  CHECK(bad.Get().status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(good.Get().ok());
  CHECK(pool->GetAsyncStats().connects_total == 1);  // a statement error keeps the connection
}

TEST_CASE("postgres AsyncPipeline returns one result per statement, a failure skips the rest",
          "[postgres][async]") {
  auto pool = MakePool(test::RequireEnv("KEEL_TEST_POSTGRES_URL"));
  std::vector<Statement> batch;
  batch.emplace_back("SELECT $1::int", 1);
  batch.emplace_back("SELECT length($1::bytea)", Bytes{std::string_view("a\0b", 3)});
  batch.emplace_back("SELECT 1/0");
  batch.emplace_back("SELECT 3");
  auto results = pool->AsyncPipeline(Deadline::After(5s), std::move(batch)).Get();
  REQUIRE(results.ok());
  REQUIRE(results->size() == 4);
  CHECK((*results)[0]->Get<int>(0, 0).value() == 1);
  CHECK((*results)[1]->Get<int>(0, 0).value() == 3);  // the bytes were copied, NUL included
  CHECK((*results)[2].status().code() == absl::StatusCode::kInvalidArgument);  // 22012
  CHECK((*results)[3].status().code() == absl::StatusCode::kAborted);
  std::vector<Statement> nul;
  nul.emplace_back(std::string("SELECT 1\0", 9));
  CHECK(pool->AsyncPipeline(Deadline::After(5s), std::move(nul)).Get().status().code() ==
        absl::StatusCode::kInvalidArgument);
}

Task<int> Doubled(Pool& pool, int v) {
  absl::StatusOr<Rows> r = co_await pool.AsyncExecute(Deadline::After(5s), "SELECT $1::int * 2", v);
  if (!r.ok()) co_return r.status();
  co_return r->Get<int>(0, 0);
}

TEST_CASE("postgres AsyncExecute is awaited by a coroutine", "[postgres][async]") {
  auto pool = MakePool(test::RequireEnv("KEEL_TEST_POSTGRES_URL"));
  CHECK(Doubled(*pool, 21).Start().Get(Deadline::After(5s)).value() == 42);
}

TEST_CASE("postgres async calls from 8 threads over 2 connections each get their own result",
          "[postgres][async]") {
  auto pool = MakePool(test::RequireEnv("KEEL_TEST_POSTGRES_URL"),
                       {.connections = 2, .max_in_flight = 2000});  // all 1600 at once
  std::atomic<int> wrong{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::vector<Future<Rows>> calls;
      for (int i = 0; i < 200; ++i) {
        calls.push_back(pool->AsyncExecute(Deadline::After(10s), "SELECT $1::int", t * 1000 + i));
      }
      for (int i = 0; i < 200; ++i) {
        absl::StatusOr<Rows> r = calls[i].Get(Deadline::After(10s));
        if (!r.ok() || r->Get<int>(0, 0).value_or(-1) != t * 1000 + i) wrong.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(wrong.load() == 0);
  CHECK(pool->GetAsyncStats().connects_total == 2);
}

Task<int> Sleeper(Pool& pool, std::atomic<int>* resumed) {
  absl::StatusOr<Rows> r = co_await pool.AsyncExecute(Deadline::After(10s), "SELECT pg_sleep(10)");
  resumed->fetch_add(1);
  co_return r.status();
}

TEST_CASE("postgres pool destroyed under awaiting coroutines completes them CANCELLED",
          "[postgres][async]") {
  auto pool = MakePool(test::RequireEnv("KEEL_TEST_POSTGRES_URL"));
  std::atomic<int> resumed{0};
  std::vector<Future<int>> waiting;
  for (int i = 0; i < 4; ++i) waiting.push_back(Sleeper(*pool, &resumed).Start());
  const auto start = Steady::now();
  pool.reset();  // the coroutines resume (CANCELLED) before the pool is gone
  CHECK(Steady::now() - start < 2s);
  CHECK(resumed.load() == 4);
  for (auto& f : waiting) CHECK(f.Get().status().code() == absl::StatusCode::kCancelled);
}

TEST_CASE(
    "postgres async calls with the server paused hold futures, not threads, and keep the "
    "connection, kill and restart, backpressure, Shutdown",
    "[postgres][async]") {
  auto server = test::PgServer::StartPrimary();
  REQUIRE(server.ok());
  auto pool = MakePool((*server)->url(), {.max_in_flight = 300});
  REQUIRE(pool->AsyncExecute(Deadline::After(5s), "SELECT 1").Get().ok());  // connected
  const int threads = Threads();

  REQUIRE((*server)->Pause().ok());
  constexpr int kCalls = 200;
  std::atomic<int64_t> worst_late_us{0};
  std::atomic<int> timed_out{0};
  const auto start = Steady::now();
  for (int i = 0; i < kCalls; ++i) {
    const auto deadline_at = Steady::now() + 100ms;
    pool->AsyncExecute(Deadline::After(100ms), "SELECT $1::int", i)
        .Then([&, deadline_at](absl::StatusOr<Rows> r) {
          if (r.status().code() == absl::StatusCode::kDeadlineExceeded) timed_out.fetch_add(1);
          const int64_t late =
              std::chrono::duration_cast<std::chrono::microseconds>(Steady::now() - deadline_at)
                  .count();
          int64_t prev = worst_late_us.load();
          while (late > prev && !worst_late_us.compare_exchange_weak(prev, late)) {
          }
        });
  }
  CHECK(Threads() == threads);  // 200 calls waiting, no thread more
  // Backpressure: a tiny in-flight cap refuses at once while the server is paused.
  {
    auto small = MakePool((*server)->url(), {.max_in_flight = 2});
    Future<Rows> a = small->AsyncExecute(Deadline::After(100ms), "SELECT 1");
    Future<Rows> b = small->AsyncExecute(Deadline::After(100ms), "SELECT 1");
    Future<Rows> c = small->AsyncExecute(Deadline::After(100ms), "SELECT 1");
    CHECK(c.Get().status().code() == absl::StatusCode::kResourceExhausted);
    CHECK(small->GetAsyncStats().rejected_full_total == 1);
    // Its async connection is still connecting to the paused server: Shutdown abandons that.
    const auto shutdown_start = Steady::now();
    small->Shutdown();  // completes a and b (CANCELLED, or DEADLINE_EXCEEDED if it came first)
    CHECK(Steady::now() - shutdown_start < 500ms);
  }
  while (pool->GetAsyncStats().in_flight > 0 && Steady::now() - start < 5s) {
    std::this_thread::yield();
  }
  CHECK(timed_out.load() == kCalls);
  CHECK(worst_late_us.load() < 50'000);  // every call completed by its deadline + 50 ms
  REQUIRE((*server)->Resume().ok());
  // After the pause: the same connection, and each call gets its own result, not a late one.
  for (int i = 0; i < 20; ++i) {
    auto r = pool->AsyncExecute(Deadline::After(5s), "SELECT $1::int + 1000", i).Get();
    REQUIRE(r.ok());
    CHECK(r->Get<int>(0, 0).value() == i + 1000);
  }
  CHECK(pool->GetAsyncStats().connects_total == 1);
  CHECK(pool->GetAsyncStats().late_results_dropped_total == kCalls);

  // Killed with calls in flight: UNAVAILABLE; after the restart, calls work without user action.
  Future<Rows> cut = pool->AsyncExecute(Deadline::After(10s), "SELECT pg_sleep(10)");
  REQUIRE((*server)->Stop("immediate").ok());
  CHECK(cut.Get(Deadline::After(5s)).status().code() == absl::StatusCode::kUnavailable);
  REQUIRE((*server)->Start().ok());
  bool back = false;
  for (int i = 0; i < 100 && !back; ++i) {
    back = pool->AsyncExecute(Deadline::After(1s), "SELECT 1").Get().ok();
    if (!back) std::this_thread::sleep_for(50ms);  // reconnect delay: the server restarting
  }
  CHECK(back);

  // Shutdown with a call in flight: CANCELLED.
  Future<Rows> pending = pool->AsyncExecute(Deadline::After(10s), "SELECT pg_sleep(10)");
  pool->Shutdown();
  CHECK(pending.Get(Deadline::After(5s)).status().code() == absl::StatusCode::kCancelled);
  CHECK(pool->AsyncExecute(Deadline::After(1s), "SELECT 1").Get().status().code() ==
        absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace keel::postgres
