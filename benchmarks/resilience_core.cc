// Circuit breaker and bulkhead hot paths. Targets are ratios to the floors in baselines.cc,
// measured in the same run: BM_CircuitBreaker_ClosedAcquireRecord <= 2x BM_Baseline_ClockPlusCas
// (and <= 25 ns single-thread).
#include <benchmark/benchmark.h>

#include <chrono>
#include <memory>

#include "keel/resilience/bulkhead.h"
#include "keel/resilience/circuit_breaker.h"
#include "keel/resilience/thread_pool_bulkhead.h"

namespace {

using namespace std::chrono_literals;

// The CLOSED path every protected call pays: TryAcquire + Record(OK). Shared by all threads.
void BM_CircuitBreaker_ClosedAcquireRecord(benchmark::State& state) {
  static keel::CircuitBreaker* breaker =
      keel::CircuitBreaker::Create({.name = "bench"}).value().release();
  const absl::Status ok = absl::OkStatus();
  for (auto _ : state) {
    absl::StatusOr<keel::CircuitBreaker::Permit> permit = breaker->TryAcquire();
    permit->Record(ok, 1ms);
  }
}
BENCHMARK(BM_CircuitBreaker_ClosedAcquireRecord)->Threads(1)->Threads(2);

// Execute() adds two clock reads (the call's duration) to the above.
void BM_CircuitBreaker_ClosedExecute(benchmark::State& state) {
  static keel::CircuitBreaker* breaker =
      keel::CircuitBreaker::Create({.name = "bench-execute"}).value().release();
  for (auto _ : state) {
    absl::Status s = breaker->Execute([] { return absl::OkStatus(); });
    benchmark::DoNotOptimize(s);
  }
}
BENCHMARK(BM_CircuitBreaker_ClosedExecute);

// What a caller pays to be turned away by an OPEN breaker (clock read + error with retry-after).
void BM_CircuitBreaker_OpenReject(benchmark::State& state) {
  auto breaker = keel::CircuitBreaker::Create({.name = "bench-open", .wait_in_open = 1h}).value();
  breaker->TransitionTo(keel::CircuitBreaker::State::kOpen);
  for (auto _ : state) {
    auto permit = breaker->TryAcquire();
    benchmark::DoNotOptimize(permit);
  }
}
BENCHMARK(BM_CircuitBreaker_OpenReject);

// An uncontended (1 thread) and contended (2 threads) permit round trip.
void BM_Bulkhead_AcquireRelease(benchmark::State& state) {
  static keel::SemaphoreBulkhead* bulkhead =
      keel::SemaphoreBulkhead::Create({.name = "bench", .max_concurrent = 1000}).value().release();
  for (auto _ : state) {
    absl::StatusOr<keel::SemaphoreBulkhead::Permit> permit = bulkhead->TryAcquire();
    benchmark::DoNotOptimize(permit);
  }
}
BENCHMARK(BM_Bulkhead_AcquireRelease)->Threads(1)->Threads(2);

// Hand-off to a pool thread and back: dominated by the thread wake-up.
void BM_ThreadPoolBulkhead_SubmitGet(benchmark::State& state) {
  auto pool = keel::ThreadPoolBulkhead::Create({.name = "bench", .threads = 1}).value();
  for (auto _ : state) {
    absl::StatusOr<int> r = pool->Submit([]() -> absl::StatusOr<int> { return 1; }).Get();
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_ThreadPoolBulkhead_SubmitGet)->UseRealTime();

}  // namespace
