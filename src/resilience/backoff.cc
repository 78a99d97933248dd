#include "keel/resilience/backoff.h"

#include <algorithm>
#include <cstdint>

#include "absl/random/distributions.h"
#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel {
absl::StatusOr<Backoff> Backoff::Create(Kind kind, Duration base, Duration cap,
                                        std::string_view field_prefix) {
  // A constant zero is "no backoff": retry at once (the baseline of Brooker's simulation, and
  // what a caller wants when something else spaces the attempts). The doubling kinds need a
  // positive base: 0 * 2^n never grows, and decorrelated jitter would draw from [0, 0].
  const internal::OptionsOf of(field_prefix);
  if (kind == Kind::kConstant) {
    if (base < Duration::zero()) {
      return internal::InvalidOption(of, "base", ">= 0 for a constant backoff", base);
    }
    return Backoff(kind, base, base);
  }
  KEEL_RETURN_IF_ERROR(internal::RequirePositive(of, "base", base));
  if (base > cap) {
    return internal::InvalidOption(of, "base", internal::StrCat("<= ", of.Field("cap")),
                                   internal::StrCat("base ", internal::FormatDuration(base),
                                                    " > cap ", internal::FormatDuration(cap)));
  }
  return Backoff(kind, base, cap);
}

absl::StatusOr<Backoff> Backoff::Constant(Duration delay) {
  return Create(Kind::kConstant, delay, delay);
}
absl::StatusOr<Backoff> Backoff::Exponential(Duration base, Duration cap) {
  return Create(Kind::kExponential, base, cap);
}
absl::StatusOr<Backoff> Backoff::FullJitter(Duration base, Duration cap) {
  return Create(Kind::kFullJitter, base, cap);
}
absl::StatusOr<Backoff> Backoff::EqualJitter(Duration base, Duration cap) {
  return Create(Kind::kEqualJitter, base, cap);
}
absl::StatusOr<Backoff> Backoff::DecorrelatedJitter(Duration base, Duration cap) {
  return Create(Kind::kDecorrelatedJitter, base, cap);
}

std::string_view Backoff::KindName(Kind kind) {
  switch (kind) {
    case Kind::kConstant:
      return "constant";
    case Kind::kExponential:
      return "exponential";
    case Kind::kFullJitter:
      return "full_jitter";
    case Kind::kEqualJitter:
      return "equal_jitter";
    case Kind::kDecorrelatedJitter:
      return "decorrelated_jitter";
  }
  return "unknown";
}

Duration BackoffSequence::CappedExponential() const {
  const int64_t base = backoff_.base().count();
  const int64_t cap = backoff_.cap().count();
  // base * 2^n > cap as soon as n reaches 63 or base > cap >> n; checking before shifting keeps
  // the product from overflowing however many retries a caller makes.
  if (retries_ >= 63 || base > (cap >> retries_)) return backoff_.cap();
  return Duration(base << retries_);
}

Duration BackoffSequence::Next(absl::BitGenRef gen) {
  Duration delay;
  switch (backoff_.kind()) {
    case Backoff::Kind::kConstant:
      delay = backoff_.base();
      break;
    case Backoff::Kind::kExponential:
      delay = CappedExponential();
      break;
    case Backoff::Kind::kFullJitter:
      delay = Duration(
          absl::Uniform<int64_t>(absl::IntervalClosedClosed, gen, 0, CappedExponential().count()));
      break;
    case Backoff::Kind::kEqualJitter: {
      const int64_t v = CappedExponential().count();
      const int64_t half = v / 2;
      // v - half rather than half again, so an odd v keeps its last nanosecond: the sum spans
      // exactly [v/2, v].
      delay = Duration(half + absl::Uniform<int64_t>(absl::IntervalClosedClosed, gen, 0, v - half));
      break;
    }
    case Backoff::Kind::kDecorrelatedJitter: {
      const int64_t base = backoff_.base().count();
      const int64_t cap = backoff_.cap().count();
      // The draw is over [base, 3 * prev] as published, even when 3 * prev exceeds cap (the
      // min clips afterwards); only the multiplication is guarded against overflow.
      const int64_t prev = prev_.count();
      const int64_t upper = prev > INT64_MAX / 3 ? INT64_MAX : 3 * prev;
      const int64_t drawn = absl::Uniform<int64_t>(absl::IntervalClosedClosed, gen, base, upper);
      delay = Duration(std::min(cap, drawn));
      prev_ = delay;
      break;
    }
  }
  ++retries_;
  return delay;
}

}  // namespace keel
