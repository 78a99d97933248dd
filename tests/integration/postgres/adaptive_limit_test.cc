// An AdaptiveLimiter (Envoy's gradient controller) in front of real PostgreSQL queries
// (`SELECT pg_sleep(0.02)`) whose capacity is restricted to 8 at once by the pool's size, on the
// shared test server (KEEL_TEST_POSTGRES_URL). Offered load is closed-loop: 8 clients (1x
// capacity), then 32 (4x); a refused client waits 20 ms before it tries again. The limit must track
// the capacity and goodput at 4x stay >= 90% of the 1x peak. About five seconds.
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "keel/overload/adaptive_limit_stage.h"
#include "keel/overload/adaptive_limiter.h"
#include "keel/overload/gradient_limit.h"
#include "keel/postgres/pool.h"
#include "support/subprocess.h"

namespace keel::overload {
namespace {

using namespace std::chrono_literals;

constexpr int kCapacity = 8;

struct Phase {
  int64_t completed = 0, rejected = 0, failed = 0;
  double goodput = 0;       // successful queries per second
  std::vector<int> limits;  // sampled every 20ms
};

// `clients` threads call through `limiter` for `length`; only the last `measure` is counted.
Phase Run(AdaptiveLimiter& limiter, postgres::Pool& pool, int clients, Duration length,
          Duration measure) {
  std::atomic<bool> stop{false}, measuring{false};
  std::atomic<int64_t> completed{0}, rejected{0}, failed{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&] {
      while (!stop.load()) {
        absl::StatusOr<AdaptiveLimiter::Permit> permit = limiter.TryAcquire();
        if (!permit.ok()) {
          if (measuring.load()) rejected.fetch_add(1);
          // A refused client backs off for about one query time before it tries again. (Retrying
          // every 2 ms, 32 threads wake 16,000 times a second; on a loaded 2-core machine that
          // starves the clients holding permits, whose latency the limiter then measures.)
          std::this_thread::sleep_for(20ms);
          continue;
        }
        absl::StatusOr<postgres::Rows> r =
            pool.Execute(Deadline::After(2s), "SELECT pg_sleep(0.02)");
        permit->Record(DefaultOutcome(r.status()));
        if (!measuring.load()) continue;
        (r.ok() ? completed : failed).fetch_add(1);
      }
    });
  }
  Phase p;
  const auto start = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(length - measure);
  measuring.store(true);
  const auto measure_start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - measure_start < measure) {
    p.limits.push_back(limiter.limit());
    std::this_thread::sleep_for(20ms);
  }
  measuring.store(false);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - measure_start).count();
  stop.store(true);
  for (auto& t : threads) t.join();
  (void)start;
  p.completed = completed.load();
  p.rejected = rejected.load();
  p.failed = failed.load();
  p.goodput = p.completed / seconds;
  return p;
}

int Median(std::vector<int> v) {
  std::nth_element(v.begin(), v.begin() + static_cast<ptrdiff_t>(v.size() / 2), v.end());
  return v[v.size() / 2];
}

TEST_CASE("adaptive limiter in front of PostgreSQL tracks its capacity and keeps goodput at 4x",
          "[postgres]") {
  postgres::PoolOptions o;
  o.conninfo = test::RequireEnv("KEEL_TEST_POSTGRES_URL");
  o.pool.name = "pg-adaptive";
  o.pool.max_size = kCapacity;
  o.pool.background_maintenance = false;
  auto pool = postgres::Pool::Create(std::move(o)).value();
  auto limiter =
      AdaptiveLimiter::Create(
          {.name = "pg"},
          GradientLimit::Create({.min_rtt_interval = 60s, .min_rtt_request_count = 20}).value())
          .value();
  // Open the pool's connections first: connecting is not what is measured.
  {
    std::vector<std::thread> warm;
    for (int i = 0; i < kCapacity; ++i) {
      warm.emplace_back([&] { (void)pool->Execute(Deadline::After(5s), "SELECT 1"); });
    }
    for (auto& t : warm) t.join();
  }
  const Phase peak = Run(*limiter, *pool, kCapacity, 1500ms, 1s);
  const Phase overload = Run(*limiter, *pool, 4 * kCapacity, 2500ms, 1500ms);
  std::printf(
      "postgres behind an adaptive limiter (capacity %d x 20ms = %d/s):\n"
      "  1x: goodput %.0f/s, limit median %d, rejected %lld, failed %lld\n"
      "  4x: goodput %.0f/s (%.0f%% of 1x), limit median %d (min %d, max %d), rejected %lld, "
      "failed %lld\n",
      kCapacity, kCapacity * 50, peak.goodput, Median(peak.limits),
      static_cast<long long>(peak.rejected), static_cast<long long>(peak.failed), overload.goodput,
      100 * overload.goodput / peak.goodput, Median(overload.limits),
      *std::min_element(overload.limits.begin(), overload.limits.end()),
      *std::max_element(overload.limits.begin(), overload.limits.end()),
      static_cast<long long>(overload.rejected), static_cast<long long>(overload.failed));
  const AdaptiveLimiterStats st = limiter->Stats();
  std::printf("  limiter: in flight %d, minRTT %.1f ms, last sample RTT %.1f ms\n", st.in_flight,
              std::chrono::duration<double, std::milli>(st.rtt.no_load).count(),
              std::chrono::duration<double, std::milli>(st.rtt.sample).count());
  CHECK(peak.failed == 0);
  CHECK(overload.failed == 0);
  CHECK(overload.goodput >= 0.9 * peak.goodput);
  // The limit tracks the capacity: at least what the server can run, at most twice it (the
  // excess waits in the pool and shows as latency), and the excess clients are turned away.
  CHECK(Median(overload.limits) >= kCapacity);
  CHECK(Median(overload.limits) <= 2 * kCapacity);
  CHECK(overload.rejected > 0);
}

}  // namespace
}  // namespace keel::overload
