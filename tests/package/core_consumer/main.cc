// A program that links only keel::core, through the umbrella header of a core-only install.
#include <chrono>
#include <cstdio>

#include "keel/keel.h"

#if KEEL_WITH_REDIS || KEEL_WITH_POSTGRES
#error "this keel install was meant to be core-only"
#endif

int main() {
  using namespace std::chrono_literals;
  keel::ManualClock clock;
  auto breaker = keel::CircuitBreaker::Create({.name = "consumer"}, clock);
  if (!breaker.ok()) return 1;
  keel::MetricsRegistry registry;
  auto counter = registry.AddCounter("core_consumer_runs_total", "Runs.");
  if (!counter.ok()) return 2;
  (*counter)->Increment();
  if (keel::Deadline::After(1s).Expired()) return 3;
  std::fputs(registry.RenderPrometheus().c_str(), stdout);
  return registry.RenderPrometheus().find("core_consumer_runs_total 1") == std::string::npos ? 4
                                                                                             : 0;
}
