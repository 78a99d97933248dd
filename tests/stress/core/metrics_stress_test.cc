#include <atomic>
#include <catch2/catch.hpp>
#include <thread>
#include <vector>

#include "keel/metrics.h"

TEST_CASE("concurrent updates and renders lose no increments") {
  keel::MetricsRegistry registry;
  keel::Counter* c = registry.AddCounter("stress_total", "x").value();
  keel::Gauge* g = registry.AddGauge("stress_gauge", "x").value();
  keel::Histogram* h = registry.AddHistogram("stress_seconds", "x", {0.5}).value();
  constexpr int kThreads = 8;
  constexpr int kPerThread = 20000;
  std::atomic<int> empty_renders{0};  // Catch2 assertions are not thread-safe: count, then check
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        c->Increment();
        g->Add(1);
        h->Observe(t % 2 == 0 ? 0.25 : 1.0);
        if (i % 5000 == 0) {
          // Registration and rendering race with the updates.
          registry.AddCounter("stress_total", "x", {{"t", std::to_string(t)}}).value()->Increment();
          if (registry.RenderPrometheus().empty()) ++empty_renders;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(empty_renders == 0);
  CHECK(c->Value() == kThreads * kPerThread);
  CHECK(g->Value() == kThreads * kPerThread);
  const keel::Histogram::Snapshot s = h->Snap();
  CHECK(s.count == kThreads * kPerThread);
  CHECK(s.cumulative[0] == kThreads / 2 * kPerThread);
  CHECK(s.sum == Approx(kThreads / 2 * kPerThread * 1.25));
}
