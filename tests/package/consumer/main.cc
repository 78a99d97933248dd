// A program that knows keel only through its installed package.
#include <chrono>
#include <cstdio>

#include "keel/keel.h"

int main() {
  keel::MetricsRegistry registry;
  auto counter = registry.AddCounter("consumer_runs_total", "Runs.");
  if (!counter.ok()) return 1;
  (*counter)->Increment();
  keel::Deadline d = keel::Deadline::After(std::chrono::seconds(1));
  if (d.Expired()) return 2;
  std::fputs(registry.RenderPrometheus().c_str(), stdout);
  return registry.RenderPrometheus().find("consumer_runs_total 1") == std::string::npos ? 3 : 0;
}
