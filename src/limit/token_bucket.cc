#include "keel/limit/token_bucket.h"

#include <algorithm>
#include <cmath>

#include "common.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::limit {

using internal::Nanos;

absl::StatusOr<TokenBucket> TokenBucket::Create(Options options, Clock& clock) {
  if (!(options.rate > 0) || !std::isfinite(options.rate) || options.rate > 1e9) {
    return absl::InvalidArgumentError(keel::internal::StrCat(
        "token_bucket.rate must be in (0, 1e9] tokens per second, got ", options.rate));
  }
  if (auto s = keel::internal::RequireAtLeast("token_bucket", "burst", options.burst, 1); !s.ok()) {
    return s;
  }
  const double interval = std::round(1e9 / options.rate);
  if (interval * static_cast<double>(options.burst) >=
      static_cast<double>(internal::kMaxHorizonNanos)) {
    return absl::InvalidArgumentError(keel::internal::StrCat(
        "token_bucket.burst / token_bucket.rate must be under 70 years, got burst ", options.burst,
        " at rate ", options.rate));
  }
  return TokenBucket(static_cast<int64_t>(interval), options.burst, clock);
}

TokenBucket::TokenBucket(int64_t interval_nanos, int64_t burst, Clock& clock)
    : interval_nanos_(interval_nanos),
      burst_(burst),
      burst_nanos_(interval_nanos * burst),
      clock_(&clock),
      // "Empty in the distant past" == full: every read clamps with max(empty_at, now - burst*T).
      empty_at_(std::numeric_limits<int64_t>::min()) {}

TokenBucket::TokenBucket(TokenBucket&& other) noexcept
    : interval_nanos_(other.interval_nanos_),
      burst_(other.burst_),
      burst_nanos_(other.burst_nanos_),
      clock_(other.clock_),
      empty_at_(other.empty_at_.load(std::memory_order_relaxed)) {}

Decision TokenBucket::Evaluate(int64_t empty_at, int64_t n, int64_t now,
                               int64_t* new_empty_at) const {
  // A bucket untouched for burst*T is full; older empty times carry no information.
  const int64_t start = std::max(empty_at, now - burst_nanos_);
  Decision d;
  d.limit = burst_;
  const auto fill = [&](int64_t e) {
    d.remaining = std::max<int64_t>(0, (now - e) / interval_nanos_);
    d.reset_after = Duration(std::max<int64_t>(0, e + burst_nanos_ - now));
  };
  if (n > burst_) {
    fill(start);
    d.retry_after = kNever;
    return d;
  }
  const int64_t next = start + n * interval_nanos_;
  if (next > now) {
    fill(start);
    d.retry_after = Duration(next - now);
    return d;
  }
  d.allowed = true;
  fill(next);
  *new_empty_at = next;
  return d;
}

absl::StatusOr<Decision> TokenBucket::Check(int64_t n, TimePoint now) const {
  if (n < 0) return internal::QuantityError("token_bucket", n);
  int64_t unused;
  return Evaluate(empty_at_.load(std::memory_order_relaxed), n, Nanos(now), &unused);
}

Decision TokenBucket::Apply(State& state, int64_t n, TimePoint now) const {
  int64_t next = 0;
  const Decision d = Evaluate(state.empty_at, n, Nanos(now), &next);
  if (d.allowed && n > 0) state.empty_at = next;
  return d;
}

Decision TokenBucket::Peek(const State& state, int64_t n, TimePoint now) const {
  int64_t unused;
  return Evaluate(state.empty_at, n, Nanos(now), &unused);
}

absl::StatusOr<Decision> TokenBucket::TryAcquire(int64_t n, TimePoint now) {
  if (n < 0) return internal::QuantityError("token_bucket", n);
  const int64_t t = Nanos(now);
  // Relaxed throughout: empty_at_ is the bucket's only state and publishes no other memory, so
  // no acquire/release pairing is needed. The CAS makes each update a read-modify-write on the
  // single modification order of empty_at_, which is what forbids two callers spending the same
  // tokens: the loser re-reads the winner's value and decides again.
  int64_t observed = empty_at_.load(std::memory_order_relaxed);
  for (;;) {
    int64_t next = 0;
    const Decision d = Evaluate(observed, n, t, &next);
    if (!d.allowed || n == 0) return d;
    if (empty_at_.compare_exchange_weak(observed, next, std::memory_order_relaxed,
                                        std::memory_order_relaxed)) {
      return d;
    }
  }
}

absl::StatusOr<Duration> TokenBucket::Reserve(int64_t n, TimePoint now) {
  if (n < 0) return internal::QuantityError("token_bucket", n);
  if (n > burst_) {
    return absl::InvalidArgumentError(keel::internal::StrCat(
        "token_bucket.quantity ", n, " exceeds the burst ", burst_, " and can never be reserved"));
  }
  const int64_t t = Nanos(now);
  // Relaxed for the same reason as TryAcquire. FIFO follows from the single modification order:
  // every reservation starts at or after the end of the one before it.
  int64_t observed = empty_at_.load(std::memory_order_relaxed);
  for (;;) {
    const int64_t next = std::max(observed, t - burst_nanos_) + n * interval_nanos_;
    if (empty_at_.compare_exchange_weak(observed, next, std::memory_order_relaxed,
                                        std::memory_order_relaxed)) {
      return Duration(std::max<int64_t>(0, next - t));
    }
  }
}

int64_t TokenBucket::Available(TimePoint now) const {
  const int64_t t = Nanos(now);
  const int64_t start = std::max(empty_at_.load(std::memory_order_relaxed), t - burst_nanos_);
  return std::max<int64_t>(0, (t - start) / interval_nanos_);
}

}  // namespace keel::limit
