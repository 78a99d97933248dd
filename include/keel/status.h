// keel/status.h: how keel reports failures, and the helpers callers use to act on them.
//
// keel never throws. Normal outcomes are values (a limiter's Decision); failures are
// absl::Status with one meaning per code across every component:
//
//   RESOURCE_EXHAUSTED  rejected by a limiter, a full bulkhead or an exhausted pool; carries a
//                       retry-after hint (see RetryAfter) when one is known
//   UNAVAILABLE         circuit open, backend down or unreachable (retryable)
//   DEADLINE_EXCEEDED   the deadline passed while waiting for a permit, connection, lock or reply
//   ABORTED             lost a race (lock token changed, fencing check failed): retryable
//   FAILED_PRECONDITION wrong state (unlocking a lock not held, using a closed pool)
//   INVALID_ARGUMENT    bad options or bad input
//   CANCELLED           shutdown
//   INTERNAL            a keel bug or a protocol violation by a server
//
// Thread safety: all functions here are pure and thread-safe.
//
//   absl::Status s = keel::WithRetryAfter(
//       absl::ResourceExhaustedError("rate limiter \"login\": limit 5/min reached"), 12s);
//   if (auto after = keel::RetryAfter(s)) response.set_header("Retry-After", ...);
//   if (keel::IsRetryable(s)) schedule_retry();
//   response.body = keel::StatusText(s);  // "RESOURCE_EXHAUSTED: rate limiter ...", no payloads
#pragma once

#include <chrono>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace keel {

// The payload type URL under which keel stores a retry-after hint (nanoseconds, decimal).
inline constexpr absl::string_view kRetryAfterPayloadUrl = "type.keel.dev/retry-after";

// Returns `status` carrying a hint that the caller may try again after `after`. Negative values
// are clamped to zero. An OK status is returned unchanged (OK carries no payloads).
absl::Status WithRetryAfter(absl::Status status, std::chrono::nanoseconds after);

// The retry-after hint attached by WithRetryAfter, if any.
std::optional<std::chrono::nanoseconds> RetryAfter(const absl::Status& status);

// Whether trying the same call again may succeed: UNAVAILABLE, ABORTED, and RESOURCE_EXHAUSTED
// only when it carries a retry-after hint (a rejection that says when to come back). Never the
// caller's mistakes (INVALID_ARGUMENT, NOT_FOUND, ...), never DEADLINE_EXCEEDED (the budget is
// spent) and never CANCELLED (shutdown).
bool IsRetryable(const absl::Status& status);

// "CODE: message" ("OK" for an OK status), without the payloads that absl::Status::ToString()
// appends (keel's retry-after hint among them). Use this, or status.message() alone, where a
// status reaches a response body or a log line meant for people.
std::string StatusText(const absl::Status& status);

}  // namespace keel
