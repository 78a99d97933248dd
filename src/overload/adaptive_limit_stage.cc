#include "keel/overload/adaptive_limit_stage.h"

namespace keel::overload {

AdaptiveLimiter::Outcome DefaultOutcome(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kUnavailable:
      return AdaptiveLimiter::Outcome::kDropped;
    case absl::StatusCode::kCancelled:
      return AdaptiveLimiter::Outcome::kIgnored;
    default:
      return AdaptiveLimiter::Outcome::kSuccess;
  }
}

}  // namespace keel::overload
