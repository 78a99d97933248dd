// keel::redis against its floors in baselines.cc, measured in the same run:
//   BM_Redis_PooledPing     <= 1.2x BM_Baseline_RedisPing (pool lease + deadline + typed reply)
//   BM_Redis_Pipeline100    per-command time (items/s) far below one round trip
//   BM_Redis_ScriptRun      vs BM_Baseline_RedisEvalshaTrivial
//   BM_RedisMux_Ping        blocking Command on the multiplexed transport from 1, 16 and 64
//                           threads: 1 thread <= 1.1x BM_Baseline_RedisPing; 16 and 64 threads
//                           (items/s) >= 80% of BM_Baseline_RedisPipelinedPing over 1 connection
//   BM_RedisPooled_PingThreads  the same 16 and 64 blocking threads on Transport::kPooled (a
//                           connection each): what the multiplexed default replaced
//   BM_RedisMux_PingCallbacks/N  N callback calls in flight from 1 thread (the transport's
//                           internal submit), vs BM_Baseline_RedisPipelinedPing/N
//   BM_RedisLock_AcquireRelease/T  TryAcquire + Release of an uncontended redis::Lock: two round
//                           trips (two EVALSHAs), so <= 2.2x BM_Baseline_RedisPing (1.1x two
//                           pings); T = 0 the pooled transport, 1 the multiplexed one
// Reads KEEL_TEST_REDIS_URL; skips with a message when it is absent.
#include <benchmark/benchmark.h>

#include <chrono>
#include <memory>
#include <string>

#include "bench_env.h"
#include "bench_redis.h"
#include "keel/async/io_loop.h"
#include "keel/redis/client.h"
#include "keel/redis/lock.h"
#include "keel/redis/script.h"
#include "redis/transport/call.h"
#include "redis/transport/mux_connection.h"

namespace {

using keel::Deadline;
using namespace std::chrono_literals;

std::unique_ptr<keel::redis::Client> MakeClient(
    benchmark::State& state, keel::redis::Transport transport = keel::redis::Transport::kPooled,
    int pool_size = 2) {
  auto options = keel::bench::RedisOptionsOrSkip(state);
  if (!options) return nullptr;
  options->pool.max_size = pool_size;
  options->transport = transport;
  auto client = keel::redis::Client::Create(*options);
  if (!client.ok()) {
    state.SkipWithError(std::string(client.status().message()).c_str());
    return nullptr;
  }
  // Warm the pool so connection setup is not measured.
  if (!(*client)->Command(Deadline::After(1s), "PING").ok()) {
    state.SkipWithError(("cannot reach " + options->server.ToString()).c_str());
    return nullptr;
  }
  return std::move(*client);
}

// One blocking PING per iteration, what both transports' single-call benchmarks time.
void PingLoop(benchmark::State& state, keel::redis::Client& client) {
  for (auto _ : state) {
    auto reply = client.Command(Deadline::After(1s), "PING");
    if (!reply.ok()) {
      state.SkipWithError(std::string(reply.status().message()).c_str());
      break;
    }
    benchmark::DoNotOptimize(reply);
  }
}

void BM_Redis_PooledPing(benchmark::State& state) {
  auto client = MakeClient(state);
  if (!client) return;
  PingLoop(state, *client);
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

namespace {

// One multiplexed client shared by every thread of a BM_RedisMux_Ping run.
keel::redis::Client* SharedMuxClient(benchmark::State& state) {
  static std::unique_ptr<keel::redis::Client> client =
      MakeClient(state, keel::redis::Transport::kMultiplexed);
  return client.get();
}

void BM_RedisMux_Ping(benchmark::State& state) {
  keel::redis::Client* client = SharedMuxClient(state);
  if (client == nullptr) return;
  PingLoop(state, *client);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RedisMux_Ping)->UseRealTime()->Threads(1)->Threads(16)->Threads(64);

// The same threads on the pooled transport, a connection per thread: what a service with a
// blocking thread per request had before the multiplexed transport became the default.
keel::redis::Client* SharedPooledClient(benchmark::State& state) {
  static std::unique_ptr<keel::redis::Client> client =
      MakeClient(state, keel::redis::Transport::kPooled, /*pool_size=*/64);
  return client.get();
}

void BM_RedisPooled_PingThreads(benchmark::State& state) {
  keel::redis::Client* client = SharedPooledClient(state);
  if (client == nullptr) return;
  PingLoop(state, *client);
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RedisPooled_PingThreads)->UseRealTime()->Threads(16)->Threads(64);

// N calls in flight from one thread through the transport's callback submit (what a future or
// coroutine will sit on): submit N PINGs, wait for the N completions, repeat.
void BM_RedisMux_PingCallbacks(benchmark::State& state) {
  namespace t = keel::redis::transport;
  auto options = keel::bench::RedisOptionsOrSkip(state);
  if (!options) return;
  auto loop = keel::IoLoop::Create({.name = "redis-bench"});
  if (!loop.ok()) {
    state.SkipWithError("no event loop");
    return;
  }
  t::MuxConnection mux({.name = "redis \"bench\""}, *loop, [&](Deadline) {
    return keel::redis::Connection::Connect(options->server, *options, Deadline::Infinite());
  });
  std::string ping;
  const std::string_view argv[] = {"PING"};
  keel::redis::AppendRespCommand(argv, ping);
  const auto n = static_cast<int>(state.range(0));
  keel::Mutex mu;
  keel::CondVar cv;
  int left = 0;
  bool failed = false;
  auto run_batch = [&] {
    {
      keel::MutexLock lock(mu);
      left = n;
    }
    for (int i = 0; i < n; ++i) {
      mux.Submit(std::make_shared<t::Call>(1, Deadline::After(1s),
                                           [&](t::CallResult&& r) {
                                             keel::MutexLock lock(mu);
                                             if (!r.status.ok()) failed = true;
                                             if (--left == 0) cv.Signal();
                                           }),
                 ping);
    }
    keel::MutexLock lock(mu);
    while (left > 0) cv.Wait(mu);
    return !failed;
  };
  if (!run_batch()) state.SkipWithError("cannot reach Redis");
  for (auto _ : state) {
    if (!run_batch()) {
      state.SkipWithError("a PING failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * n);
  mux.Shutdown();
  (*loop)->Stop();
}
BENCHMARK(BM_RedisMux_PingCallbacks)->UseRealTime()->Arg(16)->Arg(64);

void BM_RedisLock_AcquireRelease(benchmark::State& state) {
  auto client = MakeClient(state, state.range(0) == 0 ? keel::redis::Transport::kPooled
                                                      : keel::redis::Transport::kMultiplexed);
  if (!client) return;
  auto lock = keel::redis::Lock::Create({.name = "bench-lock", .ttl = 10s}, *client);
  if (!lock.ok()) {
    state.SkipWithError(std::string(lock.status().message()).c_str());
    return;
  }
  // Warm up: the scripts cached on the server, so every call below is an EVALSHA hit.
  if (auto warm = (*lock)->TryAcquire(Deadline::After(1s)); !warm.ok() || !warm->has_value()) {
    state.SkipWithError("cannot take the lock");
    return;
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
