#include "keel/resilience/timeout.h"

#include "keel/internal/strings.h"
#include "keel/resilience/executor_timeout.h"

namespace keel {

absl::StatusOr<Timeout> Timeout::Create(Options options, Clock& clock) {
  if (options.timeout <= Duration::zero()) {
    return absl::InvalidArgumentError(
        internal::StrCat("timeout.timeout must be > 0, got ",
                         std::chrono::duration<double, std::milli>(options.timeout).count(), "ms"));
  }
  return Timeout(std::move(options), clock);
}

absl::StatusOr<ExecutorTimeout> ExecutorTimeout::Create(Options options, ThreadPoolBulkhead& pool,
                                                        Clock& clock) {
  if (options.timeout <= Duration::zero()) {
    return absl::InvalidArgumentError(
        internal::StrCat("executor_timeout.timeout must be > 0, got ",
                         std::chrono::duration<double, std::milli>(options.timeout).count(), "ms"));
  }
  return ExecutorTimeout(std::move(options), pool, clock);
}

}  // namespace keel
