// postgres::Pool keeps every deadline on the client: with the server paused (SIGSTOP) under load,
// against a socket that accepts TCP but never answers, and at Shutdown.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "keel/postgres/pool.h"
#include "support/postgres_server.h"

namespace keel::postgres {
namespace {

using namespace std::chrono_literals;
using Steady = std::chrono::steady_clock;

// A loopback TCP listener that never accepts: the kernel completes the handshake (backlog) and
// nothing ever answers, like a server stuck or a proxy with a dead backend.
class SilentListener {
 public:
  SilentListener() {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = 0;
    REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
    REQUIRE(::listen(fd_, 64) == 0);
    socklen_t len = sizeof addr;
    REQUIRE(::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port_ = ntohs(addr.sin_port);
  }
  ~SilentListener() { ::close(fd_); }
  std::string conninfo() const {
    return "host=127.0.0.1 port=" + std::to_string(port_) + " user=postgres dbname=postgres";
  }

 private:
  int fd_ = -1;
  int port_ = 0;
};

template <typename Pred>
bool Eventually(Pred pred, std::chrono::milliseconds limit = 5s) {
  const auto give_up = Steady::now() + limit;
  while (Steady::now() < give_up) {
    if (pred()) return true;
    std::this_thread::sleep_for(5ms);
  }
  return false;
}

TEST_CASE("postgres connect ends by a sub-second deadline when the server never answers",
          "[postgres][deadline]") {
  SilentListener silent;
  auto pool = Pool::Create({.conninfo = silent.conninfo(),
                            .pool = {.name = "pg-silent", .background_maintenance = false}})
                  .value();
  for (auto budget : {100ms, 300ms, 1200ms}) {
    INFO("deadline " << budget.count() << " ms");
    const auto start = Steady::now();
    auto lease = pool->Acquire(Deadline::After(budget));
    const auto took = Steady::now() - start;
    CHECK(lease.status().code() == absl::StatusCode::kDeadlineExceeded);
    CHECK(took >= budget);
    CHECK(took < budget + 50ms);  // libpq's connect_timeout alone would take at least 2 s
  }
}

TEST_CASE("postgres pool shuts down at once while its maintainer connects to a silent server",
          "[postgres][deadline]") {
  SilentListener silent;
  // The maintainer connects with pool.acquire_timeout (30 s) as its deadline.
  auto pool = Pool::Create({.conninfo = silent.conninfo(), .pool = {.name = "pg-silent"}}).value();
  REQUIRE(Eventually([&] { return pool->Stats().connecting >= 1; }));
  const auto start = Steady::now();
  pool->Shutdown();
  const auto took = Steady::now() - start;
  CHECK(took < 100ms);  // connects are abandoned, not waited for (shutdown_timeout is 1 s)
  CHECK(pool->Acquire(Deadline::After(1s)).status().code() ==
        absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("postgres Shutdown cuts a call in flight after shutdown_timeout",
          "[postgres][deadline]") {
  auto server = test::PgServer::StartPrimary();
  REQUIRE(server.ok());
  auto pool = Pool::Create({.conninfo = (*server)->url(),
                            .shutdown_timeout = 300ms,
                            .pool = {.name = "pg-shut", .background_maintenance = false}})
                  .value();
  REQUIRE(pool->Execute(Deadline::After(5s), "SELECT 1").ok());
  absl::Status status;
  Steady::time_point returned;
  std::thread caller([&] {
    status =
        pool->Run(Deadline::After(20s), [](pqxx::work& tx) { tx.exec("SELECT pg_sleep(10)"); });
    returned = Steady::now();
  });
  REQUIRE(Eventually([&] { return pool->Stats().in_use == 1; }));
  std::this_thread::sleep_for(50ms);  // the statement is on the server
  const auto shutdown_at = Steady::now();
  pool->Shutdown();
  CHECK(Steady::now() - shutdown_at < 100ms);  // Shutdown itself does not wait for the call
  caller.join();
  CHECK(status.code() == absl::StatusCode::kCancelled);
  CHECK(status.message() ==
        "postgres pool \"pg-shut\": cut by Shutdown (shutdown_timeout passed); the connection is "
        "closed");
  CHECK(returned - shutdown_at >= 300ms);
  CHECK(returned - shutdown_at < 350ms);
}

TEST_CASE("postgres calls end by their deadline while the server is paused, and recover after",
          "[postgres][deadline]") {
  auto server = test::PgServer::StartPrimary();
  REQUIRE(server.ok());
  auto pool =
      Pool::Create({.conninfo = (*server)->url(), .pool = {.name = "pg-paused", .max_size = 4}})
          .value();
  pool->RunMaintenance();
  struct Call {
    Steady::time_point start, end;
    std::chrono::milliseconds budget;
    absl::StatusCode code;
    std::string message;
  };
  std::mutex mu;
  std::vector<Call> calls;
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; !stop; ++i) {
        const auto budget = std::chrono::milliseconds(100 + 100 * ((t + i) % 5));  // 100-500 ms
        const auto start = Steady::now();
        absl::Status status;
        if ((t + i) % 2 == 0) {
          status = pool->Execute(Deadline::After(budget), "SELECT $1::int", t).status();
        } else {
          status = pool->Run(Deadline::After(budget),
                             [](pqxx::work& tx) { return tx.exec1("SELECT 1")[0].as<int>(); })
                       .status();
        }
        const absl::StatusCode code = status.code();
        const auto end = Steady::now();
        {
          std::lock_guard<std::mutex> lock(mu);
          calls.push_back({start, end, budget, code, std::string(status.message())});
        }
        if (code != absl::StatusCode::kOk) std::this_thread::sleep_for(5ms);
      }
    });
  }
  std::this_thread::sleep_for(500ms);
  REQUIRE((*server)->Pause().ok());
  const auto paused_at = Steady::now();
  std::this_thread::sleep_for(5s);
  REQUIRE((*server)->Resume().ok());
  const auto resumed_at = Steady::now();
  std::this_thread::sleep_for(2s);
  stop = true;
  for (auto& t : threads) t.join();

  int late = 0;
  int failed_while_paused = 0;
  int ok_after = 0;
  int failed_after = 0;
  std::string failures_after;
  Steady::duration worst_overrun = Steady::duration::zero();
  for (const Call& c : calls) {
    const auto overrun = (c.end - c.start) - c.budget;
    worst_overrun = std::max(worst_overrun, overrun);
    if (overrun > 50ms) ++late;
    if (c.code != absl::StatusCode::kOk && c.start > paused_at + 600ms && c.end < resumed_at) {
      CHECK((c.code == absl::StatusCode::kDeadlineExceeded ||
             c.code == absl::StatusCode::kUnavailable));
      ++failed_while_paused;
    }
    // Recovery is judged on calls with room for a reconnect (a fork of a backend on a loaded
    // 2-core machine can take 100 ms by itself): every one of them must succeed.
    if (c.start > resumed_at + 1s && c.budget >= 300ms) {
      if (c.code == absl::StatusCode::kOk) {
        ++ok_after;
      } else {
        ++failed_after;
        failures_after += c.message + "\n";
      }
    }
  }
  INFO("worst overrun "
       << std::chrono::duration_cast<std::chrono::milliseconds>(worst_overrun).count()
       << " ms over " << calls.size() << " calls");
  INFO(failures_after);
  CHECK(late == 0);
  CHECK(failed_while_paused > 50);  // the pause was felt by every thread, many times
  CHECK(ok_after > 100);            // recovered without a restart ...
  CHECK(failed_after == 0);         // ... fully
}

}  // namespace
}  // namespace keel::postgres
