// Rate limiter hot paths, next to the floors in baselines.cc measured in the same run.
// Targets (issue 5): BM_TokenBucket_TryAcquire and BM_Gcra_TryAcquire uncontended <= 1.5x
// BM_Baseline_ClockPlusCas; BM_Keyed_TokenBucket_TryAcquire over 100k distinct keys <= 150 ns.
#include <benchmark/benchmark.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "keel/limit/concurrency_limiter.h"
#include "keel/limit/fixed_window.h"
#include "keel/limit/gcra.h"
#include "keel/limit/keyed.h"
#include "keel/limit/keyed_concurrency_limiter.h"
#include "keel/limit/leaky_bucket.h"
#include "keel/limit/sliding_window.h"
#include "keel/limit/token_bucket.h"

namespace {

using namespace std::chrono_literals;
using namespace keel::limit;

// A rate far above the call rate, so (almost) every call is admitted and pays for its CAS: the
// expensive path, not the cheap denial.
constexpr double kHugeRate = 1e9;

void BM_TokenBucket_TryAcquire(benchmark::State& state) {
  static TokenBucket bucket = TokenBucket::Create({.rate = kHugeRate, .burst = 1'000'000}).value();
  int64_t admitted = 0;
  for (auto _ : state) admitted += bucket.TryAcquire().value().allowed;
  state.counters["admitted"] =
      benchmark::Counter(static_cast<double>(admitted), benchmark::Counter::kAvgIterations);
}
BENCHMARK(BM_TokenBucket_TryAcquire)->Threads(1)->Threads(2);

void BM_Gcra_TryAcquire(benchmark::State& state) {
  static Gcra gcra =
      Gcra::Create({.count = 1'000'000'000, .period = 1s, .max_burst = 1'000'000}).value();
  int64_t admitted = 0;
  for (auto _ : state) admitted += gcra.TryAcquire().value().allowed;
  state.counters["admitted"] =
      benchmark::Counter(static_cast<double>(admitted), benchmark::Counter::kAvgIterations);
}
BENCHMARK(BM_Gcra_TryAcquire)->Threads(1)->Threads(2);

void BM_FixedWindow_TryAcquire(benchmark::State& state) {
  static FixedWindow window =
      FixedWindow::Create({.limit = int64_t{1} << 60, .window = 1s}).value();
  for (auto _ : state) benchmark::DoNotOptimize(window.TryAcquire().value());
}
BENCHMARK(BM_FixedWindow_TryAcquire)->Threads(1)->Threads(2);

void BM_SlidingWindowCounter_TryAcquire(benchmark::State& state) {
  static SlidingWindowCounter counter =
      SlidingWindowCounter::Create({.limit = int64_t{1} << 40, .window = 1s}).value();
  for (auto _ : state) benchmark::DoNotOptimize(counter.TryAcquire().value());
}
BENCHMARK(BM_SlidingWindowCounter_TryAcquire)->Threads(1)->Threads(2);

// The log pays per admission (one deque entry per distinct instant): its limit bounds memory.
void BM_SlidingWindowLog_TryAcquire(benchmark::State& state) {
  static SlidingWindowLog log =
      SlidingWindowLog::Create({.limit = 1'000'000, .window = 10ms}).value();
  for (auto _ : state) benchmark::DoNotOptimize(log.TryAcquire().value());
}
BENCHMARK(BM_SlidingWindowLog_TryAcquire);

void BM_LeakyBucket_Admit(benchmark::State& state) {
  static LeakyBucket shaper =
      LeakyBucket::Create({.rate = kHugeRate, .capacity = 1'000'000}).value();
  for (auto _ : state) benchmark::DoNotOptimize(shaper.Admit());
}
BENCHMARK(BM_LeakyBucket_Admit)->Threads(1)->Threads(2);

void BM_ConcurrencyLimiter_AcquireRelease(benchmark::State& state) {
  static std::unique_ptr<ConcurrencyLimiter> limiter =
      ConcurrencyLimiter::Create({.max = 1000}).value();
  for (auto _ : state) {
    auto permit = limiter->TryAcquire();
    benchmark::DoNotOptimize(permit);
  }
}
BENCHMARK(BM_ConcurrencyLimiter_AcquireRelease)->Threads(1)->Threads(2);

// Per-key permits over 1000 users: each acquire finds the user's entry gone (its last permit was
// released) and creates it, and the release removes it again, the limiter's worst steady state.
void BM_KeyedConcurrencyLimiter_AcquireRelease(benchmark::State& state) {
  static std::unique_ptr<KeyedConcurrencyLimiter> limiter =
      KeyedConcurrencyLimiter::Create({.max = 5}).value();
  static const std::vector<std::string> users = [] {
    std::vector<std::string> u;
    for (int i = 0; i < 1000; ++i) u.push_back("user-" + std::to_string(i));
    return u;
  }();
  size_t i = static_cast<size_t>(state.thread_index()) * 500;
  for (auto _ : state) {
    if (++i == users.size()) i = 0;
    auto permit = limiter->TryAcquire(users[i]).value();
    benchmark::DoNotOptimize(permit);
  }
}
BENCHMARK(BM_KeyedConcurrencyLimiter_AcquireRelease)->Threads(1)->Threads(2);

// 100k distinct keys (IP-like strings) whose entries are scattered by the hash, so most lookups
// miss the CPU caches as they would under real traffic. Each key is revisited every ~100k calls,
// long after it refilled, so calls are admitted; idle_ttl is set so that no key is evicted and the
// figure is the steady-state lookup plus acquire (no allocation).
void BM_Keyed_TokenBucket_TryAcquire(benchmark::State& state) {
  constexpr int kKeys = 100'000;
  static std::unique_ptr<Keyed<TokenBucket>> keyed =
      Keyed<TokenBucket>::Create({.max_keys = 2 * kKeys, .idle_ttl = 1h},
                                 {{.rate = 1e6, .burst = 100}})
          .value();
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> k;
    k.reserve(kKeys);
    for (int i = 0; i < kKeys; ++i) {
      k.push_back("10." + std::to_string(i >> 16) + "." + std::to_string((i >> 8) & 255) + "." +
                  std::to_string(i & 255));
    }
    for (const std::string& key : k) (void)keyed->TryAcquire(key);
    return k;
  }();
  // Keys in order: consecutive keys hash to unrelated shards and slots, so the limiter's accesses
  // are scattered over all 100k entries as in a server, while reading the key itself stays
  // cheap, as it is for a server that has just parsed it from the request.
  uint64_t i = static_cast<uint64_t>(state.thread_index()) * (kKeys / 2);
  for (auto _ : state) {
    if (++i == kKeys) i = 0;
    benchmark::DoNotOptimize(keyed->TryAcquire(keys[i]).value());
  }
  state.counters["keys"] =
      benchmark::Counter(static_cast<double>(keyed->Stats().keys), benchmark::Counter::kAvgThreads);
}
BENCHMARK(BM_Keyed_TokenBucket_TryAcquire)->Threads(1)->Threads(2);

}  // namespace

namespace {

// Context for the keyed figure: the same walk over 100k keys with only a hash map
// lookup (no lock, no clock, no limiter): what memory latency alone costs on this machine.
void BM_Keyed_Context_HashMapFind100k(benchmark::State& state) {
  constexpr int kKeys = 100'000;
  static const auto* keys = [] {
    auto* k = new std::vector<std::string>();
    for (int i = 0; i < kKeys; ++i) {
      k->push_back("10." + std::to_string(i >> 16) + "." + std::to_string((i >> 8) & 255) + "." +
                   std::to_string(i & 255));
    }
    return k;
  }();
  static const auto* map = [] {
    auto* m = new absl::flat_hash_map<std::string, std::array<int64_t, 8>>();
    for (const std::string& k : *keys) (*m)[k] = {};
    return m;
  }();
  uint64_t i = 0;
  for (auto _ : state) {
    if (++i == kKeys) i = 0;
    benchmark::DoNotOptimize(map->find((*keys)[i])->second[0]);
  }
}
BENCHMARK(BM_Keyed_Context_HashMapFind100k);

}  // namespace
