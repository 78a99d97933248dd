#include "keel/deadline.h"

namespace keel {

Deadline Deadline::AfterNanos(Duration d, const Clock& clock) {
  const TimePoint now = clock.Now();
  if (d >= TimePoint::max() - now) return Deadline(TimePoint::max(), &clock);
  if (d <= Duration::zero()) return Deadline(now, &clock);
  return Deadline(now + d, &clock);
}

Duration Deadline::Remaining() const {
  if (IsInfinite()) return Duration::max();
  const TimePoint now = clock_->Now();
  return now >= time_ ? Duration::zero() : time_ - now;
}

}  // namespace keel
