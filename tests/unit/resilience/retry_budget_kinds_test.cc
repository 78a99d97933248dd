// Envoy's concurrent retry budget, the AWS SDK's retry quota, their Stats and metrics, and how
// Retry drives them; and Retry's backoff ending on cancellation.
#include <catch2/catch.hpp>
#include <optional>
#include <string>
#include <thread>

#include "keel/clock.h"
#include "keel/metrics.h"
#include "keel/resilience/retry.h"
#include "keel/resilience/retry_budget.h"
#include "unit/resilience/recording_clock.h"

// GCC 12 warns about fields a designated initializer leaves to their defaults (fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace std::chrono_literals;
using keel::ConcurrentRetryBudget;
using keel::RetryBudgetPolicy;
using keel::RetryQuota;

namespace {

const absl::Status kDown = absl::UnavailableError("down");
const absl::Status kTimedOut = absl::DeadlineExceededError("attempt timed out");

std::optional<RetryBudgetPolicy::Grant> Ask(RetryBudgetPolicy& b, const absl::Status& s = kDown) {
  return b.OnAttemptFailed(s, /*retry_wanted=*/true);
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

keel::Retry::Options Constant(RetryBudgetPolicy* budget, int max_attempts = 3) {
  return {.name = "users",
          .max_attempts = max_attempts,
          .backoff = {.kind = keel::Backoff::Kind::kConstant, .base = 1ms},
          .budget = budget};
}

}  // namespace

TEST_CASE("concurrent retry budget allows at least min_concurrent_retries in flight") {
  auto budget = ConcurrentRetryBudget::Create({}).value();  // 20%, min 3: Envoy's defaults
  budget->OnCallStarted();
  auto a = Ask(*budget);
  auto b = Ask(*budget);
  auto c = Ask(*budget);
  REQUIRE(a);
  REQUIRE(b);
  REQUIRE(c);
  CHECK(budget->retries_in_flight() == 3);
  CHECK_FALSE(Ask(*budget));  // a fourth at once: refused
  budget->OnRetryFinished(*a, false);
  CHECK(Ask(*budget));  // a slot came free
  const keel::RetryBudgetStats s = budget->Stats();
  CHECK(s.retries_allowed_total == 4);
  CHECK(s.retries_refused_total == 1);
  CHECK(s.available == 0);
}

TEST_CASE("concurrent retry budget caps retries in flight at percent of calls in flight") {
  auto budget =
      ConcurrentRetryBudget::Create({.percent = 0.2, .min_concurrent_retries = 3}).value();
  for (int i = 0; i < 24; ++i) budget->OnCallStarted();
  CHECK(budget->limit() == 4);  // floor(0.2 * 24) = 4 > 3
  for (int i = 0; i < 4; ++i) CHECK(Ask(*budget));
  CHECK_FALSE(Ask(*budget));
  for (int i = 0; i < 6; ++i) budget->OnCallStarted();  // 30 calls: 6
  CHECK(budget->limit() == 6);
  CHECK(budget->Stats().available == 2);
  CHECK(Ask(*budget));
  CHECK(Ask(*budget));
  CHECK_FALSE(Ask(*budget));
  for (int i = 0; i < 30; ++i) budget->OnCallFinished();
  CHECK(budget->limit() == 3);  // back to the floor; the 6 in flight keep their slots
  CHECK(budget->retries_in_flight() == 6);
  CHECK_FALSE(Ask(*budget));
}

TEST_CASE("concurrent retry budget ignores a failure Retry will not retry") {
  auto budget = ConcurrentRetryBudget::Create({.min_concurrent_retries = 1}).value();
  CHECK_FALSE(budget->OnAttemptFailed(kDown, /*retry_wanted=*/false));
  CHECK(budget->retries_in_flight() == 0);
  CHECK(budget->Stats().retries_refused_total == 0);
}

TEST_CASE("concurrent retry budget rejects bad options naming the field") {
  CHECK(Contains(
      std::string(ConcurrentRetryBudget::Create({.percent = 1.5}).status().message()),
      "concurrent retry budget \"concurrent-retry-budget\": percent must be in [0, 1], got 1.5"));
  CHECK(Contains(
      std::string(ConcurrentRetryBudget::Create({.min_concurrent_retries = -1}).status().message()),
      "concurrent retry budget \"concurrent-retry-budget\": min_concurrent_retries must be >= 0, "
      "got -1"));
}

TEST_CASE("retry holds a concurrent budget slot for the retry and frees it with the call") {
  keel::testing::RecordingClock clock;
  auto budget = ConcurrentRetryBudget::Create({.percent = 0, .min_concurrent_retries = 1}).value();
  auto retry = keel::Retry::Create(Constant(budget.get()), clock).value();
  int calls = 0;
  int64_t in_flight_during_retry = -1;
  int64_t calls_during_retry = -1;
  auto r = retry.Execute(keel::Deadline::Infinite(), [&](const keel::CallContext& ctx) {
    ++calls;
    if (ctx.attempt == 2) {
      in_flight_during_retry = budget->retries_in_flight();
      calls_during_retry = budget->calls_in_flight();
      return absl::OkStatus();
    }
    return kDown;
  });
  CHECK(r.ok());
  CHECK(calls == 2);
  CHECK(in_flight_during_retry == 1);
  CHECK(calls_during_retry == 1);  // one call, however many attempts
  CHECK(budget->retries_in_flight() == 0);
  CHECK(budget->calls_in_flight() == 0);
}

TEST_CASE("retry quota follows the AWS SDK standard retryer's arithmetic") {
  auto quota = RetryQuota::Create({}).value();  // 500 tokens, 5 per retry, 10 after a timeout
  CHECK(quota->tokens() == 500);
  auto g1 = Ask(*quota);
  REQUIRE(g1);
  CHECK(g1->cost == 5);
  CHECK(quota->tokens() == 495);
  auto g2 = Ask(*quota, kTimedOut);
  REQUIRE(g2);
  CHECK(g2->cost == 10);
  CHECK(quota->tokens() == 485);
  quota->OnRetryFinished(*g2, /*succeeded=*/true);  // refunds its cost
  CHECK(quota->tokens() == 495);
  quota->OnRetryFinished(*g1, /*succeeded=*/false);  // a failed retry keeps the charge
  CHECK(quota->tokens() == 495);
  quota->OnAttemptSucceeded(1);  // success without retry: +1
  CHECK(quota->tokens() == 496);
  quota->OnAttemptSucceeded(2);  // a successful retry earns nothing beyond its refund
  CHECK(quota->tokens() == 496);
  for (int i = 0; i < 10; ++i) quota->OnAttemptSucceeded(1);
  CHECK(quota->tokens() == 500);  // capped at max_tokens
}

TEST_CASE("retry quota refuses a retry it cannot pay for, a timeout sooner") {
  auto quota = RetryQuota::Create({}).value();
  for (int i = 0; i < 99; ++i) REQUIRE(Ask(*quota));  // 99 x 5 = 495
  CHECK(quota->tokens() == 5);
  CHECK_FALSE(Ask(*quota, kTimedOut));  // costs 10
  CHECK(Ask(*quota));                   // costs 5
  CHECK(quota->tokens() == 0);
  CHECK_FALSE(Ask(*quota));
  const keel::RetryBudgetStats s = quota->Stats();
  CHECK(s.retries_allowed_total == 100);
  CHECK(s.retries_refused_total == 2);
  CHECK(s.available == 0);
}

TEST_CASE("retry quota rejects bad options naming the field") {
  CHECK(Contains(std::string(RetryQuota::Create({.max_tokens = 0}).status().message()),
                 "retry quota \"retry-quota\": max_tokens must be >= 1, got 0"));
  CHECK(Contains(std::string(RetryQuota::Create({.retry_cost = 501}).status().message()),
                 "retry quota \"retry-quota\": retry_cost must be in [1, max_tokens], got 501"));
  CHECK(Contains(
      std::string(RetryQuota::Create({.timeout_retry_cost = 0}).status().message()),
      "retry quota \"retry-quota\": timeout_retry_cost must be in [1, max_tokens], got 0"));
  CHECK(Contains(std::string(RetryQuota::Create({.success_increment = -1}).status().message()),
                 "retry quota \"retry-quota\": success_increment must be >= 0, got -1"));
}

TEST_CASE("retry drives a retry quota: charge, refund on success, +1 for a first-try success") {
  keel::testing::RecordingClock clock;
  auto quota = RetryQuota::Create({.max_tokens = 20}).value();
  auto retry = keel::Retry::Create(Constant(quota.get(), 3), clock).value();
  auto ok_second = retry.Execute(keel::Deadline::Infinite(), [](const keel::CallContext& ctx) {
    return ctx.attempt == 2 ? absl::OkStatus() : kTimedOut;
  });
  // retry_on does not accept DEADLINE_EXCEEDED by default: nothing charged.
  CHECK(absl::IsDeadlineExceeded(ok_second));
  CHECK(quota->tokens() == 20);
  auto down =
      retry.Execute(keel::Deadline::Infinite(), [](const keel::CallContext&) { return kDown; });
  CHECK(absl::IsUnavailable(down));
  CHECK(quota->tokens() == 10);  // two failed retries, 5 each; the last failure costs nothing
  auto recovers = retry.Execute(keel::Deadline::Infinite(), [](const keel::CallContext& ctx) {
    return ctx.attempt == 2 ? absl::OkStatus() : kDown;
  });
  CHECK(recovers.ok());
  CHECK(quota->tokens() == 10);  // charged 5, refunded 5
  CHECK(retry
            .Execute(keel::Deadline::Infinite(),
                     [](const keel::CallContext&) { return absl::OkStatus(); })
            .ok());
  CHECK(quota->tokens() == 11);
  auto exhausted =
      retry.Execute(keel::Deadline::Infinite(), [](const keel::CallContext&) { return kDown; });
  CHECK(quota->tokens() == 1);
  exhausted =
      retry.Execute(keel::Deadline::Infinite(), [](const keel::CallContext&) { return kDown; });
  CHECK(Contains(std::string(exhausted.message()),
                 "retry \"users\": retry budget exhausted after 1 attempt: down"));
}

TEST_CASE("retry budgets export allowed and refused retries and what is available") {
  keel::MetricsRegistry registry;
  auto quota =
      RetryQuota::Create({.name = "users-db", .max_tokens = 10, .retry_cost = 10}, &registry)
          .value();
  auto throttle = keel::TokenRetryThrottle::Create({.name = "orders-db"}, &registry).value();
  auto budget =
      keel::RetryBudget::Create({.name = "search"}, keel::SteadyClock(), &registry).value();
  auto concurrent = ConcurrentRetryBudget::Create({.name = "ai"}, &registry).value();
  CHECK(Ask(*quota));
  CHECK_FALSE(Ask(*quota));
  const std::string text = registry.RenderPrometheus();
  CHECK(Contains(text,
                 "keel_retry_budget_retries_total{decision=\"allowed\",name=\"users-db\"} 1\n"));
  CHECK(Contains(text,
                 "keel_retry_budget_retries_total{decision=\"refused\",name=\"users-db\"} 1\n"));
  CHECK(Contains(text, "keel_retry_budget_available{name=\"users-db\"} 0\n"));
  CHECK(Contains(text, "keel_retry_budget_available{name=\"orders-db\"} 5\n"));
  CHECK(Contains(text, "keel_retry_budget_available{name=\"search\"} 100\n"));
  CHECK(Contains(text, "keel_retry_budget_available{name=\"ai\"} 3\n"));
}

TEST_CASE("retry backoff ends as soon as the call's token is cancelled") {
  keel::ManualClock clock;
  auto retry = keel::Retry::Create(
                   {.name = "users",
                    .max_attempts = 3,
                    .backoff = {.kind = keel::Backoff::Kind::kConstant, .base = 10s, .cap = 10s}},
                   clock)
                   .value();
  keel::CancellationSource source;
  int calls = 0;
  absl::Status result;
  std::thread caller([&] {
    keel::CallContext ctx;
    ctx.cancellation = source.token();
    result = retry.Execute(ctx, [&](const keel::CallContext&) {
      ++calls;
      return kDown;
    });
  });
  clock.AwaitSleepers(1);  // in the 10 s backoff
  source.Cancel();         // no time passes
  caller.join();
  CHECK(absl::IsCancelled(result));
  CHECK(Contains(std::string(result.message()), "retry \"users\": cancelled after 1 attempt"));
  CHECK(calls == 1);
  CHECK(retry.Stats().outcome(keel::Retry::Outcome::kCancelled) == 1);
}

TEST_CASE("retry gives back a concurrent budget slot when cancelled during the backoff") {
  keel::ManualClock clock;
  auto budget = ConcurrentRetryBudget::Create({.min_concurrent_retries = 1}).value();
  keel::Retry::Options o = Constant(budget.get());
  o.backoff.base = 10s;
  o.backoff.cap = 10s;
  auto retry = keel::Retry::Create(o, clock).value();
  keel::CancellationSource source;
  std::thread caller([&] {
    keel::CallContext ctx;
    ctx.cancellation = source.token();
    (void)retry.Execute(ctx, [](const keel::CallContext&) { return kDown; });
  });
  clock.AwaitSleepers(1);
  CHECK(budget->retries_in_flight() == 1);
  source.Cancel();
  caller.join();
  CHECK(budget->retries_in_flight() == 0);
  CHECK(budget->calls_in_flight() == 0);
}
