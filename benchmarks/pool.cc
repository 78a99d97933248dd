// Pool<T>: the cost of leasing and returning an idle resource, next to the mutex floor
// (BM_Baseline_MutexLockUnlock in baselines.cc). Target: <= 100 ns and <= 4x the floor,
// uncontended; also reported with 2 threads.
#include "keel/pool/pool.h"

#include <benchmark/benchmark.h>

#include <memory>

namespace {

struct Resource {
  int value = 0;
};

keel::Pool<Resource>& SharedPool() {
  // max_size 2: with 2 threads neither ever waits, so this measures the lease path itself.
  static keel::Pool<Resource>* pool = [] {
    keel::PoolHooks<Resource> hooks;
    hooks.create = [](keel::Deadline) -> absl::StatusOr<std::unique_ptr<Resource>> {
      return std::make_unique<Resource>();
    };
    // Never called: resources are reused within the validation bypass window.
    hooks.validate = [](Resource&, keel::Deadline) { return absl::OkStatus(); };
    auto p = keel::Pool<Resource>::Create(
        {.name = "bench", .max_size = 2, .background_maintenance = false}, std::move(hooks));
    return p->release();  // lives for the process
  }();
  return *pool;
}

void BM_Pool_AcquireRelease(benchmark::State& state) {
  keel::Pool<Resource>& pool = SharedPool();
  pool.RunMaintenance();  // both resources created before timing
  for (auto _ : state) {
    auto lease = pool.Acquire();
    benchmark::DoNotOptimize((*lease)->value);
  }
}
BENCHMARK(BM_Pool_AcquireRelease)->Threads(1)->Threads(2);

}  // namespace
