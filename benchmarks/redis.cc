// keel::redis against its floors in baselines.cc, measured in the same run:
//   BM_Redis_PooledPing     <= 1.2x BM_Baseline_RedisPing (pool lease + deadline + typed reply)
//   BM_Redis_Pipeline100    per-command time (items/s) far below one round trip
//   BM_Redis_ScriptRun      vs BM_Baseline_RedisEvalshaTrivial
// Reads KEEL_TEST_REDIS_URL; skips with a message when it is absent.
#include <benchmark/benchmark.h>

#include <chrono>
#include <memory>
#include <string>

#include "bench_env.h"
#include "keel/redis/client.h"
#include "keel/redis/script.h"

namespace {

using keel::Deadline;
using namespace std::chrono_literals;

std::unique_ptr<keel::redis::Client> MakeClient(benchmark::State& state) {
  const auto url = keel::bench::Env("KEEL_TEST_REDIS_URL");
  if (!url) {
    state.SkipWithError("KEEL_TEST_REDIS_URL is not set (run scripts/bench or scripts/test)");
    return nullptr;
  }
  auto options = keel::redis::Options::FromUrl(*url);
  if (!options.ok()) {
    state.SkipWithError(std::string(options.status().message()).c_str());
    return nullptr;
  }
  options->pool.max_size = 2;
  auto client = keel::redis::Client::Create(*options);
  if (!client.ok()) {
    state.SkipWithError(std::string(client.status().message()).c_str());
    return nullptr;
  }
  // Warm the pool so connection setup is not measured.
  if (!(*client)->Command(Deadline::After(1s), "PING").ok()) {
    state.SkipWithError(("cannot reach " + *url).c_str());
    return nullptr;
  }
  return std::move(*client);
}

void BM_Redis_PooledPing(benchmark::State& state) {
  auto client = MakeClient(state);
  if (!client) return;
  for (auto _ : state) {
    auto reply = client->Command(Deadline::After(1s), "PING");
    if (!reply.ok()) {
      state.SkipWithError(std::string(reply.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(reply);
  }
}
BENCHMARK(BM_Redis_PooledPing)->UseRealTime();

void BM_Redis_Pipeline100(benchmark::State& state) {
  auto client = MakeClient(state);
  if (!client) return;
  keel::redis::Pipeline pipeline;
  for (int i = 0; i < 100; ++i) pipeline.Add("PING");
  for (auto _ : state) {
    auto replies = client->Run(Deadline::After(1s), pipeline);
    if (!replies.ok() || replies->size() != 100) {
      state.SkipWithError("pipeline failed");
      break;
    }
    benchmark::DoNotOptimize(replies);
  }
  state.SetItemsProcessed(state.iterations() * 100);
}
BENCHMARK(BM_Redis_Pipeline100)->UseRealTime();

void BM_Redis_ScriptRun(benchmark::State& state) {
  auto client = MakeClient(state);
  if (!client) return;
  static const keel::redis::Script script("return 1");
  for (auto _ : state) {
    auto reply = script.Run(*client, Deadline::After(1s), {});
    if (!reply.ok()) {
      state.SkipWithError(std::string(reply.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(reply);
  }
}
BENCHMARK(BM_Redis_ScriptRun)->UseRealTime();

}  // namespace
