// Counts heap allocations made by the calling thread, so a benchmark can report allocations per
// call next to its time (alloc_counter.cc replaces the global operator new for keel_bench).
//
//   const uint64_t before = keel::bench::ThreadAllocations();
//   for (auto _ : state) Work();
//   keel::bench::ReportAllocationsPerCall(state, before);
#pragma once

#include <benchmark/benchmark.h>

#include <cstdint>

namespace keel::bench {

// Allocations (operator new of any form) made by this thread since it started.
uint64_t ThreadAllocations();

// Every thread's allocations while counting is on (off by default: it costs a shared atomic
// increment per allocation), for work that spans threads (an async call completes on keel's
// I/O thread).
void CountProcessAllocations(bool on);
uint64_t ProcessAllocations();

// Sets the counter "allocs_per_call": allocations since `before` divided by the iterations.
inline void ReportAllocationsPerCall(benchmark::State& state, uint64_t before) {
  state.counters["allocs_per_call"] = benchmark::Counter(
      static_cast<double>(ThreadAllocations() - before), benchmark::Counter::kAvgIterations);
}

}  // namespace keel::bench
