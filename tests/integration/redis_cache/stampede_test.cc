// Stampede protection across processes: 4 processes x 50 threads on one cold key call the loader
// once in total; with the loading process killed (kill -9) mid-load the others still get the value
// within their deadlines.
//
// The workers are this test binary itself, started again with a hidden test case and their
// orders in the environment (KEEL_CACHE_WORKER = "<mode> <redis url> <cache name> <out>").
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

#include "integration/redis/test_server.h"
#include "integration/redis_limits/helpers.h"
#include "keel/cache/cache.h"
#include "keel/cache/local_tier.h"
#include "keel/redis/cache_stampede.h"
#include "keel/redis/cache_store.h"

using keel::Deadline;
using keel::cache::Cache;
using namespace std::chrono_literals;

namespace {

constexpr int kThreads = 50;
constexpr const char* kKey = "cold-key";

keel::test::Subprocess StartWorker(const std::string& spec, const std::string& log) {
  return keel::test::StartSelf("KEEL_CACHE_WORKER=" + spec, "[.redis_cache_worker]", log);
}

using keel::test::AwaitFile;

// Starts `n` "load" workers on `url`; returns their output paths (each worker's log is
// <out>.log) and appends the processes to `workers`.
std::vector<std::string> StartLoaders(int n, const std::string& url, const std::string& name,
                                      const keel::test::TempDir& dir,
                                      std::vector<keel::test::Subprocess>& workers) {
  std::vector<std::string> outs;
  for (int p = 0; p < n; ++p) {
    outs.push_back((dir.path() / std::string("worker").append(std::to_string(p))).string());
    workers.push_back(
        StartWorker("load " + url + " " + name + " " + outs.back(), outs.back() + ".log"));
  }
  for (const std::string& out : outs) REQUIRE(AwaitFile(out + ".ready"));
  return outs;
}

// Modes:
//   "load": kThreads threads GetOrLoad kKey once each (deadline 10 s) after <out>.go appears; the
//           loader counts itself in Redis (INCR <name>:loads), takes 300 ms and returns "value".
//           Writes "<ok calls> <slowest ms>" to <out>.
//   "hang": as "load", but the loader writes <out>.loading and never returns (the parent kills
//           the process).
int Worker(const std::string& mode, const std::string& url, const std::string& name,
           const std::string& out) {
  auto client = keel::test::MakeRedisClient(url, 4);
  auto lock = keel::redis::CacheStampedeLock::Create({.name = name, .ttl = 2s}, *client).value();
  Cache<std::string>::Tiers tiers;
  tiers.push_back(keel::cache::LocalTier<std::string>::Create({.max_entries = 100}).value());
  tiers.push_back(
      keel::redis::CacheTier<std::string>::Create({.name = name, .command_timeout = 2s}, *client)
          .value());
  auto cache = Cache<std::string>::Create({.name = name,
                                           .ttl = 60s,
                                           .stampede_lock = lock,
                                           .stampede_poll_interval = 10ms,
                                           .stampede_max_wait = 8s,
                                           .stampede_lock_timeout = 2s},
                                          std::move(tiers))
                   .value();
  const Cache<std::string>::Loader loader = [&](Deadline) -> absl::StatusOr<std::string> {
    if (!client->Command(Deadline::After(2s), "INCR", name + ":loads").ok()) {
      return absl::UnavailableError("could not count the load");
    }
    if (mode == "hang") {
      std::ofstream(out + ".loading").flush();
      std::this_thread::sleep_for(1h);
    }
    std::this_thread::sleep_for(300ms);
    return std::string("value");
  };
  std::ofstream(out + ".ready").flush();
  if (mode != "hang" && !AwaitFile(out + ".go")) return 3;
  std::atomic<int> ok{0};
  std::atomic<int64_t> slowest_ms{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      const auto start = std::chrono::steady_clock::now();
      absl::StatusOr<std::string> v = cache->GetOrLoad(Deadline::After(10s), kKey, loader);
      const int64_t ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::steady_clock::now() - start)
                             .count();
      int64_t seen = slowest_ms.load();
      while (ms > seen && !slowest_ms.compare_exchange_weak(seen, ms)) {
      }
      if (v.ok() && *v == "value") {
        ok.fetch_add(1);
      } else {
        std::fprintf(stderr, "GetOrLoad: %s\n", std::string(v.status().message()).c_str());
      }
    });
  }
  for (auto& t : threads) t.join();
  std::ofstream(out) << ok.load() << " " << slowest_ms.load() << "\n";
  return 0;
}

int64_t Loads(keel::redis::Client& client, const std::string& name) {
  auto r = client.Command(Deadline::After(1s), "GET", name + ":loads");
  REQUIRE(r.ok());
  return r->is_nil() ? 0 : std::stoll(r->str());
}

std::string Log(const std::filesystem::path& path) {
  std::stringstream log;
  log << std::ifstream(path).rdbuf();
  return log.str();
}

}  // namespace

TEST_CASE("redis cache worker", "[.redis_cache_worker]") {
  const auto spec = keel::test::Env("KEEL_CACHE_WORKER");
  // Hidden, so ctest never runs it; selected by its tag without orders it is a no-op.
  if (!spec.has_value()) return;
  std::istringstream in(*spec);
  std::string mode, url, name, out;
  in >> mode >> url >> name >> out;
  REQUIRE(!out.empty());
  std::_Exit(Worker(mode, url, name, out));  // the exit code is the verdict
}

TEST_CASE("redis cache stampede lock: 4 processes x 50 threads on one cold key load it once",
          "[redis_cache]") {
  constexpr int kProcesses = 4;
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  const std::string name = "stampede";
  keel::test::TempDir dir("keel-cache-stampede");
  std::vector<keel::test::Subprocess> workers;
  const std::vector<std::string> outs = StartLoaders(kProcesses, server.url(), name, dir, workers);
  for (const std::string& out : outs) std::ofstream(out + ".go").flush();
  for (int p = 0; p < kProcesses; ++p) {
    const int code = workers[p].Wait();
    if (code != 0) UNSCOPED_INFO("worker " << p << " log:\n" << Log(outs[p] + ".log"));
    CHECK(code == 0);
    int ok = 0;
    std::ifstream(outs[p]) >> ok;
    CHECK(ok == kThreads);
  }
  CHECK(Loads(*client, name) == 1);
  // The lock's keys are gone: nothing per key stays in Redis but the entry.
  auto keys = client->Command(Deadline::After(1s), "KEYS", "*lock*");
  REQUIRE(keys.ok());
  CHECK(keys->elements().empty());
}

TEST_CASE(
    "redis cache stampede lock: with the loading process killed mid-load the others still "
    "get the value within their deadlines",
    "[redis_cache]") {
  constexpr int kOthers = 3;
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  const std::string name = "stampede-kill";
  keel::test::TempDir dir("keel-cache-stampede-kill");
  const std::string holder_out = (dir.path() / "holder").string();
  keel::test::Subprocess holder =
      StartWorker("hang " + server.url() + " " + name + " " + holder_out, holder_out + ".log");
  REQUIRE(AwaitFile(holder_out + ".loading"));  // it holds the lock and is loading
  std::vector<keel::test::Subprocess> workers;
  const std::vector<std::string> outs = StartLoaders(kOthers, server.url(), name, dir, workers);
  for (const std::string& out : outs) std::ofstream(out + ".go").flush();
  holder.Kill();  // kill -9 while it holds the lock
  for (int p = 0; p < kOthers; ++p) {
    const int code = workers[p].Wait();
    if (code != 0) UNSCOPED_INFO("worker " << p << " log:\n" << Log(outs[p] + ".log"));
    CHECK(code == 0);
    int ok = 0;
    int64_t slowest_ms = 0;
    std::ifstream(outs[p]) >> ok >> slowest_ms;
    CHECK(ok == kThreads);
    // Within the 10 s deadline, and within the bound: what is left of the dead holder's lease
    // (2 s) + one poll (10 ms) + one load (300 ms), plus the process start-up.
    CHECK(slowest_ms < 4000);
  }
  // The dead holder's load and exactly one more.
  CHECK(Loads(*client, name) == 2);
}
