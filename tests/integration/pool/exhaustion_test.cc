// Pool exhaustion with real PostgreSQL connections (the shared test server; the queries only
// sleep): more callers than max_size with a short deadline, and FIFO order of waiters.
#include <atomic>
#include <catch2/catch.hpp>
#include <cctype>
#include <chrono>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "keel/postgres/pool.h"
#include "support/subprocess.h"

namespace keel::postgres {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Pool> MakePool(const std::string& name, int max_size) {
  auto pool =
      Pool::Create({.conninfo = test::RequireEnv("KEEL_TEST_POSTGRES_URL"),
                    .pool = {.name = name, .max_size = max_size, .background_maintenance = false}})
          .value();
  pool->RunMaintenance();  // connections ready, so winners don't spend their time connecting
  REQUIRE(pool->Stats().idle == max_size);
  return pool;
}

TEST_CASE("pool exhaustion: max_size callers succeed, the rest time out explaining why",
          "[pool][postgres]") {
  auto pool = MakePool("exhaust", 3);
  std::atomic<int> ok{0};
  std::atomic<int> other{0};
  std::mutex mu;
  std::vector<std::string> timeouts;
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&] {
      auto lease = pool->Acquire(Deadline::After(300ms));
      if (lease.ok()) {
        // Hold the connection well past the others' deadline.
        absl::Status s = pool->Run(Deadline::After(5s), *lease,
                                   [](pqxx::work& tx) { tx.exec("SELECT pg_sleep(0.8)"); });
        (s.ok() ? ok : other).fetch_add(1);
      } else if (lease.status().code() == absl::StatusCode::kDeadlineExceeded) {
        std::lock_guard<std::mutex> lock(mu);
        timeouts.emplace_back(lease.status().message());
      } else {
        other.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(ok.load() == 3);
  CHECK(other.load() == 0);
  REQUIRE(timeouts.size() == 5);
  // Each message reads `postgres pool "exhaust": no connection within Nms (3/3 in use, W waiting)`:
  // N is what was left of the caller's 300 ms when it asked (a few ms less on a slow or sanitized
  // build), W the waiters, 1 to 5. Checked by hand: <regex> trips GCC 12's maybe-uninitialized
  // under ASan.
  const std::string head = "postgres pool \"exhaust\": no connection within ";
  const std::string tail = " waiting)";
  for (const std::string& m : timeouts) {
    INFO(m);
    REQUIRE(m.compare(0, head.size(), head) == 0);
    size_t pos = head.size();
    int waited_ms = 0;
    while (pos < m.size() && std::isdigit(static_cast<unsigned char>(m[pos]))) {
      waited_ms = waited_ms * 10 + (m[pos++] - '0');
    }
    CHECK(waited_ms > 250);
    CHECK(waited_ms <= 300);
    const std::string middle = "ms (3/3 in use, ";
    REQUIRE(m.compare(pos, middle.size(), middle) == 0);
    pos += middle.size();
    CHECK(m.size() == pos + 1 + tail.size());
    CHECK(m[pos] >= '1');
    CHECK(m[pos] <= '5');
    CHECK(m.compare(m.size() - tail.size(), tail.size(), tail) == 0);
  }
  CHECK(pool->Stats().timeouts_total == 5);
}

TEST_CASE("pool exhaustion: waiters get connections in arrival order", "[pool][postgres]") {
  auto pool = MakePool("fifo", 1);
  auto held = pool->Acquire(Deadline::After(5s));
  REQUIRE(held.ok());
  std::mutex mu;
  std::vector<int> order;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&, i] {
      absl::Status s = pool->Run(Deadline::After(10s), [&](pqxx::work& tx) {
        {
          std::lock_guard<std::mutex> lock(mu);
          order.push_back(i);
        }
        tx.exec("SELECT 1");
      });
      if (!s.ok()) failures.fetch_add(1);
    });
    // The next caller arrives only once this one is queued.
    const auto give_up = std::chrono::steady_clock::now() + 10s;
    while (pool->Stats().pending != i + 1 && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::yield();
    }
  }
  held->Release();
  for (auto& t : threads) t.join();
  CHECK(failures.load() == 0);
  CHECK(order == std::vector<int>{0, 1, 2, 3, 4, 5});
}

}  // namespace
}  // namespace keel::postgres
