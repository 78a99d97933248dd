// keel/overload/windowed_limit.h: feed a limit algorithm one aggregated sample per time window
// instead of one per call.
//
// Defines `keel::overload::WindowedLimit`, the decorator of Netflix concurrency-limits'
// `WindowedLimit` (with its average sample window), with its defaults. Netflix's README wires
// its algorithms through it; per-call updates react to every completion and, at thousands of
// calls per second, overshoot by the calls completed during one round trip of feedback. Per
// sample (Netflix's `onSample`, step for step):
//
//   if rtt < min_rtt_threshold: ignore the sample               # cache hits, no-ops
//   window += sample (min rtt, sum of rtt, max in_flight, any drop, count)
//   if start + rtt > next_update:
//       next_update = start + rtt + clamp(2 * window.min_rtt, min_window, max_window)
//       if window.count >= window_size:
//           delegate.Update(rtt = window.sum / window.count, in_flight = window.max_in_flight,
//                           dropped = window.any_drop)
//       start a new window
//
// Defaults: min and max window 1 s, window size 10, min RTT threshold 100 us.
//
// Where keel departs from the reference: only the average sample window (Netflix also offers a
// percentile window); the window is plain state under the limiter's lock, not an atomically
// swapped immutable object (the limiter already serialises updates). Options are validated at
// Create with the reference's rules (windows >= 100 ms, size >= 10).
//
// Thread safety: not thread-safe (see limit_algorithm.h); an AdaptiveLimiter serialises it.
//
//   auto vegas = keel::overload::WindowedLimit::Create(
//       {}, keel::overload::VegasLimit::Create({}).value()).value();
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "keel/overload/limit_algorithm.h"

namespace keel::overload {

class WindowedLimit final : public LimitAlgorithm {
 public:
  struct Options {
    // The shortest window. Must be >= 100 ms. Default: 1 s.
    Duration min_window = std::chrono::seconds(1);
    // The longest window. Must be >= min_window. Default: 1 s.
    Duration max_window = std::chrono::seconds(1);
    // A window with fewer samples is dropped, not passed on. Must be >= 10. Default: 10.
    int window_size = 10;
    // Samples faster than this are ignored. Must be >= 0. Default: 100 us.
    Duration min_rtt_threshold = std::chrono::microseconds(100);
  };

  // Validates `options` (INVALID_ARGUMENT naming the field: `windowed_limit.window_size must be
  // >= 10, got 5`; `delegate must be set`).
  static absl::StatusOr<std::unique_ptr<WindowedLimit>> Create(
      Options options, std::unique_ptr<LimitAlgorithm> delegate);

  // The delegate's name: metrics label the algorithm that sets the limit.
  const char* name() const override { return delegate_->name(); }
  int limit() const override { return delegate_->limit(); }
  int Update(const LimitSample& sample) override;
  RttEstimates Rtt() const override { return delegate_->Rtt(); }

  const LimitAlgorithm& delegate() const { return *delegate_; }

 private:
  struct Window {
    Duration min_rtt = Duration::max();
    Duration sum = Duration::zero();
    int max_in_flight = 0;
    int count = 0;
    bool dropped = false;
  };

  WindowedLimit(Options options, std::unique_ptr<LimitAlgorithm> delegate)
      : options_(options), delegate_(std::move(delegate)) {}

  const Options options_;
  std::unique_ptr<LimitAlgorithm> delegate_;
  Window window_;
  TimePoint next_update_{};  // Netflix starts at 0: the first sample closes the first window
};

}  // namespace keel::overload
