// keel/overload/latency_percentile.h: a percentile of recent latencies, cheap to read on every
// call: what a Hedge waits before sending its extra attempt.
//
// Defines `keel::overload::LatencyPercentile`. It keeps the last `window` latencies in a ring and
// recomputes the `percentile` (nearest rank) over them every window / 10 samples (at least 1):
// the recompute copies the ring under the lock and selects outside it (O(window) once per
// window / 10 samples, a few nanoseconds per sample amortized); reading the value is one relaxed
// atomic load. Until window / 10 samples have been seen there is no value (nullopt).
// Approximation: two recomputes racing may publish in either order, so for a moment the value
// can be the older of two recent ones.
//
// Thread safety: thread-safe.
//
//   keel::overload::LatencyPercentile p95({.percentile = 0.95, .window = 1000});
//   p95.Record(elapsed);
//   if (std::optional<keel::Duration> d = p95.value()) ScheduleHedge(*d);
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "keel/clock.h"
#include "keel/internal/validate.h"
#include "keel/sync.h"

namespace keel::overload {

class LatencyPercentile {
 public:
  struct Options {
    // Which percentile, in (0, 1). Default: 0.95.
    double percentile = 0.95;
    // How many recent latencies it is taken over. Default: 1000. Must be >= 10.
    int window = 1000;
  };

  // INVALID_ARGUMENT under `of` for a percentile outside (0, 1) or a window below 10.
  static absl::Status Validate(const internal::OptionsOf& of, const Options& options);
  // REQUIRES: Validate(options) is OK.
  explicit LatencyPercentile(Options options);

  void Record(Duration latency) ABSL_LOCKS_EXCLUDED(mu_);
  // The percentile as last recomputed, or nullopt before window / 10 samples.
  std::optional<Duration> value() const {
    const int64_t v = value_ns_.load(std::memory_order_relaxed);
    if (v < 0) return std::nullopt;
    return Duration(v);
  }
  uint64_t samples() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  const double percentile_;
  const size_t window_;
  const size_t every_;  // recompute every this many samples
  mutable Mutex mu_;
  std::vector<int64_t> ring_ ABSL_GUARDED_BY(mu_);
  uint64_t count_ ABSL_GUARDED_BY(mu_) = 0;  // samples ever recorded
  // Relaxed: a self-contained value; -1 before the first recompute.
  std::atomic<int64_t> value_ns_{-1};
};

}  // namespace keel::overload
