// keel/pool/internal/pool_support.h: the non-template parts of keel::Pool<T> (option checks,
// error messages, metrics). Not part of keel's API.
#pragma once

#include <exception>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/internal/time_math.h"
#include "keel/metrics.h"

namespace keel {
struct PoolOptions;
struct PoolStats;
}  // namespace keel

namespace keel::pool_internal {

// INVALID_ARGUMENT naming the first bad field of `options`.
absl::Status ValidateOptions(const PoolOptions& options);

using keel::internal::AddSaturating;

// A measured duration for people, rounded to what is worth reading and printed by
// internal::FormatDuration: "250ms", "3s", "1.5s", "2m30s".
std::string HumanDuration(Duration d);

// What the pool looked like when a caller gave up.
struct Snapshot {
  int in_use = 0;
  int max_size = 0;
  int waiting = 0;
  int connecting = 0;
  std::optional<std::string> last_create_error =
      std::nullopt;  // with its age, e.g. "3s ago: refused"
};

// DEADLINE_EXCEEDED: `pool "db": no connection within 30s (10/10 in use, 7 waiting, last create
// error 3s ago: connection refused)`.
// `budget` is what the caller's deadline (capped by acquire_timeout) allowed when it asked.
absl::Status AcquireTimeoutError(const PoolOptions& options, Duration budget, const Snapshot& s);
// UNAVAILABLE: `pool "db": cannot create a connection: <cause>`; INTERNAL when the cause is
// (a create hook that threw or returned null).
absl::Status CreateFailedError(const PoolOptions& options, const absl::Status& cause);
// "3s ago: <cause message>".
std::string DescribeCreateError(std::string_view cause, Duration age);
absl::Status ShutDownError(const PoolOptions& options);   // FAILED_PRECONDITION
absl::Status CancelledError(const PoolOptions& options);  // CANCELLED
absl::Status ExhaustedError(const PoolOptions& options, int in_use, int waiting);
// INTERNAL: `pool "db": the validate hook threw: <what()>` (or "a non-standard exception").
absl::Status HookExceptionError(const PoolOptions& options, std::string_view hook,
                                std::exception_ptr thrown);
std::string LeakReport(const PoolOptions& options, std::string_view label, Duration held);
void WriteLeakReportToStderr(std::string_view report);

// Registers the pool's gauges and counters (read from `stats`) and returns its acquire latency
// histogram through `histogram`.
absl::StatusOr<std::vector<MetricsRegistry::Registration>> RegisterMetrics(
    MetricsRegistry& registry, const std::string& name, std::function<PoolStats()> stats,
    Histogram** histogram);

}  // namespace keel::pool_internal
