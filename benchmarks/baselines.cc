// The physical floors every keel benchmark target is a ratio to, measured in the same run:
// a steady-clock read, a clock read plus one uncontended CAS, an absl::Mutex lock/unlock, one
// random memory load, a flat_hash_map hit under a mutex, a hiredis PING round trip, a trivial
// EVALSHA, and a libpqxx SELECT 1. The server floors read
// KEEL_TEST_REDIS_URL / KEEL_TEST_POSTGRES_URL and skip with a message when they are absent.
#include <benchmark/benchmark.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <pqxx/pqxx>
#include <random>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "bench_env.h"
#include "keel/sync.h"
#include "zipf.h"

namespace {

void BM_Baseline_SteadyClockNow(benchmark::State& state) {
  for (auto _ : state) {
    benchmark::DoNotOptimize(std::chrono::steady_clock::now());
  }
}
BENCHMARK(BM_Baseline_SteadyClockNow);

// The cost model of a lock-free limiter or breaker: read the clock, then CAS one word.
void BM_Baseline_ClockPlusCas(benchmark::State& state) {
  static std::atomic<int64_t> word{0};
  for (auto _ : state) {
    const int64_t now = std::chrono::steady_clock::now().time_since_epoch().count();
    int64_t expected = word.load(std::memory_order_relaxed);
    word.compare_exchange_strong(expected, now, std::memory_order_relaxed);
    benchmark::DoNotOptimize(expected);
  }
}
BENCHMARK(BM_Baseline_ClockPlusCas)->Threads(1)->Threads(2);

void BM_Baseline_MutexLockUnlock(benchmark::State& state) {
  static absl::Mutex mu;
  for (auto _ : state) {
    mu.Lock();
    benchmark::ClobberMemory();
    mu.Unlock();
  }
}
BENCHMARK(BM_Baseline_MutexLockUnlock)->Threads(1)->Threads(2);

// keel::Mutex (std::mutex underneath), what keel's components actually lock.
void BM_Baseline_KeelMutexLockUnlock(benchmark::State& state) {
  static keel::Mutex mu;
  for (auto _ : state) {
    mu.Lock();
    benchmark::ClobberMemory();
    mu.Unlock();
  }
}
BENCHMARK(BM_Baseline_KeelMutexLockUnlock)->Threads(1)->Threads(2);

// One random load from memory: a dependent pointer chase through a 64 MiB random cycle, so
// every load misses the caches (what a cold entry of a large in-memory table costs per access).
void BM_Baseline_RandomMemoryLoad(benchmark::State& state) {
  static const std::vector<uint32_t>* next = [] {
    const size_t n = size_t{16} << 20;  // 16M uint32_t = 64 MiB
    std::vector<uint32_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = static_cast<uint32_t>(i);
    std::mt19937_64 rng(7);
    std::shuffle(order.begin(), order.end(), rng);
    auto* cycle = new std::vector<uint32_t>(n);
    for (size_t i = 0; i < n; ++i) (*cycle)[order[i]] = order[(i + 1) % n];
    return cycle;
  }();
  uint32_t p = 0;
  for (auto _ : state) {
    p = (*next)[p];
    benchmark::DoNotOptimize(p);
  }
}
BENCHMARK(BM_Baseline_RandomMemoryLoad);

// The floor of a local cache hit: an absl::flat_hash_map<std::string, uint64_t> lookup of a
// 16-byte key under one absl::Mutex, over the same 1M keys and Zipf(0.99) order as
// BM_LocalStore_Hit (benchmarks/zipf.h). Items per second is the throughput of all threads.
void BM_Baseline_MutexFlatHashMapHit(benchmark::State& state) {
  const keel::bench::HitWorkload& w = keel::bench::Hits();
  static absl::Mutex mu;
  static const auto* map = [&] {
    auto* m = new absl::flat_hash_map<std::string, uint64_t>;
    m->reserve(w.keys.size());
    for (size_t i = 0; i < w.keys.size(); ++i) m->emplace(w.keys[i], i);
    return m;
  }();
  size_t i = static_cast<size_t>(state.thread_index()) * (keel::bench::kHitOrder / 2);
  uint64_t misses = 0;
  for (auto _ : state) {
    const std::string& key = w.keys[w.order[i++ & (keel::bench::kHitOrder - 1)]];
    mu.Lock();
    const auto it = map->find(key);
    if (it == map->end()) {
      ++misses;
    } else {
      benchmark::DoNotOptimize(it->second);
    }
    mu.Unlock();
  }
  if (misses > 0) state.SkipWithError("a key was missing");
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Baseline_MutexFlatHashMapHit)->UseRealTime()->Threads(1)->Threads(2);

struct RedisContextDeleter {
  void operator()(redisContext* c) const { redisFree(c); }
};
using RedisContextPtr = std::unique_ptr<redisContext, RedisContextDeleter>;

// Connects to KEEL_TEST_REDIS_URL (redis://host:port[/db]) with plain hiredis, or explains why not.
RedisContextPtr ConnectRedis(benchmark::State& state) {
  const auto url = keel::bench::Env("KEEL_TEST_REDIS_URL");
  if (!url) {
    state.SkipWithError("KEEL_TEST_REDIS_URL is not set (run scripts/bench or scripts/test)");
    return nullptr;
  }
  std::string rest = url->substr(url->find("://") == std::string::npos ? 0 : url->find("://") + 3);
  rest = rest.substr(0, rest.find('/'));
  if (auto at = rest.rfind('@'); at != std::string::npos) rest = rest.substr(at + 1);
  const auto colon = rest.rfind(':');
  const std::string host = rest.substr(0, colon);
  const int port = colon == std::string::npos ? 6379 : std::stoi(rest.substr(colon + 1));
  RedisContextPtr c(redisConnect(host.c_str(), port));
  if (c == nullptr || c->err != 0) {
    state.SkipWithError(("cannot connect to " + *url).c_str());
    return nullptr;
  }
  return c;
}

void BM_Baseline_RedisPing(benchmark::State& state) {
  RedisContextPtr c = ConnectRedis(state);
  if (!c) return;
  for (auto _ : state) {
    auto* reply = static_cast<redisReply*>(redisCommand(c.get(), "PING"));
    if (reply == nullptr) {
      state.SkipWithError("PING failed");
      break;
    }
    freeReplyObject(reply);
  }
}
BENCHMARK(BM_Baseline_RedisPing)->UseRealTime();

// The multiplexed transport's floor: N PINGs written at once on one hiredis connection, then
// their N replies read (items/s is PINGs per second over one connection).
void BM_Baseline_RedisPipelinedPing(benchmark::State& state) {
  RedisContextPtr c = ConnectRedis(state);
  if (!c) return;
  const auto n = static_cast<int>(state.range(0));
  for (auto _ : state) {
    for (int i = 0; i < n; ++i) redisAppendCommand(c.get(), "PING");
    for (int i = 0; i < n; ++i) {
      void* reply = nullptr;
      if (redisGetReply(c.get(), &reply) != REDIS_OK) {
        state.SkipWithError("pipelined PING failed");
        return;
      }
      freeReplyObject(reply);
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
}
BENCHMARK(BM_Baseline_RedisPipelinedPing)->UseRealTime()->Arg(16)->Arg(64);

void BM_Baseline_RedisEvalshaTrivial(benchmark::State& state) {
  RedisContextPtr c = ConnectRedis(state);
  if (!c) return;
  auto* load = static_cast<redisReply*>(redisCommand(c.get(), "SCRIPT LOAD %s", "return 1"));
  if (load == nullptr || load->type != REDIS_REPLY_STRING) {
    state.SkipWithError("SCRIPT LOAD failed");
    if (load) freeReplyObject(load);
    return;
  }
  const std::string sha(load->str, load->len);
  freeReplyObject(load);
  for (auto _ : state) {
    auto* reply = static_cast<redisReply*>(redisCommand(c.get(), "EVALSHA %s 0", sha.c_str()));
    if (reply == nullptr || reply->type != REDIS_REPLY_INTEGER) {
      state.SkipWithError("EVALSHA failed");
      if (reply) freeReplyObject(reply);
      break;
    }
    freeReplyObject(reply);
  }
}
// At 1 and 16 threads (one connection each): the floor of shared Redis limiters at the same
// concurrency.
BENCHMARK(BM_Baseline_RedisEvalshaTrivial)->UseRealTime()->Threads(1)->Threads(16);

// kRoundTrips `SELECT 1` per iteration on one held libpqxx connection, no transaction.
template <int kRoundTrips>
void PgRoundTrips(benchmark::State& state) {
  const auto url = keel::bench::Env("KEEL_TEST_POSTGRES_URL");
  if (!url) {
    state.SkipWithError("KEEL_TEST_POSTGRES_URL is not set (run scripts/bench or scripts/test)");
    return;
  }
  try {
    pqxx::connection conn(*url);
    for (auto _ : state) {
      pqxx::nontransaction tx(conn);
      for (int i = 0; i < kRoundTrips; ++i) {
        benchmark::DoNotOptimize(tx.exec1("SELECT 1")[0].as<int>());
      }
    }
  } catch (const std::exception& e) {
    state.SkipWithError(e.what());
  }
}

void BM_Baseline_PgSelect1(benchmark::State& state) { PgRoundTrips<1>(state); }
BENCHMARK(BM_Baseline_PgSelect1)->UseRealTime();

// The floor of a three-statement transaction: three round trips on a held connection.
void BM_Baseline_Pg3RoundTrips(benchmark::State& state) { PgRoundTrips<3>(state); }
BENCHMARK(BM_Baseline_Pg3RoundTrips)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
