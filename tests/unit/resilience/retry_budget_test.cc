#include "keel/resilience/retry_budget.h"

#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "keel/resilience/retry.h"
#include "unit/resilience/recording_clock.h"

// GCC 12 warns about fields a designated initializer leaves to their defaults (fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace std::chrono_literals;
using keel::RetryBudget;
using keel::TokenRetryThrottle;

namespace {

bool Contains(const absl::Status& s, const std::string& part) {
  return std::string(s.message()).find(part) != std::string::npos;
}

const absl::Status kDown = absl::UnavailableError("down");

// Records a retryable failure and asks for the retry, as Retry does: true when granted.
bool FailAndAsk(keel::RetryBudgetPolicy& budget, const absl::Status& failure = kDown) {
  return budget.OnAttemptFailed(failure, /*retry_wanted=*/true).has_value();
}

}  // namespace

TEST_CASE("token throttle allows retries while tokens exceed half of max_tokens") {
  auto throttle = TokenRetryThrottle::Create({.max_tokens = 10, .token_ratio = 0.1}).value();
  CHECK(throttle->tokens() == 10);
  for (int i = 0; i < 4; ++i) CHECK(FailAndAsk(*throttle));  // leaves 9, 8, 7, 6: all > 5
  CHECK(throttle->tokens() == 6);
  CHECK_FALSE(FailAndAsk(*throttle));  // leaves 5: not > 5
  CHECK(throttle->tokens() == 5);
  const keel::RetryBudgetStats s = throttle->Stats();
  CHECK(s.retries_allowed_total == 4);
  CHECK(s.retries_refused_total == 1);
  CHECK(s.available == 0);
}

TEST_CASE("token throttle records a failure Retry will not retry without granting anything") {
  auto throttle = TokenRetryThrottle::Create({.max_tokens = 10, .token_ratio = 0.1}).value();
  CHECK_FALSE(throttle->OnAttemptFailed(kDown, /*retry_wanted=*/false).has_value());
  CHECK(throttle->tokens() == 9);  // A6 counts every retryable failure
  CHECK(throttle->Stats().retries_allowed_total == 0);
  CHECK(throttle->Stats().retries_refused_total == 0);
  CHECK(throttle->Stats().available == 4);  // 9 - 10/2
}

TEST_CASE("token throttle re-enables retries as successes earn tokens back") {
  auto throttle = TokenRetryThrottle::Create({.max_tokens = 10, .token_ratio = 0.1}).value();
  for (int i = 0; i < 8; ++i) throttle->OnAttemptFailed(kDown, false);
  CHECK(throttle->tokens() == 2);
  for (int i = 0; i < 40; ++i) throttle->OnAttemptSucceeded(1);
  CHECK(throttle->tokens() == Approx(6));
  CHECK_FALSE(FailAndAsk(*throttle));  // leaves 5
  throttle->OnAttemptSucceeded(1);
  CHECK_FALSE(FailAndAsk(*throttle));  // 5.1 leaves 4.1
  for (int i = 0; i < 20; ++i) throttle->OnAttemptSucceeded(2);
  CHECK(throttle->tokens() == Approx(6.1));
  CHECK(FailAndAsk(*throttle));  // leaves 5.1 > 5
}

TEST_CASE("token throttle stays within zero and max_tokens") {
  auto throttle = TokenRetryThrottle::Create({.max_tokens = 3, .token_ratio = 0.5}).value();
  for (int i = 0; i < 10; ++i) throttle->OnAttemptSucceeded(1);
  CHECK(throttle->tokens() == 3);
  for (int i = 0; i < 10; ++i) throttle->OnAttemptFailed(kDown, false);
  CHECK(throttle->tokens() == 0);
}

TEST_CASE("token throttle rejects bad options naming the field") {
  auto a = TokenRetryThrottle::Create({.max_tokens = 0});
  CHECK(absl::IsInvalidArgument(a.status()));
  CHECK(Contains(a.status(),
                 "token retry throttle \"token-retry-throttle\": max_tokens must be in (0, 1000]"));
  auto b = TokenRetryThrottle::Create({.token_ratio = 0});
  CHECK(Contains(
      b.status(),
      "token retry throttle \"token-retry-throttle\": token_ratio must be in (0, max_tokens]"));
}

TEST_CASE("retry budget allows percent of recent requests as retries") {
  keel::ManualClock clock;
  auto budget =
      RetryBudget::Create({.percent = 0.2, .min_retries_per_second = 0, .ttl = 10s}, clock).value();
  CHECK_FALSE(FailAndAsk(*budget));
  for (int i = 0; i < 10; ++i) budget->OnCallStarted();
  CHECK(budget->available() == 2);
  CHECK(FailAndAsk(*budget));
  CHECK(FailAndAsk(*budget));
  CHECK_FALSE(FailAndAsk(*budget));
}

TEST_CASE("retry budget grants min_retries_per_second over ttl with no traffic") {
  keel::ManualClock clock;
  auto budget =
      RetryBudget::Create({.percent = 0.2, .min_retries_per_second = 1, .ttl = 10s}, clock).value();
  int granted = 0;
  while (FailAndAsk(*budget)) ++granted;
  CHECK(granted == 10);
}

TEST_CASE("retry budget recovers once spent retries leave the ttl window") {
  keel::ManualClock clock;
  auto budget =
      RetryBudget::Create({.percent = 0.5, .min_retries_per_second = 0.5, .ttl = 4s}, clock)
          .value();
  // Reserve: 0.5/s * 4 s = 2 retries.
  CHECK(FailAndAsk(*budget));
  CHECK(FailAndAsk(*budget));
  CHECK_FALSE(FailAndAsk(*budget));
  clock.Advance(2s);
  CHECK_FALSE(FailAndAsk(*budget));  // still inside the window
  clock.Advance(3s);
  CHECK(budget->available() == 2);
  // Deposits expire too: 4 requests allow 2 retries now, none once they have aged out.
  for (int i = 0; i < 4; ++i) budget->OnCallStarted();
  CHECK(budget->available() == 4);
  clock.Advance(5s);
  CHECK(budget->available() == 2);
}

TEST_CASE("retry budget rejects bad options naming the field") {
  CHECK(Contains(RetryBudget::Create({.percent = -0.1}).status(),
                 "retry budget \"retry-budget\": percent must be in [0, 1000]"));
  CHECK(Contains(RetryBudget::Create({.min_retries_per_second = -1}).status(),
                 "retry budget \"retry-budget\": min_retries_per_second must be >= 0"));
  CHECK(Contains(RetryBudget::Create({.ttl = 0s}).status(),
                 "retry budget \"retry-budget\": ttl must be in [1s, 60s], got 0"));
  CHECK(absl::IsInvalidArgument(RetryBudget::Create({.ttl = 61s}).status()));
}

TEST_CASE("retry stops retrying when its budget is exhausted and resumes when it recovers") {
  keel::testing::RecordingClock clock;
  auto budget =
      RetryBudget::Create({.percent = 0.1, .min_retries_per_second = 0, .ttl = 10s}, clock).value();
  auto retry =
      keel::Retry::Create({.name = "orders",
                           .max_attempts = 3,
                           .backoff = {.kind = keel::Backoff::Kind::kConstant, .base = 1ms},
                           .budget = budget.get()},
                          clock)
          .value();
  int calls = 0;
  auto always_down = [&](const keel::CallContext&) -> absl::StatusOr<int> {
    ++calls;
    return absl::UnavailableError("down");
  };
  // Ten requests earn one retry: the first call retries once, then the budget stops it.
  for (int i = 0; i < 9; ++i) budget->OnCallStarted();
  auto r = retry.Execute(keel::Deadline::Infinite(), always_down);
  CHECK(calls == 2);
  CHECK(absl::IsUnavailable(r.status()));
  CHECK(Contains(r.status(), "retry \"orders\": retry budget exhausted after 2 attempts: down"));
  calls = 0;
  r = retry.Execute(keel::Deadline::Infinite(), always_down);
  CHECK(calls == 1);  // no retry at all while exhausted
  // More healthy traffic refills it.
  for (int i = 0; i < 20; ++i) budget->OnCallStarted();
  calls = 0;
  r = retry.Execute(keel::Deadline::Infinite(), always_down);
  CHECK(calls == 3);
  CHECK(Contains(r.status(), "gave up after 3 attempts"));
}

TEST_CASE("retry charges a token throttle per failed attempt and stops when it throttles") {
  keel::testing::RecordingClock clock;
  auto throttle = TokenRetryThrottle::Create({.max_tokens = 4, .token_ratio = 1}).value();
  auto retry =
      keel::Retry::Create({.max_attempts = 10,
                           .backoff = {.kind = keel::Backoff::Kind::kConstant, .base = 1ms},
                           .budget = throttle.get()},
                          clock)
          .value();
  int calls = 0;
  auto r = retry.Execute(keel::Deadline::Infinite(), [&](const keel::CallContext&) {
    ++calls;
    return absl::UnavailableError("down");
  });
  // 4 -> 3 (retry) -> 2 (2 is not > 2: stop).
  CHECK(calls == 2);
  CHECK(Contains(r, "retry budget exhausted"));
  CHECK(throttle->tokens() == 2);
  // Successes give tokens back and retries resume (4 -> 3 after the failure: 3 > 2).
  for (int i = 0; i < 2; ++i) {
    CHECK(retry
              .Execute(keel::Deadline::Infinite(),
                       [](const keel::CallContext&) { return absl::OkStatus(); })
              .ok());
  }
  CHECK(throttle->tokens() == 4);
  calls = 0;
  CHECK(retry
            .Execute(keel::Deadline::Infinite(),
                     [&](const keel::CallContext&) {
                       return ++calls < 2 ? absl::UnavailableError("down") : absl::OkStatus();
                     })
            .ok());
  CHECK(calls == 2);
}
