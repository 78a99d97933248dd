#include "keel/overload/latency_percentile.h"

#include <algorithm>
#include <cmath>

namespace keel::overload {

absl::Status LatencyPercentile::Validate(const internal::OptionsOf& of, const Options& options) {
  if (!(options.percentile > 0 && options.percentile < 1)) {
    return internal::InvalidOption(of, "percentile", "in (0, 1)", options.percentile);
  }
  return internal::RequireAtLeast(of, "latency_window", options.window, 10);
}

LatencyPercentile::LatencyPercentile(Options options)
    : percentile_(options.percentile),
      window_(static_cast<size_t>(options.window)),
      every_(std::max<size_t>(1, window_ / 10)) {
  ring_.reserve(window_);
}

void LatencyPercentile::Record(Duration latency) {
  std::vector<int64_t> copy;
  {
    MutexLock lock(mu_);
    if (ring_.size() < window_) {
      ring_.push_back(latency.count());
    } else {
      ring_[count_ % window_] = latency.count();
    }
    ++count_;
    if (count_ % every_ != 0) return;
    copy = ring_;
  }
  // Nearest rank: the smallest sample with at least `percentile` of the samples at or below it.
  const size_t rank =
      static_cast<size_t>(std::ceil(percentile_ * static_cast<double>(copy.size())));
  const size_t index = std::min(copy.size() - 1, rank == 0 ? 0 : rank - 1);
  std::nth_element(copy.begin(), copy.begin() + static_cast<std::ptrdiff_t>(index), copy.end());
  value_ns_.store(copy[index], std::memory_order_relaxed);
}

uint64_t LatencyPercentile::samples() const {
  MutexLock lock(mu_);
  return count_;
}

}  // namespace keel::overload
