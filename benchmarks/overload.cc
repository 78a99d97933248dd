// Overload-control hot paths, next to the floors in baselines.cc measured in the same run.
// Target (issue 13): BM_AdaptiveLimiter_AcquireRecord uncontended <= 2x BM_Baseline_ClockPlusCas;
// the 2-thread figure is reported. BM_AdaptiveThrottle_Check <= 1.5x BM_Baseline_ClockPlusCas.
#include <benchmark/benchmark.h>

#include <chrono>
#include <memory>

#include "keel/overload/adaptive_limiter.h"
#include "keel/overload/adaptive_throttle.h"
#include "keel/overload/gradient_limit.h"
#include "keel/overload/vegas_limit.h"

namespace {

using keel::overload::AdaptiveLimiter;

void AcquireRecord(benchmark::State& state, AdaptiveLimiter& limiter) {
  for (auto _ : state) {
    absl::StatusOr<AdaptiveLimiter::Permit> permit = limiter.TryAcquire();
    permit->OnSuccess();
  }
}

// What every limited call pays: TryAcquire (a CAS on the in-flight count and a clock read) and
// OnSuccess (a clock read, the decrement and one Vegas update under the spin lock). Vegas is
// Netflix's default algorithm; the limit is far above the threads in flight, so every call is
// admitted. Shared by all threads.
void BM_AdaptiveLimiter_AcquireRecord(benchmark::State& state) {
  static AdaptiveLimiter* limiter =
      AdaptiveLimiter::Create({.name = "bench"},
                              keel::overload::VegasLimit::Create({.initial_limit = 1000}).value())
          .value()
          .release();
  AcquireRecord(state, *limiter);
}
BENCHMARK(BM_AdaptiveLimiter_AcquireRecord)->Threads(1)->Threads(2);

// The same with Envoy's gradient controller: a sample goes into the window's buffer, and a
// window close (every 100 ms) sorts it.
void BM_AdaptiveLimiter_AcquireRecord_Gradient(benchmark::State& state) {
  static AdaptiveLimiter* limiter =
      AdaptiveLimiter::Create(
          {.name = "bench-gradient"},
          keel::overload::GradientLimit::Create({.min_concurrency = 100}).value())
          .value()
          .release();
  AcquireRecord(state, *limiter);
}
BENCHMARK(BM_AdaptiveLimiter_AcquireRecord_Gradient)->Threads(1)->Threads(2);

// What a caller pays to be turned away over the limit (no clock read, an error message).
void BM_AdaptiveLimiter_Reject(benchmark::State& state) {
  static AdaptiveLimiter* limiter = [] {
    auto* l =
        AdaptiveLimiter::Create({.name = "bench-full"},
                                keel::overload::VegasLimit::Create({.initial_limit = 1}).value())
            .value()
            .release();
    static auto held = l->TryAcquire();  // fills the limit of 1 for good
    return l;
  }();
  for (auto _ : state) {
    absl::StatusOr<AdaptiveLimiter::Permit> permit = limiter->TryAcquire();
    benchmark::DoNotOptimize(permit);
  }
}
BENCHMARK(BM_AdaptiveLimiter_Reject);

}  // namespace

namespace {

using keel::overload::AdaptiveThrottle;

// What every throttled call pays while the backend accepts (the common case): TryAcquire (a
// clock read, the bucket rotation check, p computed on the running totals and the request
// counted, under one spin lock; p is 0, so no random draw) and the accept recorded in the
// request's bucket (the spin lock again, no clock read). Target (issue 13): <= 1.5x
// BM_Baseline_ClockPlusCas.
void BM_AdaptiveThrottle_Check(benchmark::State& state) {
  static AdaptiveThrottle* throttle = AdaptiveThrottle::Create({.name = "bench"}).value().release();
  for (auto _ : state) {
    absl::StatusOr<AdaptiveThrottle::Ticket> ticket = throttle->TryAcquire();
    ticket->OnAccepted();
  }
}
BENCHMARK(BM_AdaptiveThrottle_Check)->Threads(1)->Threads(2);

// Under overload: the backend refuses everything, so p approaches 1 and nearly every call pays a
// random draw (the per-thread generator) and is turned away with its error message built.
void BM_AdaptiveThrottle_CheckOverloaded(benchmark::State& state) {
  static AdaptiveThrottle* throttle =
      AdaptiveThrottle::Create({.name = "bench-overloaded"}).value().release();
  for (auto _ : state) {
    absl::StatusOr<AdaptiveThrottle::Ticket> ticket = throttle->TryAcquire();
    if (ticket.ok()) ticket->OnRejected();
    benchmark::DoNotOptimize(ticket);
  }
}
BENCHMARK(BM_AdaptiveThrottle_CheckOverloaded);

}  // namespace
