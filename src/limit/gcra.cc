#include "keel/limit/gcra.h"

#include <algorithm>
#include <limits>

#include "common.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::limit {

using internal::Nanos;

absl::StatusOr<Gcra> Gcra::Create(Options options, Clock& clock) {
  using keel::internal::StrCat;
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast("gcra", "count", options.count, 1));
  KEEL_RETURN_IF_ERROR(keel::internal::RequirePositive("gcra", "period", options.period));
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast("gcra", "max_burst", options.max_burst, 0));
  // redis-cell truncates period / count to whole nanoseconds; so does keel.
  const int64_t interval = options.period.count() / options.count;
  if (interval < 1) {
    return keel::internal::InvalidOption(
        "gcra", "period", StrCat("at least gcra.count (", options.count, ") nanoseconds"),
        options.period);
  }
  if (options.max_burst + 1 > internal::kMaxHorizonNanos / interval) {
    return absl::InvalidArgumentError(
        StrCat("gcra.max_burst ", options.max_burst, " makes the tolerance exceed 70 years"));
  }
  return Gcra(interval, options.max_burst + 1, clock);
}

Gcra::Gcra(int64_t interval_nanos, int64_t limit, Clock& clock)
    : interval_nanos_(interval_nanos),
      tolerance_nanos_(interval_nanos * limit),
      limit_(limit),
      clock_(&clock),
      tat_(std::numeric_limits<int64_t>::min()) {}

Gcra::Gcra(Gcra&& other) noexcept
    : interval_nanos_(other.interval_nanos_),
      tolerance_nanos_(other.tolerance_nanos_),
      limit_(other.limit_),
      clock_(other.clock_),
      tat_(other.tat_.load(std::memory_order_relaxed)) {}

Decision Gcra::Evaluate(int64_t stored_tat, int64_t n, int64_t now, int64_t* new_tat) const {
  // A TAT in the past is the same as a missing key (redis-cell lets it expire at the TTL).
  const int64_t tat = std::max(stored_tat, now);
  Decision d;
  d.limit = limit_;
  int64_t ttl;
  if (n > limit_) {
    // increment > tau: redis-cell answers limited with retry_after -1. Computed without n*T so
    // that a huge n cannot overflow.
    d.retry_after = kNever;
    ttl = tat - now;
  } else {
    const int64_t next = tat + n * interval_nanos_;
    const int64_t allow_at = next - tolerance_nanos_;
    if (allow_at > now) {
      d.retry_after = Duration(allow_at - now);
      ttl = tat - now;
    } else {
      d.allowed = true;
      *new_tat = next;
      ttl = next - now;
    }
  }
  const int64_t spare = tolerance_nanos_ - ttl;
  // Truncation toward zero, as redis-cell's float-to-int cast.
  d.remaining = spare > -interval_nanos_ ? spare / interval_nanos_ : 0;
  if (d.remaining < 0) d.remaining = 0;
  d.reset_after = Duration(ttl);
  return d;
}

Decision Gcra::Apply(State& state, int64_t n, TimePoint now) const {
  int64_t next = 0;
  const Decision d = Evaluate(state.tat, n, Nanos(now), &next);
  if (d.allowed && n > 0) state.tat = next;
  return d;
}

Decision Gcra::Peek(const State& state, int64_t n, TimePoint now) const {
  int64_t unused;
  return Evaluate(state.tat, n, Nanos(now), &unused);
}

absl::StatusOr<Decision> Gcra::Check(int64_t n, TimePoint now) const {
  if (n < 0) return internal::QuantityError("gcra", n);
  int64_t unused;
  return Evaluate(tat_.load(std::memory_order_relaxed), n, Nanos(now), &unused);
}

absl::StatusOr<Decision> Gcra::TryAcquire(int64_t n, TimePoint now) {
  if (n < 0) return internal::QuantityError("gcra", n);
  const int64_t t = Nanos(now);
  // Relaxed: tat_ is the limiter's only state and publishes no other memory; the CAS alone
  // serialises updates on tat_'s modification order, so no two callers spend the same slot.
  int64_t observed = tat_.load(std::memory_order_relaxed);
  for (;;) {
    int64_t next = 0;
    const Decision d = Evaluate(observed, n, t, &next);
    if (!d.allowed || n == 0) return d;  // denials and peeks write nothing
    if (tat_.compare_exchange_weak(observed, next, std::memory_order_relaxed,
                                   std::memory_order_relaxed)) {
      return d;
    }
  }
}

}  // namespace keel::limit
