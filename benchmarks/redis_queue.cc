// keel::redis::JobQueue and Worker throughput against a real Redis:
//   BM_JobQueue_Throughput/W/B  W worker threads' handlers (W = 1: one worker with concurrency
//                           1; W = 4: four workers of concurrency 1, each with its own take /
//                           finish calls and blocking connection) drain min(2 000, 200 B) jobs
//                           enqueued beforehand (one EnqueueMany pipeline, not timed), reading
//                           batches of B. Reports jobs/s (items_per_second) and
//                           round_trips_per_job: the workers' claim, start, finish, blocking-read
//                           and heartbeat calls per job, each one round trip (target: <= 1
//                           amortised with batched reads and multi-id XACK). The handler does
//                           nothing: this is the queue's own cost.
// Reads KEEL_TEST_REDIS_URL; skips with a message when it is absent.
#include <benchmark/benchmark.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bench_env.h"
#include "bench_redis.h"
#include "keel/redis/client.h"
#include "keel/redis/queue.h"

namespace {

using keel::Deadline;
using namespace std::chrono_literals;

void BM_JobQueue_Throughput(benchmark::State& state) {
  auto options = keel::bench::RedisOptionsOrSkip(state);
  if (!options) return;
  const int workers = static_cast<int>(state.range(0));
  const int batch = static_cast<int>(state.range(1));
  // 200 batches at most, so the unbatched case stays short in CI's brief run.
  const int jobs_per_run = std::min(2000, 200 * batch);
  options->pool.max_size = workers + 1;  // a blocking connection per worker
  auto client = keel::redis::Client::Create(*options);
  if (!client.ok()) {
    state.SkipWithError(std::string(client.status().message()).c_str());
    return;
  }
  static int run = 0;
  auto queue = keel::redis::JobQueue::Create(
      {.name = "bench-queue-" + std::to_string(::getpid()) + "-" + std::to_string(++run)},
      **client);
  if (!queue.ok()) {
    state.SkipWithError(std::string(queue.status().message()).c_str());
    return;
  }
  const std::string payload(100, 'x');
  const std::vector<keel::redis::NewJob> jobs(jobs_per_run, keel::redis::NewJob{payload, {}});
  uint64_t round_trips = 0, processed = 0;
  for (auto _ : state) {
    auto added = (*queue)->EnqueueMany(Deadline::After(10s), jobs);
    if (!added.ok()) {
      state.SkipWithError(std::string(added.status().message()).c_str());
      return;
    }
    std::atomic<int> done{0};
    const auto start = std::chrono::steady_clock::now();
    std::vector<std::unique_ptr<keel::redis::Worker>> running;
    for (int w = 0; w < workers; ++w) {
      auto worker =
          keel::redis::Worker::Create({.handler =
                                           [&](const keel::redis::Job&, keel::redis::JobContext&) {
                                             done.fetch_add(1);
                                             return absl::OkStatus();
                                           },
                                       .concurrency = 1,
                                       .batch = batch,
                                       .poll_interval = 20ms,
                                       .inspect_interval = std::nullopt},
                                      **queue);
      if (!worker.ok()) {
        state.SkipWithError(std::string(worker.status().message()).c_str());
        return;
      }
      running.push_back(std::move(*worker));
    }
    while (done.load() < jobs_per_run) std::this_thread::sleep_for(100us);
    for (auto& w : running) (void)w->Stop(Deadline::After(5s));  // the last acknowledgements
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    for (auto& w : running) {
      const keel::redis::WorkerStats s = w->Stats();
      round_trips +=
          s.take_calls_total + s.finish_calls_total + s.blocking_reads_total + s.heartbeats_total;
    }
    processed += static_cast<uint64_t>(jobs_per_run);
  }
  state.SetItemsProcessed(static_cast<int64_t>(processed));
  state.counters["round_trips_per_job"] =
      processed == 0 ? 0.0 : static_cast<double>(round_trips) / static_cast<double>(processed);
}
BENCHMARK(BM_JobQueue_Throughput)
    ->ArgNames({"workers", "batch"})
    ->Args({1, 1})
    ->Args({1, 32})
    ->Args({4, 32})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);

}  // namespace
