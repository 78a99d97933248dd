// The [min, max] and initial-limit checks Netflix's algorithms share. Private to src/overload.
#pragma once

#include "absl/status/status.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/validate.h"

namespace keel::overload::internal {

// min >= 1, max >= min, initial in [min, max]; errors name the field under `of`.
inline absl::Status ValidateLimitRange(const keel::internal::OptionsOf& of, int min_limit,
                                       int max_limit, int initial_limit) {
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast(of, "min_limit", min_limit, 1));
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast(of, "max_limit", max_limit, min_limit));
  if (initial_limit < min_limit || initial_limit > max_limit) {
    return keel::internal::InvalidOption(of, "initial_limit", "in [min_limit, max_limit]",
                                         initial_limit);
  }
  return absl::OkStatus();
}

}  // namespace keel::overload::internal
