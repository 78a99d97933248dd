#include "keel/limit/fixed_window.h"

#include <limits>

#include "common.h"
#include "keel/internal/strings.h"

namespace keel::limit {

using internal::Nanos;

absl::StatusOr<FixedWindow> FixedWindow::Create(Options options, Clock& clock) {
  using keel::internal::StrCat;
  if (options.limit < 1) {
    return absl::InvalidArgumentError(
        StrCat("fixed_window.limit must be >= 1, got ", options.limit));
  }
  if (options.window <= Duration::zero() || options.window.count() >= internal::kMaxHorizonNanos) {
    return absl::InvalidArgumentError(StrCat(
        "fixed_window.window must be > 0 and under 70 years, got ", options.window.count(), "ns"));
  }
  return FixedWindow(options, clock);
}

FixedWindow::FixedWindow(const Options& options, Clock& clock)
    : limit_(options.limit),
      window_nanos_(options.window.count()),
      alignment_(options.alignment),
      clock_(&clock),
      window_start_(std::numeric_limits<int64_t>::min()) {}

FixedWindow::FixedWindow(FixedWindow&& other) noexcept
    : limit_(other.limit_),
      window_nanos_(other.window_nanos_),
      alignment_(other.alignment_),
      clock_(other.clock_) {
  MutexLock lock(other.mu_);
  MutexLock own(mu_);
  window_start_ = other.window_start_;
  count_ = other.count_;
}

Decision FixedWindow::Evaluate(int64_t n, int64_t now, bool commit) const {
  int64_t start;
  int64_t count;
  const bool live = window_start_ != std::numeric_limits<int64_t>::min() &&
                    now - window_start_ < window_nanos_ && now >= window_start_;
  if (alignment_ == Alignment::kAligned) {
    // Floor division, correct for negative clock values too.
    start = now - ((now % window_nanos_) + window_nanos_) % window_nanos_;
    count = window_start_ == start ? count_ : 0;
  } else {
    start = live ? window_start_ : now;
    count = live ? count_ : 0;
  }
  Decision d;
  d.limit = limit_;
  const Duration to_end(start + window_nanos_ - now);
  if (n > limit_ || count + n > limit_) {
    d.remaining = limit_ - count;
    d.reset_after = count > 0 ? to_end : Duration::zero();
    d.retry_after = n > limit_ ? kNever : to_end;
    return d;
  }
  d.allowed = true;
  count += n;
  d.remaining = limit_ - count;
  d.reset_after = count > 0 ? to_end : Duration::zero();
  if (commit && n > 0) {
    window_start_ = start;
    count_ = count;
  }
  return d;
}

absl::StatusOr<Decision> FixedWindow::TryAcquire(int64_t n, TimePoint now) {
  if (n < 0) return internal::QuantityError("fixed_window", n);
  MutexLock lock(mu_);
  return Evaluate(n, Nanos(now), /*commit=*/true);
}

absl::StatusOr<Decision> FixedWindow::Check(int64_t n, TimePoint now) const {
  if (n < 0) return internal::QuantityError("fixed_window", n);
  MutexLock lock(mu_);
  return Evaluate(n, Nanos(now), /*commit=*/false);
}

}  // namespace keel::limit
