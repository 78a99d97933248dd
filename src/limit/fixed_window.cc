#include "keel/limit/fixed_window.h"

#include <limits>

#include "common.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::limit {

using internal::Nanos;

absl::StatusOr<FixedWindow> FixedWindow::Create(Options options, Clock& clock) {
  using keel::internal::StrCat;
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast("fixed_window", "limit", options.limit, 1));
  if (options.window <= Duration::zero() || options.window.count() >= internal::kMaxHorizonNanos) {
    return keel::internal::InvalidOption("fixed_window", "window", "> 0 and under 70 years",
                                         options.window);
  }
  return FixedWindow(options, clock);
}

FixedWindow::FixedWindow(const Options& options, Clock& clock)
    : limit_(options.limit),
      window_nanos_(options.window.count()),
      alignment_(options.alignment),
      clock_(&clock) {}

FixedWindow::FixedWindow(FixedWindow&& other) noexcept
    : limit_(other.limit_),
      window_nanos_(other.window_nanos_),
      alignment_(other.alignment_),
      clock_(other.clock_) {
  MutexLock lock(other.mu_);
  MutexLock own(mu_);
  state_ = other.state_;
}

Decision FixedWindow::Evaluate(State& state, int64_t n, int64_t now, bool commit) const {
  int64_t start;
  int64_t count;
  const bool live = state.window_start != std::numeric_limits<int64_t>::min() &&
                    now - state.window_start < window_nanos_ && now >= state.window_start;
  if (alignment_ == Alignment::kAligned) {
    // Floor division, correct for negative clock values too.
    start = now - ((now % window_nanos_) + window_nanos_) % window_nanos_;
    count = state.window_start == start ? state.count : 0;
  } else {
    start = live ? state.window_start : now;
    count = live ? state.count : 0;
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
    state.window_start = start;
    state.count = count;
  }
  return d;
}

absl::StatusOr<Decision> FixedWindow::TryAcquire(int64_t n, TimePoint now) {
  if (n < 0) return internal::QuantityError("fixed_window", n);
  MutexLock lock(mu_);
  return Evaluate(state_, n, Nanos(now), /*commit=*/true);
}

absl::StatusOr<Decision> FixedWindow::Check(int64_t n, TimePoint now) const {
  if (n < 0) return internal::QuantityError("fixed_window", n);
  MutexLock lock(mu_);
  return Evaluate(state_, n, Nanos(now), /*commit=*/false);
}

Decision FixedWindow::Apply(State& state, int64_t n, TimePoint now) const {
  return Evaluate(state, n, Nanos(now), /*commit=*/true);
}

Decision FixedWindow::Peek(const State& state, int64_t n, TimePoint now) const {
  State copy = state;  // Evaluate writes only when committing; two words
  return Evaluate(copy, n, Nanos(now), /*commit=*/false);
}

}  // namespace keel::limit
