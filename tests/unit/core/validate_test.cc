// keel/internal/validate.h: one message format for every option check.
#include "keel/internal/validate.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <string>

using keel::internal::OptionsOf;
using namespace std::chrono_literals;

namespace {

std::string Message(const absl::Status& s) {
  CHECK(absl::IsInvalidArgument(s));
  return std::string(s.message());
}

}  // namespace

TEST_CASE("option checks name an unnamed component's field by its path") {
  CHECK(keel::internal::RequirePositive("gcra", "period", 250ms).ok());
  CHECK(Message(keel::internal::RequirePositive("gcra", "period", -250ms)) ==
        "gcra.period must be > 0, got -250ms");
  CHECK(Message(keel::internal::RequirePositive("gcra", "period", 0ms)) ==
        "gcra.period must be > 0, got 0");
  CHECK(Message(keel::internal::RequireAtLeast("token_bucket", "burst", int64_t{0}, 1)) ==
        "token_bucket.burst must be >= 1, got 0");
}

TEST_CASE("option checks name a named component as its other errors do") {
  const OptionsOf of("circuit breaker", "payments");
  CHECK(of.Field("wait_in_open") == "circuit breaker \"payments\": wait_in_open");
  CHECK(Message(keel::internal::RequireNonNegative(of, "max_wait", -1500us)) ==
        "circuit breaker \"payments\": max_wait must be >= 0, got -1.5ms");
  CHECK(keel::internal::RequireNonNegative(of, "max_wait", 0s).ok());
  CHECK(Message(keel::internal::RequireFraction(of, "failure_rate_threshold", 1.5)) ==
        "circuit breaker \"payments\": failure_rate_threshold must be in (0, 1], got 1.5");
  CHECK_FALSE(keel::internal::RequireFraction(of, "failure_rate_threshold", 0).ok());
  CHECK_FALSE(keel::internal::RequireFraction(of, "failure_rate_threshold", std::nan("")).ok());
  CHECK(keel::internal::RequireFraction(of, "failure_rate_threshold", 1.0).ok());
  CHECK(Message(keel::internal::RequireSet(of, "classifier", false)) ==
        "circuit breaker \"payments\": classifier must be set");
  CHECK(Message(keel::internal::InvalidOption(of, "lease", "in [1ms, 365 days]", 2h)) ==
        "circuit breaker \"payments\": lease must be in [1ms, 365 days], got 2h");
}

TEST_CASE("a nested options struct's error is prefixed with its owner") {
  const OptionsOf of("retry", "users-api");
  const absl::Status nested = keel::internal::RequirePositive("backoff", "base", 0s);
  CHECK(Message(of.Nest(nested)) == "retry \"users-api\": backoff.base must be > 0, got 0");
  CHECK(of.Nest(absl::OkStatus()).ok());
  CHECK(absl::IsNotFound(of.Nest(absl::NotFoundError("x"))));
}
