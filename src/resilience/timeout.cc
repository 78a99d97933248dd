#include "keel/resilience/timeout.h"

#include "keel/internal/strings.h"

namespace keel {

absl::StatusOr<Timeout> Timeout::Create(Options options, Clock& clock) {
  if (options.timeout <= Duration::zero()) {
    return absl::InvalidArgumentError(
        internal::StrCat("timeout.timeout must be > 0, got ",
                         std::chrono::duration<double, std::milli>(options.timeout).count(), "ms"));
  }
  return Timeout(std::move(options), clock);
}

}  // namespace keel
