#include "keel/overload/windowed_limit.h"

#include <algorithm>
#include <utility>

#include "keel/internal/status_macros.h"
#include "keel/internal/validate.h"

namespace keel::overload {

absl::StatusOr<std::unique_ptr<WindowedLimit>> WindowedLimit::Create(
    Options o, std::unique_ptr<LimitAlgorithm> delegate) {
  namespace ki = keel::internal;
  const ki::OptionsOf of("windowed_limit");
  KEEL_RETURN_IF_ERROR(ki::RequireSet(of, "delegate", delegate != nullptr));
  if (o.min_window < std::chrono::milliseconds(100)) {
    return ki::InvalidOption(of, "min_window", ">= 100ms", o.min_window);
  }
  if (o.max_window < o.min_window) {
    return ki::InvalidOption(of, "max_window", ">= min_window", o.max_window);
  }
  KEEL_RETURN_IF_ERROR(ki::RequireAtLeast(of, "window_size", o.window_size, 10));
  KEEL_RETURN_IF_ERROR(ki::RequireNonNegative(of, "min_rtt_threshold", o.min_rtt_threshold));
  return std::unique_ptr<WindowedLimit>(new WindowedLimit(o, std::move(delegate)));
}

int WindowedLimit::Update(const LimitSample& s) {
  if (s.rtt < options_.min_rtt_threshold) return delegate_->limit();
  window_.min_rtt = std::min(window_.min_rtt, s.rtt);
  window_.sum += s.rtt;
  window_.max_in_flight = std::max(window_.max_in_flight, s.in_flight);
  window_.dropped = window_.dropped || s.dropped;
  ++window_.count;
  const TimePoint end = s.start + s.rtt;
  if (end <= next_update_) return delegate_->limit();
  const Window done = std::exchange(window_, Window{});
  next_update_ = end + std::clamp(2 * done.min_rtt, options_.min_window, options_.max_window);
  if (done.count >= options_.window_size) {
    LimitSample aggregated = s;
    aggregated.rtt = done.sum / done.count;
    aggregated.in_flight = done.max_in_flight;
    aggregated.dropped = done.dropped;
    return delegate_->Update(aggregated);
  }
  return delegate_->limit();
}

}  // namespace keel::overload
