// Private helpers shared by keel's in-process limiters. Not installed.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <string_view>

#include "absl/status/status.h"
#include "keel/clock.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::limit::internal {

// The limiters keep time as int64 nanoseconds on the clock's steady timeline: one machine word,
// exact integer arithmetic (no drift from floating point), and the unit a Redis script can
// reproduce exactly from TIME.
inline int64_t Nanos(TimePoint t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
inline int64_t Nanos(Duration d) { return d.count(); }

// Intervals this long are refused at Create so that `interval * capacity` and `now + that`
// never overflow int64 (about 73 years, far past any sensible limit).
inline constexpr int64_t kMaxHorizonNanos = int64_t{1} << 61;

inline absl::Status QuantityError(std::string_view component, int64_t n) {
  return keel::internal::InvalidOption(component, "quantity", ">= 0", n);
}

}  // namespace keel::limit::internal
