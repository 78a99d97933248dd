#include "keel/resilience/timeout.h"

#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "keel/resilience/executor_timeout.h"

namespace keel {

absl::StatusOr<Timeout> Timeout::Create(Options options, Clock& clock) {
  KEEL_RETURN_IF_ERROR(
      internal::RequirePositive({"timeout", options.name}, "timeout", options.timeout));
  return Timeout(std::move(options), clock);
}

absl::StatusOr<ExecutorTimeout> ExecutorTimeout::Create(Options options, ThreadPoolBulkhead& pool,
                                                        Clock& clock) {
  KEEL_RETURN_IF_ERROR(
      internal::RequirePositive({"timeout", options.name}, "timeout", options.timeout));
  return ExecutorTimeout(std::move(options), pool, clock);
}

}  // namespace keel
