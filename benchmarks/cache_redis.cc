// The cache facade's Redis tier next to its floor in baselines.cc, measured in the same run.
// Target (issue 12): BM_Cache_RedisTierHit, a GetOrLoad answered by the Redis tier (a cache with
// no local tier, a 16-byte key and a 100-byte value: one GET on keel's default, multiplexed
// client), <= 1.2x BM_Baseline_RedisPing (a plain hiredis PING round trip).
// Reads KEEL_TEST_REDIS_URL; skips with a message when it is absent.
#include <benchmark/benchmark.h>

#include <chrono>
#include <memory>
#include <string>

#include "bench_env.h"
#include "keel/cache/cache.h"
#include "keel/redis/cache_store.h"
#include "keel/redis/client.h"

namespace {

using keel::Deadline;
using namespace std::chrono_literals;

void BM_Cache_RedisTierHit(benchmark::State& state) {
  const auto url = keel::bench::Env("KEEL_TEST_REDIS_URL");
  if (!url) {
    state.SkipWithError("KEEL_TEST_REDIS_URL is not set (run scripts/bench or scripts/test)");
    return;
  }
  auto options = keel::redis::Options::FromUrl(*url);
  if (!options.ok()) {
    state.SkipWithError(std::string(options.status().message()).c_str());
    return;
  }
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
    state.SkipWithError(("cannot reach " + *url).c_str());
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

}  // namespace
