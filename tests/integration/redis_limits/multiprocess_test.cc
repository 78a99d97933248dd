// Many processes, one limit: 4 processes x 8 threads hammer one key of each algorithm on a real
// Redis, and the total admitted must be what one limiter would admit.
//
// The workers are this test binary itself, started again with the hidden test case
// "[.redis_limits_worker]" and their orders in the environment (KEEL_RL_WORKER). Every worker
// hammers during the same second, which the parent places inside one 2 s window of the server's
// clock, so:
//   - exact algorithms (fixed window, sliding log, GCRA and token bucket with a refill slower than
//     the run) admit exactly L in total;
//   - the sliding counter (approximate) admits exactly L as well here (no previous window), and
//     never more than L per aligned window, its documented bound.
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "integration/redis_limits/helpers.h"
#include "keel/redis/rate_limiter.h"

using keel::Deadline;
using keel::redis::RateLimiter;
using namespace std::chrono_literals;

namespace {

constexpr int kProcesses = 4;
constexpr int kThreads = 8;
constexpr int64_t kLimit = 50;
constexpr auto kWindow = 2s;
constexpr auto kRun = 1s;

// The algorithms under test, each admitting exactly kLimit during one kRun inside one window.
std::vector<RateLimiter::Algorithm> Algorithms() {
  const keel::limit::SlidingWindowOptions w{.limit = kLimit, .window = kWindow};
  return {
      keel::limit::FixedWindow::Options{.limit = kLimit, .window = kWindow},
      keel::redis::SlidingWindowLogOptions{w},
      keel::redis::SlidingWindowCounterOptions{w},
      // Refill of one every 72 s: nothing is added during the run.
      keel::limit::Gcra::Options{.count = kLimit, .period = 1h, .max_burst = kLimit - 1},
      keel::limit::TokenBucket::Options{.rate = kLimit / 3600.0, .burst = kLimit},
  };
}

int64_t UnixMicros() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

// Worker: KEEL_RL_WORKER = "<redis url> <name prefix> <start unix us> <stop unix us> <out file>".
TEST_CASE("redis limits multi-process worker", "[.redis_limits_worker]") {
  const auto spec = keel::test::Env("KEEL_RL_WORKER");
  // Hidden, so ctest never runs it; selected by a tag filter without orders it is a no-op.
  if (!spec.has_value()) return;
  std::istringstream in(*spec);
  std::string url, prefix, out;
  int64_t start_us = 0, stop_us = 0;
  in >> url >> prefix >> start_us >> stop_us >> out;
  REQUIRE(!out.empty());
  auto client = keel::test::MakeRedisClient(url, kThreads);
  std::vector<std::unique_ptr<RateLimiter>> limiters;
  const auto algorithms = Algorithms();
  for (size_t i = 0; i < algorithms.size(); ++i) {
    limiters.push_back(RateLimiter::Create({.name = prefix + "-" + std::to_string(i),
                                            .algorithm = algorithms[i],
                                            .fail_mode = keel::redis::FailMode::kClosed,
                                            .blocked_cache_size = 0},
                                           *client)
                           .value());
  }
  REQUIRE(limiters[0]->Check("warm-up", 0, Deadline::After(1s)).ok());
  std::vector<std::atomic<int64_t>> admitted(limiters.size());
  std::atomic<int64_t> errors{0};
  while (UnixMicros() < start_us) std::this_thread::sleep_for(1ms);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (size_t i = t; UnixMicros() < stop_us; ++i) {
        const size_t which = i % limiters.size();
        auto d = limiters[which]->Check("hot", 1, Deadline::After(1s));
        if (!d.ok()) {
          errors.fetch_add(1);
        } else if (d->allowed) {
          admitted[which].fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  std::ofstream file(out);
  for (auto& a : admitted) file << a.load() << " ";
  file << errors.load() << "\n";
}

TEST_CASE("redis limits admit exactly L in total to 4 processes x 8 threads on one key") {
  const std::string url = keel::test::RequireEnv("KEEL_TEST_REDIS_URL");
  auto client = keel::test::MakeRedisClient(url);
  const std::string prefix = keel::test::UniqueName("mp");
  // Start 150 ms after the next window boundary of the server's clock, at least 300 ms from now
  // (time for the workers to start), and stop kRun later: well inside one window.
  const auto time = client->Command(Deadline::After(1s), "TIME");
  REQUIRE(time.ok());
  const int64_t server_now =
      std::stoll(time->elements()[0].str()) * 1'000'000 + std::stoll(time->elements()[1].str());
  const int64_t w = std::chrono::duration_cast<std::chrono::microseconds>(kWindow).count();
  const int64_t boundary = (server_now + 300'000) / w * w + w;
  const int64_t start = boundary + 150'000;
  const int64_t stop = start + std::chrono::duration_cast<std::chrono::microseconds>(kRun).count();

  keel::test::TempDir dir("keel-rl-mp");
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<keel::test::Subprocess> workers;
  std::vector<std::string> outs;
  for (int p = 0; p < kProcesses; ++p) {
    outs.push_back((dir.path() / ("worker" + std::to_string(p))).string());
    const std::string env = url + " " + prefix + " " + std::to_string(start) + " " +
                            std::to_string(stop) + " " + outs.back();
    workers.push_back(keel::test::Subprocess::Start(
        {"/usr/bin/env", "KEEL_RL_WORKER=" + env, exe, "[.redis_limits_worker]"},
        (dir.path() / ("worker" + std::to_string(p) + ".log")).string()));
  }
  for (auto& w : workers) CHECK(w.Wait() == 0);

  const size_t n = Algorithms().size();
  std::vector<int64_t> total(n, 0);
  int64_t errors = 0;
  for (const std::string& out : outs) {
    std::ifstream file(out);
    REQUIRE(file.good());
    for (size_t i = 0; i < n; ++i) {
      int64_t a = -1;
      file >> a;
      REQUIRE(a >= 0);
      total[i] += a;
    }
    int64_t e = -1;
    file >> e;
    errors += e;
  }
  CHECK(errors == 0);
  for (size_t i = 0; i < n; ++i) {
    INFO("algorithm index " << i);
    CHECK(total[i] == kLimit);
  }
}
