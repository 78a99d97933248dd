// redis::Lock across processes, guarding PostgreSQL: mutual exclusion for a read-modify-write of
// one row without SQL-level locking (the lost update the lock exists to prevent), and fencing
// against a holder paused (SIGSTOP) past its lease.
//
// The workers are this test binary itself, started again with a hidden test case and their
// orders in the environment (KEEL_LOCK_WORKER = "<mode> <redis url> <lock name> <table> <out>").
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "integration/redis_lock/helpers.h"
#include "keel/internal/status_macros.h"
#include "keel/postgres/fencing.h"
#include "keel/postgres/pool.h"
#include "keel/redis/lock.h"
#include "support/sanitizers.h"

using keel::Deadline;
using keel::redis::Lock;
using keel::redis::LockGuard;
using namespace std::chrono_literals;

namespace {

// The size: 8 processes x 2000 critical sections. Under TSan (10x slower, and the
// interleavings inside one process are what it checks) 2 processes x 2 threads x 40.
#if defined(KEEL_TEST_TSAN)
constexpr int kProcesses = 2;
constexpr int kThreads = 2;
constexpr int kSections = 40;  // per thread
#else
constexpr int kProcesses = 8;
constexpr int kThreads = 1;
constexpr int kSections = 2000;  // per thread
#endif

std::unique_ptr<keel::postgres::Pool> MakePool(int max_size) {
  auto pool =
      keel::postgres::Pool::Create({.conninfo = keel::test::RequireEnv("KEEL_TEST_POSTGRES_URL"),
                                    .pool = {.name = "pg-lock", .max_size = max_size}});
  REQUIRE(pool.ok());
  return std::move(*pool);
}

Lock::Options LockOptions(const std::string& name, keel::Duration ttl) {
  return {.name = name,
          .ttl = ttl,
          .retry = {.kind = keel::Backoff::Kind::kFullJitter, .base = 1ms, .cap = 5ms}};
}

keel::test::Subprocess StartWorker(const std::string& spec, const std::string& log) {
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  return keel::test::Subprocess::Start(
      {"/usr/bin/env", "KEEL_LOCK_WORKER=" + spec, exe, "[.redis_lock_worker]"}, log);
}

bool AwaitFile(const std::string& path, std::chrono::seconds timeout = 30s) {
  const auto give_up = std::chrono::steady_clock::now() + timeout;
  while (!std::filesystem::exists(path) && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(1ms);
  }
  return std::filesystem::exists(path);
}

// Mode "count": kThreads threads, kSections critical sections each: read the row, write it back
// plus one, and check that the token is newer than the last one that wrote the row.
int CountWorker(const std::string& url, const std::string& name, const std::string& table) {
  auto client = keel::test::MakeRedisClient(url, kThreads);
  auto lock = Lock::Create(LockOptions(name, 5s), *client).value();
  auto pool = MakePool(kThreads);
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kSections; ++i) {
        absl::StatusOr<LockGuard> guard = lock->Acquire(Deadline::After(20s));
        if (!guard.ok()) {
          std::fprintf(stderr, "acquire: %s\n", std::string(guard.status().message()).c_str());
          failures.fetch_add(1);
          continue;
        }
        const int64_t token = *guard->fencing_token();
        // Plain reads and writes in autocommit: nothing in SQL stops a lost update but the lock.
        auto row = pool->Execute(Deadline::After(5s),
                                 "SELECT n, last_token FROM " + table + " WHERE id = 1");
        if (!row.ok() || row->empty()) {
          std::fprintf(stderr, "select: %s\n", std::string(row.status().message()).c_str());
          failures.fetch_add(1);
          continue;
        }
        const int64_t n = row->Get<int64_t>(0, 0).value();
        if (const int64_t last = row->Get<int64_t>(0, 1).value(); last >= token) {
          std::fprintf(stderr, "token %lld not newer than %lld\n", static_cast<long long>(token),
                       static_cast<long long>(last));
          failures.fetch_add(1);
        }
        if (absl::Status u =
                pool->Execute(Deadline::After(5s),
                              "UPDATE " + table + " SET n = $1, last_token = $2 WHERE id = 1",
                              n + 1, token)
                    .status();
            !u.ok()) {
          std::fprintf(stderr, "update: %s\n", std::string(u.message()).c_str());
          failures.fetch_add(1);
        }
        if (absl::Status r = guard->Release(Deadline::After(5s)); !r.ok()) {
          std::fprintf(stderr, "release: %s\n", std::string(r.message()).c_str());
          failures.fetch_add(1);
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  return failures.load() == 0 ? 0 : 1;
}

// Mode "paused": takes the lock (no watchdog), says so in <out>.ready with its token, waits for
// <out>.go (the parent pauses it meanwhile), then writes "first" fenced by its token and records
// the outcome in <out>.
int PausedWorker(const std::string& url, const std::string& name, const std::string& table,
                 const std::string& out) {
  auto client = keel::test::MakeRedisClient(url);
  auto lock = Lock::Create(LockOptions(name, 200ms), *client).value();
  auto pool = MakePool(1);
  const auto fencing = keel::postgres::Fencing::Create({.table = table + "_fencing"}).value();
  absl::StatusOr<LockGuard> guard = lock->Acquire(Deadline::After(5s));
  if (!guard.ok()) return 2;
  std::ofstream(out + ".ready") << *guard->fencing_token() << "\n";
  if (!AwaitFile(out + ".go")) return 3;
  const absl::Status written =
      pool->Transact(Deadline::After(5s), [&](keel::postgres::Transaction& tx) -> absl::Status {
        KEEL_RETURN_IF_ERROR(fencing.Check(tx, "row:1", *guard->fencing_token()));
        return tx.Execute("UPDATE " + table + " SET holder = 'first' WHERE id = 1").status();
      });
  const absl::Status released = guard->Release();
  std::ofstream(out) << absl::StatusCodeToString(written.code()) << " "
                     << absl::StatusCodeToString(released.code()) << "\n";
  return 0;
}

}  // namespace

TEST_CASE("redis lock worker", "[.redis_lock_worker]") {
  const auto spec = keel::test::Env("KEEL_LOCK_WORKER");
  // Hidden, so ctest never runs it; selected by its tag without orders it is a no-op.
  if (!spec.has_value()) return;
  std::istringstream in(*spec);
  std::string mode, url, name, table, out;
  in >> mode >> url >> name >> table >> out;
  REQUIRE(!out.empty());
  int code = 1;
  if (mode == "count") code = CountWorker(url, name, table);
  if (mode == "paused") code = PausedWorker(url, name, table, out);
  std::_Exit(code);  // the exit code is the verdict; skip Catch2's reporting
}

TEST_CASE("redis lock excludes processes: a lost-update read-modify-write in PostgreSQL adds up",
          "[redis_lock]") {
  const std::string url = keel::test::RequireEnv("KEEL_TEST_REDIS_URL");
  const std::string name = keel::test::UniqueName("procs");
  const std::string table = "keel_lock_count";
  auto pool = MakePool(1);
  REQUIRE(pool->Execute(Deadline::After(5s), "CREATE TABLE IF NOT EXISTS " + table +
                                                 " (id int PRIMARY KEY, n bigint, last_token "
                                                 "bigint)")
              .ok());
  REQUIRE(pool->Execute(Deadline::After(5s), "TRUNCATE " + table).ok());
  REQUIRE(pool->Execute(Deadline::After(5s), "INSERT INTO " + table + " VALUES (1, 0, 0)").ok());
  keel::test::TempDir dir("keel-lock-procs");
  std::vector<keel::test::Subprocess> workers;
  for (int p = 0; p < kProcesses; ++p) {
    const std::string out = (dir.path() / ("worker" + std::to_string(p))).string();
    workers.push_back(
        StartWorker("count " + url + " " + name + " " + table + " " + out, out + ".log"));
  }
  for (int p = 0; p < kProcesses; ++p) {
    const int code = workers[p].Wait();
    if (code != 0) {
      std::stringstream log;
      log << std::ifstream(dir.path() / ("worker" + std::to_string(p) + ".log")).rdbuf();
      UNSCOPED_INFO("worker " << p << " log:\n" << log.str());
    }
    CHECK(code == 0);
  }
  auto n = pool->Execute(Deadline::After(5s), "SELECT n FROM " + table + " WHERE id = 1");
  REQUIRE(n.ok());
  CHECK(n->Get<int64_t>(0, 0).value() == kProcesses * kThreads * kSections);
}

TEST_CASE("redis lock fencing: a holder paused past its lease has its write refused",
          "[redis_lock]") {
  const std::string url = keel::test::RequireEnv("KEEL_TEST_REDIS_URL");
  const std::string name = keel::test::UniqueName("paused");
  const std::string table = "keel_lock_paused";
  auto pool = MakePool(1);
  const auto fencing = keel::postgres::Fencing::Create({.table = table + "_fencing"}).value();
  REQUIRE(fencing.CreateTable(*pool, Deadline::After(5s)).ok());
  REQUIRE(pool->Execute(Deadline::After(5s), "TRUNCATE " + fencing.table()).ok());
  REQUIRE(pool->Execute(Deadline::After(5s), "CREATE TABLE IF NOT EXISTS " + table +
                                                 " (id int PRIMARY KEY, holder text)")
              .ok());
  REQUIRE(pool->Execute(Deadline::After(5s), "TRUNCATE " + table).ok());
  REQUIRE(pool->Execute(Deadline::After(5s), "INSERT INTO " + table + " VALUES (1, '')").ok());

  keel::test::TempDir dir("keel-lock-paused");
  const std::string out = (dir.path() / "first").string();
  keel::test::Subprocess first =
      StartWorker("paused " + url + " " + name + " " + table + " " + out, out + ".log");
  REQUIRE(AwaitFile(out + ".ready"));
  int64_t first_token = 0;
  std::ifstream(out + ".ready") >> first_token;
  first.Signal(SIGSTOP);

  // Past the first holder's 200 ms lease, a second holder gets the lock and writes.
  auto client = keel::test::SharedRedisClient();
  auto lock = Lock::Create(LockOptions(name, 5s), *client).value();
  absl::StatusOr<LockGuard> second = lock->Acquire(Deadline::After(3s));
  REQUIRE(second.ok());
  CHECK(*second->fencing_token() > first_token);
  REQUIRE(
      pool->Transact(Deadline::After(5s),
                     [&](keel::postgres::Transaction& tx) -> absl::Status {
                       KEEL_RETURN_IF_ERROR(fencing.Check(tx, "row:1", *second->fencing_token()));
                       return tx.Execute("UPDATE " + table + " SET holder = 'second' WHERE id = 1")
                           .status();
                     })
          .ok());

  // The first resumes believing it holds the lock: its fenced write is refused, and its release
  // finds the lease gone without touching the second's.
  std::ofstream(out + ".go").flush();
  first.Signal(SIGCONT);
  CHECK(first.Wait() == 0);
  std::string written, released;
  std::ifstream(out) >> written >> released;
  CHECK(written == "ABORTED");
  CHECK(released == "ABORTED");
  auto holder = pool->Execute(Deadline::After(5s), "SELECT holder FROM " + table + " WHERE id = 1");
  REQUIRE(holder.ok());
  CHECK(holder->Text(0, 0) == "second");
  CHECK(second->Release().ok());
}
