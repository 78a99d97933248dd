// postgres::Pool recovering from real server failures, on a PostgreSQL cluster the test owns:
// every pool backend terminated (pg_terminate_backend), and a fast restart under load.
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "keel/postgres/pool.h"
#include "support/postgres_server.h"

namespace keel::postgres {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

std::unique_ptr<test::PgServer> StartServer() {
  auto server = test::PgServer::StartPrimary();
  REQUIRE(server.ok());
  return std::move(*server);
}

std::unique_ptr<Pool> VictimPool(const test::PgServer& server, int max_size) {
  return Pool::Create(
             {.conninfo = server.url(),
              .on_connect =
                  [](pqxx::connection_base& c) {
                    pqxx::nontransaction(c).exec("SET application_name = 'keel-victim'");
                    return absl::OkStatus();
                  },
              .pool = {.name = "pg-victim", .max_size = max_size, .background_maintenance = false}})
      .value();
}

// Terminates every backend of the victim pool, waits until those are gone, returns how many.
int TerminateVictims(const test::PgServer& server) {
  auto killed = server.Psql(
      "SELECT coalesce(string_agg(pid::text, ','), '') FROM ("
      "  SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity"
      "  WHERE application_name = 'keel-victim') AS t");
  REQUIRE(killed.ok());
  if (killed->empty()) return 0;
  for (int i = 0; i < 200; ++i) {
    auto left = server.Psql("SELECT count(*) FROM pg_stat_activity WHERE pid IN (" + *killed + ")");
    if (left.ok() && *left == "0") break;
    std::this_thread::sleep_for(10ms);
  }
  return static_cast<int>(std::count(killed->begin(), killed->end(), ',')) + 1;
}

// How a call in flight when its backend died may fail: UNAVAILABLE, or UNKNOWN when the
// connection was lost during COMMIT (its outcome cannot be known, so keel does not call it
// retryable).
bool InFlightFailure(const absl::Status& s) {
  return s.code() == absl::StatusCode::kUnavailable ||
         (s.code() == absl::StatusCode::kUnknown &&
          s.message().find("commit outcome unknown") != absl::string_view::npos);
}

absl::StatusOr<int> BackendPid(Pool& pool, Deadline d) {
  return pool.Run(d,
                  [](pqxx::work& tx) { return tx.exec1("SELECT pg_backend_pid()")[0].as<int>(); });
}

TEST_CASE("postgres pool recovers on fresh connections after every backend is terminated",
          "[postgres][failure]") {
  auto server = StartServer();
  auto pool = VictimPool(*server, 4);
  pool->RunMaintenance();
  REQUIRE(pool->Stats().idle == 4);
  std::set<int> old_pids;
  {
    std::vector<Lease> leases;
    for (int i = 0; i < 4; ++i) {
      auto lease = pool->Acquire(Deadline::After(5s));
      REQUIRE(lease.ok());
      old_pids.insert((*lease)->backendpid());
      leases.push_back(std::move(*lease));
    }
  }
  REQUIRE(TerminateVictims(*server) == 4);

  // Nothing was in flight, so nothing may fail: the broken idle connections are discarded at
  // handout (their sockets are readable) and replaced.
  for (int i = 0; i < 20; ++i) {
    auto pid = BackendPid(*pool, Deadline::After(5s));
    REQUIRE(pid.ok());
    CHECK(old_pids.count(*pid) == 0);
  }
  CHECK(pool->Stats().validation_failures_total == 4);

  // Now with calls in flight: only those may fail, and only with UNAVAILABLE.
  std::atomic<bool> stop{false};
  std::atomic<int> ok{0};
  std::atomic<int> unavailable{0};
  std::atomic<int> other{0};
  std::mutex other_mu;
  std::string other_messages;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      while (!stop) {
        absl::Status s = pool->Run(Deadline::After(5s),
                                   [](pqxx::work& tx) { tx.exec("SELECT pg_sleep(0.02)"); });
        if (s.ok()) {
          ok.fetch_add(1);
        } else if (InFlightFailure(s)) {
          unavailable.fetch_add(1);
        } else {
          other.fetch_add(1);
          std::lock_guard<std::mutex> lock(other_mu);
          other_messages += std::string(s.message()) + "\n";
        }
      }
    });
  }
  std::this_thread::sleep_for(200ms);
  const int killed = TerminateVictims(*server);
  std::this_thread::sleep_for(100ms);
  const int ok_before_tail = ok.load();
  const int failed_before_tail = unavailable.load();
  std::this_thread::sleep_for(300ms);
  stop = true;
  for (auto& t : threads) t.join();
  CHECK(killed >= 1);
  INFO(other_messages);
  CHECK(other.load() == 0);
  CHECK(unavailable.load() <= killed);              // at most one failed call per killed backend
  CHECK(unavailable.load() == failed_before_tail);  // and none once they were gone
  CHECK(ok.load() > ok_before_tail + 10);           // traffic flowed again
}

TEST_CASE("postgres pool recovers from a fast restart under load without hanging",
          "[postgres][failure]") {
  auto server = StartServer();
  auto pool = VictimPool(*server, 4);
  std::atomic<bool> stop{false};
  struct Call {
    Clock::time_point start, end;
    absl::Status status;
  };
  std::mutex calls_mu;
  std::vector<Call> calls;
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      while (!stop) {
        const auto start = Clock::now();
        auto pid = BackendPid(*pool, Deadline::After(2s));
        const auto end = Clock::now();
        std::lock_guard<std::mutex> lock(calls_mu);
        calls.push_back({start, end, pid.status()});
        if (!pid.ok()) std::this_thread::sleep_for(5ms);  // a client would back off too
      }
    });
  }
  std::this_thread::sleep_for(300ms);
  const auto restart_begin = Clock::now();
  REQUIRE(server->Restart("fast").ok());
  const auto back_up = Clock::now();
  std::this_thread::sleep_for(1500ms);
  stop = true;
  for (auto& t : threads) t.join();

  int failures = 0;
  int ok_after_recovery = 0;
  int failed_after_recovery = 0;
  std::optional<Clock::time_point> first_ok_after_restart;
  for (const Call& c : calls) {
    CHECK(c.end - c.start < 2500ms);  // no call hangs past its deadline
    if (!c.status.ok()) {
      ++failures;
      INFO(c.status.ToString());
      CHECK(InFlightFailure(c.status));
    }
    if (c.status.ok() && c.start >= restart_begin &&
        (!first_ok_after_restart || c.end < *first_ok_after_restart)) {
      first_ok_after_restart = c.end;
    }
    if (c.start >= back_up + 1s) {
      (c.status.ok() ? ok_after_recovery : failed_after_recovery)++;
    }
  }
  CHECK(failures > 0);  // the restart was felt ...
  REQUIRE(first_ok_after_restart.has_value());
  CHECK(*first_ok_after_restart - back_up < 1s);  // ... recovery within 1 s of the server
  CHECK(ok_after_recovery > 10);
  CHECK(failed_after_recovery == 0);
}

}  // namespace
}  // namespace keel::postgres
