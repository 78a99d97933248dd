#include "keel/status.h"

#include <cstdint>
#include <string>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"

namespace keel {

absl::Status WithRetryAfter(absl::Status status, std::chrono::nanoseconds after) {
  if (status.ok()) return status;
  const int64_t nanos = after.count() < 0 ? 0 : after.count();
  status.SetPayload(kRetryAfterPayloadUrl, absl::Cord(std::to_string(nanos)));
  return status;
}

std::optional<std::chrono::nanoseconds> RetryAfter(const absl::Status& status) {
  // Debian's Abseil has its own optional (absl::optional is not std::optional there).
  auto payload = status.GetPayload(kRetryAfterPayloadUrl);
  if (!payload) return std::nullopt;
  int64_t nanos = 0;
  if (!absl::SimpleAtoi(std::string(*payload), &nanos) || nanos < 0) return std::nullopt;
  return std::chrono::nanoseconds(nanos);
}

bool IsRetryable(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kAborted:
      return true;
    case absl::StatusCode::kResourceExhausted:
      return RetryAfter(status).has_value();
    default:
      return false;
  }
}

std::string StatusText(const absl::Status& status) {
  if (status.ok()) return "OK";
  std::string text = absl::StatusCodeToString(status.code());
  text += ": ";
  text.append(status.message().data(), status.message().size());
  return text;
}

}  // namespace keel
