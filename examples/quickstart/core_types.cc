// Quickstart: keel's core types. Deadlines that shrink as work proceeds, statuses that carry a
// retry-after hint, a manual clock for tests, and a metrics registry rendered for Prometheus.
#include <chrono>
#include <cstdio>
#include <string>

#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/metrics.h"
#include "keel/status.h"

using namespace std::chrono_literals;

namespace {

// A pretend downstream call that honours the caller's deadline, as keel's clients do.
absl::Status CallInventory(const keel::Deadline& deadline, keel::ManualClock& clock) {
  clock.Advance(120ms);  // the "call" takes 120 ms of (manual) time
  if (deadline.Expired()) return absl::DeadlineExceededError("inventory: deadline passed");
  return keel::WithRetryAfter(absl::ResourceExhaustedError("inventory: rate limited"), 2s);
}

}  // namespace

int main() {
  keel::ManualClock clock;  // a real service uses keel::SteadyClock(), the default
  keel::MetricsRegistry registry;
  keel::Counter* calls =
      registry.AddCounter("quickstart_calls_total", "Downstream calls.", {{"service", "inventory"}})
          .value();
  keel::Histogram* latency = registry
                                 .AddHistogram("quickstart_call_seconds", "Downstream latency.",
                                               keel::DefaultLatencyBuckets())
                                 .value();

  const keel::Deadline request = keel::Deadline::After(300ms, clock);
  for (int attempt = 1; !request.Expired(); ++attempt) {
    const keel::TimePoint start = clock.Now();
    // Each attempt may use at most 200 ms, and never more than the request has left.
    const keel::Deadline attempt_deadline =
        keel::Deadline::Min(request, keel::Deadline::After(200ms, clock));
    absl::Status s = CallInventory(attempt_deadline, clock);
    calls->Increment();
    latency->ObserveDuration(clock.Now() - start);
    std::printf(
        "attempt %d: %s (request has %lld ms left)\n", attempt, s.ToString().c_str(),
        static_cast<long long>(
            std::chrono::duration_cast<std::chrono::milliseconds>(request.Remaining()).count()));
    if (!keel::IsRetryable(s)) break;
    auto after = keel::RetryAfter(s);
    std::printf(
        "  retryable, server asks us to wait %lld ms: longer than the request has left? %s\n",
        static_cast<long long>(
            std::chrono::duration_cast<std::chrono::milliseconds>(*after).count()),
        *after > request.Remaining() ? "yes, give up" : "no");
    if (*after > request.Remaining()) break;
  }
  std::printf("\n/metrics:\n%s", registry.RenderPrometheus().c_str());
  return 0;
}
