// keel/internal/time_math.h: saturating time arithmetic shared by keel's components. Not part of
// keel's API.
//
// Thread safety: pure functions.
//
//   TimePoint wake = keel::internal::AddSaturating(clock.Now(), delay);  // max() for huge delays
#pragma once

#include "keel/clock.h"

namespace keel::internal {

// `t + d`, saturating at TimePoint::max() (d >= 0).
inline TimePoint AddSaturating(TimePoint t, Duration d) {
  return d >= TimePoint::max() - t ? TimePoint::max() : t + d;
}

}  // namespace keel::internal
