#include "keel/limit/leaky_bucket.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::limit {

absl::StatusOr<LeakyBucket> LeakyBucket::Create(Options options, Clock& clock) {
  using keel::internal::StrCat;
  if (!(options.rate > 0) || !std::isfinite(options.rate) || options.rate > 1e9) {
    return absl::InvalidArgumentError(
        StrCat("leaky_bucket.rate must be in (0, 1e9] per second, got ", options.rate));
  }
  if (auto s = keel::internal::RequireAtLeast("leaky_bucket", "capacity", options.capacity, 1);
      !s.ok()) {
    return s;
  }
  const double interval = std::round(1e9 / options.rate);
  if (interval * static_cast<double>(options.capacity) >=
      static_cast<double>(internal::kMaxHorizonNanos)) {
    return absl::InvalidArgumentError(
        StrCat("leaky_bucket.capacity / leaky_bucket.rate must be under 70 years"));
  }
  return LeakyBucket(static_cast<int64_t>(interval), options.capacity, clock);
}

LeakyBucket::LeakyBucket(int64_t interval_nanos, int64_t capacity, Clock& clock)
    : interval_nanos_(interval_nanos),
      capacity_(capacity),
      clock_(&clock),
      next_free_(std::numeric_limits<int64_t>::min()) {}

LeakyBucket::LeakyBucket(LeakyBucket&& other) noexcept
    : interval_nanos_(other.interval_nanos_),
      capacity_(other.capacity_),
      clock_(other.clock_),
      next_free_(other.next_free_.load(std::memory_order_relaxed)) {}

LeakyBucket::Admission LeakyBucket::Admit(TimePoint now) {
  const int64_t t = internal::Nanos(now);
  const int64_t longest = (capacity_ - 1) * interval_nanos_;
  // Relaxed: next_free_ is the only state and publishes no other memory; the CAS serialises
  // bookings on its modification order, so no two callers get the same slot.
  int64_t observed = next_free_.load(std::memory_order_relaxed);
  for (;;) {
    const int64_t slot = std::max(observed, t);
    const int64_t delay = slot - t;
    // Requests waiting = slots booked in (t, slot): ceil(delay / T).
    const int64_t waiting = (delay + interval_nanos_ - 1) / interval_nanos_;
    if (delay > longest) {
      return {.admitted = false, .retry_after = Duration(delay - longest), .queued = waiting};
    }
    if (next_free_.compare_exchange_weak(observed, slot + interval_nanos_,
                                         std::memory_order_relaxed, std::memory_order_relaxed)) {
      return {.admitted = true, .delay = Duration(delay), .queued = waiting + 1};
    }
  }
}

}  // namespace keel::limit
