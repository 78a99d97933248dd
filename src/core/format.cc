#include "keel/internal/format.h"

#include "absl/time/time.h"

namespace keel::internal {

std::string FormatDuration(std::chrono::nanoseconds d) {
  if (d == std::chrono::nanoseconds::max()) return "inf";
  return absl::FormatDuration(absl::FromChrono(d));
}

}  // namespace keel::internal
