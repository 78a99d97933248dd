// keel::redis::Lock against its floor in baselines.cc, measured in the same run:
//   BM_RedisLock_AcquireRelease  TryAcquire + Release of an uncontended lock: two round trips
//                                (two EVALSHAs), so the target is <= 2.2x BM_Baseline_RedisPing,
//                                i.e. <= 1.1x two pings. /0: the pooled transport; /1: the
//                                multiplexed transport (the client's default).
// Reads KEEL_TEST_REDIS_URL; skips with a message when it is absent.
#include <benchmark/benchmark.h>

#include <chrono>
#include <memory>
#include <string>

#include "bench_env.h"
#include "keel/redis/client.h"
#include "keel/redis/lock.h"

namespace {

using keel::Deadline;
using namespace std::chrono_literals;

void BM_RedisLock_AcquireRelease(benchmark::State& state) {
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
  options->pool.max_size = 2;
  options->transport =
      state.range(0) == 0 ? keel::redis::Transport::kPooled : keel::redis::Transport::kMultiplexed;
  auto client = keel::redis::Client::Create(*options);
  if (!client.ok()) {
    state.SkipWithError(std::string(client.status().message()).c_str());
    return;
  }
  auto lock = keel::redis::Lock::Create({.name = "bench-lock", .ttl = 10s}, **client);
  if (!lock.ok()) {
    state.SkipWithError(std::string(lock.status().message()).c_str());
    return;
  }
  // Warm up: connections made and the scripts cached on the server (EVALSHA hits from here on).
  {
    auto warm = (*lock)->TryAcquire(Deadline::After(1s));
    if (!warm.ok() || !warm->has_value()) {
      state.SkipWithError(("cannot take a lock on " + *url).c_str());
      return;
    }
  }
  for (auto _ : state) {
    auto guard = (*lock)->TryAcquire(Deadline::After(1s));
    if (!guard.ok() || !guard->has_value() || !(*guard)->Release(Deadline::After(1s)).ok()) {
      state.SkipWithError("acquire or release failed");
      break;
    }
  }
}
BENCHMARK(BM_RedisLock_AcquireRelease)->Arg(0)->Arg(1)->UseRealTime();

}  // namespace
