// The cache facade's Redis tier next to its floor in baselines.cc, measured in the same run.
// Target (issue 12): BM_Cache_RedisTierHit, a GetOrLoad answered by the Redis tier (a cache with
// no local tier, a 16-byte key and a 100-byte value: one GET on keel's default, multiplexed
// client), <= 1.2x BM_Baseline_RedisPing (a plain hiredis PING round trip).
// BM_Cache_NearHit, a GetOrLoad answered by a NearCacheTier (a local tier with Redis tracking on)
// on the workload of BM_LocalStore_Hit (1M 16-byte keys in Zipf(0.99) order), within 1.2x
// BM_LocalStore_Hit: the facade and the invalidation bookkeeping on top of the store's own hit.
// Reads KEEL_TEST_REDIS_URL; skips with a message when it is absent.
#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>

#include "bench_env.h"
#include "bench_redis.h"
#include "keel/cache/cache.h"
#include "keel/redis/cache_store.h"
#include "keel/redis/client.h"
#include "keel/redis/near_cache.h"
#include "zipf.h"

namespace {

using keel::Deadline;
using namespace std::chrono_literals;

void BM_Cache_RedisTierHit(benchmark::State& state) {
  auto options = keel::bench::RedisOptionsOrSkip(state);
  if (!options) return;
  auto client = keel::redis::Client::Create(*options);
  if (!client.ok()) {
    state.SkipWithError(std::string(client.status().message()).c_str());
    return;
  }
  keel::cache::Cache<std::string>::Tiers tiers;
  tiers.push_back(keel::redis::CacheTier<std::string>::Create({.name = "bench"}, **client).value());
  auto cache =
      keel::cache::Cache<std::string>::Create({.name = "bench", .ttl = 10min}, std::move(tiers))
          .value();
  const std::string key = "0123456789abcdef";
  const std::string value(100, 'x');
  const keel::cache::Cache<std::string>::Loader loader =
      [&](Deadline) -> absl::StatusOr<std::string> { return value; };
  if (!cache->GetOrLoad(Deadline::After(1s), key, loader).ok()) {
    state.SkipWithError(("cannot reach " + options->server.ToString()).c_str());
    return;
  }
  for (auto _ : state) {
    absl::StatusOr<std::string> hit = cache->GetOrLoad(Deadline::After(1s), key, loader);
    if (!hit.ok()) {
      state.SkipWithError(std::string(hit.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(hit);
  }
  // Only the warm-up may have missed (the key may be left from an earlier run).
  if (cache->Stats().misses_total > 1) state.SkipWithError("a read missed the Redis tier");
}
BENCHMARK(BM_Cache_RedisTierHit)->UseRealTime();

// A cache of one NearCacheTier holding every key of the hit workload, tracking on.
keel::cache::Cache<uint64_t>* NearCache(benchmark::State& state) {
  static keel::cache::Cache<uint64_t>* cache = [&]() -> keel::cache::Cache<uint64_t>* {
    const auto url = keel::bench::Env("KEEL_TEST_REDIS_URL");
    if (!url) return nullptr;
    auto options = keel::redis::Options::FromUrl(*url);
    if (!options.ok()) return nullptr;
    const keel::bench::HitWorkload& w = keel::bench::Hits();
    auto near = keel::redis::NearCacheTier<uint64_t>::Create(
        {.name = "bench-near", .local = {.max_entries = w.keys.size() * 11 / 10}}, *options);
    if (!near.ok()) return nullptr;
    auto* tier = near->get();
    const auto give_up = std::chrono::steady_clock::now() + 5s;
    while (!tier->Stats().tracking && std::chrono::steady_clock::now() < give_up) {
      std::this_thread::sleep_for(1ms);
    }
    if (!tier->Stats().tracking) return nullptr;
    // Straight into the store: the tier keeps only fills that follow a read of the same key.
    for (size_t i = 0; i < w.keys.size(); ++i) (void)tier->store().Put(w.keys[i], uint64_t{i});
    keel::cache::Cache<uint64_t>::Tiers tiers;
    tiers.push_back(std::move(*near));
    return keel::cache::Cache<uint64_t>::Create({.name = "bench-near", .ttl = 1h}, std::move(tiers))
        .value()
        .release();
  }();
  if (cache == nullptr) state.SkipWithError("no Redis for the near cache's tracking connection");
  return cache;
}

void BM_Cache_NearHit(benchmark::State& state) {
  keel::cache::Cache<uint64_t>* cache = NearCache(state);
  if (cache == nullptr) return;
  const keel::bench::HitWorkload& w = keel::bench::Hits();
  const keel::cache::Cache<uint64_t>::Loader loader = [](Deadline) -> absl::StatusOr<uint64_t> {
    return absl::UnavailableError("a hit was expected");
  };
  size_t i = static_cast<size_t>(state.thread_index()) * (keel::bench::kHitOrder / 2);
  uint64_t misses = 0;
  for (auto _ : state) {
    absl::StatusOr<uint64_t> v = cache->GetOrLoad(
        Deadline::Infinite(), w.keys[w.order[i++ & (keel::bench::kHitOrder - 1)]], loader);
    if (!v.ok()) ++misses;
    benchmark::DoNotOptimize(v);
  }
  if (misses > 0) state.SkipWithError("a key was missing");
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_Cache_NearHit)->UseRealTime()->Threads(1)->Threads(2);

}  // namespace
