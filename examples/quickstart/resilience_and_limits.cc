// Quickstart: a call to a flaky dependency wrapped in keel's policies, in the recommended order
// (fallback, bulkhead, circuit breaker, retry, per-attempt timeout), then a token bucket in front
// of it with the HTTP RateLimit headers a handler would send.
#include <chrono>
#include <cstdio>
#include <string>

#include "keel/limit/http_headers.h"
#include "keel/limit/token_bucket.h"
#include "keel/resilience/bulkhead.h"
#include "keel/resilience/circuit_breaker.h"
#include "keel/resilience/fallback.h"
#include "keel/resilience/pipeline.h"
#include "keel/resilience/retry.h"
#include "keel/resilience/timeout.h"

using namespace std::chrono_literals;

namespace {

// A pretend inventory service: the first 12 calls fail with UNAVAILABLE, then it recovers.
int calls_made = 0;
absl::StatusOr<int> GetStock(const keel::CallContext& ctx) {
  ++calls_made;
  if (ctx.deadline.Expired()) return absl::DeadlineExceededError("inventory: deadline passed");
  if (calls_made <= 12) return absl::UnavailableError("inventory: connection refused");
  return 42;
}

}  // namespace

int main() {
  auto breaker = keel::CircuitBreaker::Create({.name = "inventory",
                                               .window_size = 10,
                                               .minimum_calls = 4,
                                               .half_open_permits = 2,
                                               .wait_in_open = 50ms})
                     .value();
  auto bulkhead =
      keel::SemaphoreBulkhead::Create({.name = "inventory", .max_concurrent = 8}).value();
  auto retry = keel::Retry::Create(
                   {.name = "inventory", .max_attempts = 3, .backoff = {.base = 1ms, .cap = 10ms}})
                   .value();
  auto timeout = keel::Timeout::Create({.name = "inventory", .timeout = 100ms}).value();
  auto fallback = keel::Fallback<int>::Create([](const absl::Status& s) -> absl::StatusOr<int> {
                    std::printf("    fallback answers for: %s\n", std::string(s.message()).c_str());
                    return -1;  // "stock unknown"
                  }).value();
  keel::Pipeline<int> pipeline = keel::Pipeline<int>::Builder()
                                     .Add(fallback)
                                     .Add(*bulkhead)
                                     .Add(*breaker)
                                     .Add(retry)
                                     .Add(timeout)
                                     .Build();

  for (int request = 1; request <= 8; ++request) {
    absl::StatusOr<int> stock = pipeline.Execute(keel::Deadline::After(1s), GetStock);
    std::printf("request %d: stock %d, breaker %s, dependency calls so far %d\n", request,
                stock.value_or(-2), keel::CircuitBreakerStateName(breaker->state()), calls_made);
    if (request == 5) {
      std::printf("  ... 60 ms later the breaker lets probes through again\n");
      keel::SteadyClock().SleepFor(60ms);
    }
  }

  std::printf("\nA token bucket of 5 requests per second, burst 3, in front of it:\n");
  auto bucket = keel::limit::TokenBucket::Create({.rate = 5, .burst = 3}).value();
  for (int i = 1; i <= 4; ++i) {
    keel::limit::Decision d = bucket.TryAcquire().value();
    std::printf("request %d: %s\n", i, d.allowed ? "allowed" : "rejected (429)");
    for (const auto& h : keel::limit::HttpHeaders(d, {.name = "per-user", .window = 1s})) {
      std::printf("    %s: %s\n", h.name.c_str(), h.value.c_str());
    }
  }
  return 0;
}
