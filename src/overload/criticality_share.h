// The criticality_share check the adaptive limiter and the adaptive throttle share. Private to
// src/overload (in keel::internal, beside the option checks it builds on).
#pragma once

#include <array>
#include <string>

#include "absl/status/status.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::internal {

// Each share in (0, 1], none above the one before it (less critical calls never get more);
// errors name the field under `of`.
inline absl::Status ValidateCriticalityShare(const OptionsOf& of,
                                             const std::array<double, 4>& share) {
  for (size_t i = 0; i < share.size(); ++i) {
    const std::string field = StrCat("criticality_share[", i, "]");
    KEEL_RETURN_IF_ERROR(RequireFraction(of, field, share[i]));
    if (i > 0 && share[i] > share[i - 1]) {
      return InvalidOption(of, field, StrCat("<= criticality_share[", i - 1, "]"), share[i]);
    }
  }
  return absl::OkStatus();
}

}  // namespace keel::internal
