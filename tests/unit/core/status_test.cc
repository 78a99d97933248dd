#include "keel/status.h"

#include <catch2/catch.hpp>

#include "absl/status/statusor.h"
#include "keel/internal/status_macros.h"

using namespace std::chrono_literals;

TEST_CASE("retry-after survives a round trip through the status payload") {
  absl::Status s =
      keel::WithRetryAfter(absl::ResourceExhaustedError("limiter \"x\": full"), 1500ms);
  REQUIRE(keel::RetryAfter(s).has_value());
  CHECK(*keel::RetryAfter(s) == 1500ms);
  CHECK(s.message() == "limiter \"x\": full");
  CHECK(s.code() == absl::StatusCode::kResourceExhausted);
}

TEST_CASE("retry-after is clamped at zero and absent where never set") {
  CHECK(*keel::RetryAfter(keel::WithRetryAfter(absl::UnavailableError("x"), -3s)) == 0s);
  CHECK_FALSE(keel::RetryAfter(absl::UnavailableError("x")).has_value());
  CHECK(keel::WithRetryAfter(absl::OkStatus(), 1s).ok());
  CHECK_FALSE(keel::RetryAfter(keel::WithRetryAfter(absl::OkStatus(), 1s)).has_value());
}

TEST_CASE("a malformed retry-after payload is ignored") {
  absl::Status s = absl::UnavailableError("x");
  s.SetPayload(keel::kRetryAfterPayloadUrl, absl::Cord("soon"));
  CHECK_FALSE(keel::RetryAfter(s).has_value());
}

TEST_CASE("retryable codes are unavailable, aborted and resource exhausted with a hint") {
  CHECK(keel::IsRetryable(absl::UnavailableError("down")));
  CHECK(keel::IsRetryable(absl::AbortedError("lost race")));
  CHECK(keel::IsRetryable(keel::WithRetryAfter(absl::ResourceExhaustedError("full"), 1s)));
  CHECK_FALSE(keel::IsRetryable(absl::ResourceExhaustedError("full, no hint")));
  CHECK_FALSE(keel::IsRetryable(absl::OkStatus()));
  CHECK_FALSE(keel::IsRetryable(absl::DeadlineExceededError("late")));
  CHECK_FALSE(keel::IsRetryable(absl::CancelledError("shutdown")));
  CHECK_FALSE(keel::IsRetryable(absl::InvalidArgumentError("bad")));
  CHECK_FALSE(keel::IsRetryable(absl::NotFoundError("none")));
  CHECK_FALSE(keel::IsRetryable(absl::FailedPreconditionError("state")));
  CHECK_FALSE(keel::IsRetryable(absl::InternalError("bug")));
}

namespace {
absl::StatusOr<int> Half(int n) {
  if (n % 2 != 0) return absl::InvalidArgumentError("odd");
  return n / 2;
}
absl::StatusOr<int> Quarter(int n) {
  KEEL_ASSIGN_OR_RETURN(int half, Half(n));
  KEEL_ASSIGN_OR_RETURN(int quarter, Half(half));
  return quarter;
}
absl::Status CheckEven(int n) {
  KEEL_RETURN_IF_ERROR(Half(n).status());
  return absl::OkStatus();
}
}  // namespace

TEST_CASE("status macros return early with the first error and pass values through") {
  CHECK(*Quarter(8) == 2);
  CHECK(Quarter(6).status().message() == "odd");
  CHECK(Quarter(7).status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(CheckEven(4).ok());
  CHECK(CheckEven(5).code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("StatusText prints the code and message without keel's payloads") {
  absl::Status s = keel::WithRetryAfter(absl::ResourceExhaustedError("bulkhead \"x\": full"), 2s);
  CHECK(s.ToString().find("retry-after") != std::string::npos);  // what users must not echo
  CHECK(keel::StatusText(s) == "RESOURCE_EXHAUSTED: bulkhead \"x\": full");
  CHECK(keel::StatusText(absl::OkStatus()) == "OK");
}
