// 8 threads share one Pipeline (bulkhead, breaker, retry with a shared budget, timeout) and one
// token throttle, checking the invariants that only show under contention: the bulkhead bound
// holds across retries, the budget caps retries exactly, and the shared counters add up.
// Catch2 assertions are not thread-safe: workers count into atomics and the main thread asserts.
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "keel/resilience/pipeline.h"
#include "keel/resilience/retry_budget.h"

// GCC 12 warns about fields a designated initializer leaves to their defaults (fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

namespace {

using namespace std::chrono_literals;

constexpr int kThreads = 8;
constexpr int kCallsPerThread = 2000;

}  // namespace

TEST_CASE("shared pipeline under 8 threads keeps the bulkhead bound and the retry budget") {
  auto bulkhead =
      keel::SemaphoreBulkhead::Create({.name = "stress", .max_concurrent = 3, .max_wait = 1s})
          .value();
  // A breaker that never opens here (minimum_calls unreachable): this test is about retries.
  auto breaker =
      keel::CircuitBreaker::Create({.window_size = 1000000, .minimum_calls = 1000000}).value();
  // 5% of requests plus no floor: with a 60 s window nothing ages out during the test, so the
  // bound is exact: retries <= 0.05 * calls.
  auto budget =
      keel::RetryBudget::Create({.percent = 0.05, .min_retries_per_second = 0, .ttl = 60s}).value();
  auto retry = keel::Retry::Create(
                   {.max_attempts = 4,
                    .backoff = {.kind = keel::Backoff::Kind::kFullJitter, .base = 1us, .cap = 10us},
                    .budget = budget.get()})
                   .value();
  auto timeout = keel::Timeout::Create({.timeout = 10s}).value();
  const auto pipeline =
      keel::Pipeline<int>::Builder().Add(*bulkhead).Add(*breaker).Add(retry).Add(timeout).Build();

  std::atomic<int> inside{0};
  std::atomic<int> max_inside{0};
  std::atomic<int64_t> attempts{0};
  std::atomic<int64_t> ok{0};
  std::atomic<int64_t> failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 gen(static_cast<uint32_t>(t));
      std::bernoulli_distribution fails(0.3);
      for (int i = 0; i < kCallsPerThread; ++i) {
        auto r = pipeline.Execute(
            keel::Deadline::After(10s), [&](const keel::CallContext&) -> absl::StatusOr<int> {
              const int now = inside.fetch_add(1) + 1;
              int seen = max_inside.load();
              while (now > seen && !max_inside.compare_exchange_weak(seen, now)) {
              }
              attempts.fetch_add(1);
              const bool fail = fails(gen);
              inside.fetch_sub(1);
              if (fail) return absl::UnavailableError("flaky");
              return 1;
            });
        (r.ok() ? ok : failed).fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();

  const int64_t calls = int64_t{kThreads} * kCallsPerThread;
  const keel::RetryStats stats = retry.Stats();
  CHECK(ok.load() + failed.load() == calls);
  CHECK(max_inside.load() <= 3);
  CHECK(attempts.load() == calls + static_cast<int64_t>(stats.retries_total));
  // The budget's bound, exact with nothing aging out: 5% of 16000 calls = 800 retries.
  CHECK(stats.retries_total <= static_cast<uint64_t>(calls / 20));
  CHECK(stats.retries_total > 0);
  CHECK(bulkhead->Stats().in_use == 0);
}

TEST_CASE("token throttle shared by 8 threads stays within its bounds") {
  auto throttle = keel::TokenRetryThrottle::Create({.max_tokens = 10, .token_ratio = 0.1}).value();
  std::atomic<int64_t> out_of_bounds{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 gen(static_cast<uint32_t>(t));
      std::bernoulli_distribution fails(0.2);
      for (int i = 0; i < 20000; ++i) {
        if (fails(gen)) {
          (void)throttle->OnAttemptFailed(absl::UnavailableError("down"), true);
        } else {
          throttle->OnAttemptSucceeded(1);
        }
        const double tokens = throttle->tokens();
        if (tokens < 0 || tokens > 10) out_of_bounds.fetch_add(1);
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(out_of_bounds.load() == 0);
  // 20% failures cost 1 each, 80% successes give 0.1: the count drains to near zero.
  CHECK(throttle->tokens() < 5);
}

TEST_CASE("token throttle decides each failure on the count it left, under 8 racing threads") {
  // Failures only, from 10 tokens: the counts failures leave are 9, 8, ..., 0, then 0 again, each
  // produced by exactly one failure, so exactly four (9, 8, 7, 6 > 5) may be granted however the
  // threads interleave. Deciding after a separate read could grant none or more than four.
  for (int round = 0; round < 50; ++round) {
    auto throttle = keel::TokenRetryThrottle::Create({.max_tokens = 10}).value();
    std::atomic<int> granted{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      threads.emplace_back([&] {
        for (int i = 0; i < 4; ++i) {
          if (throttle->OnAttemptFailed(absl::UnavailableError("down"), true)) granted++;
        }
      });
    }
    for (auto& th : threads) th.join();
    REQUIRE(granted.load() == 4);
    CHECK(throttle->Stats().retries_allowed_total == 4);
    CHECK(throttle->Stats().retries_refused_total == 4 * kThreads - 4);
  }
}
