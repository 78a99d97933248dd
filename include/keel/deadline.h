// keel/deadline.h: an absolute point in time by which an operation must finish.
//
// Defines `keel::Deadline`, a small value type (a time point plus the clock it is measured on)
// that policies pass down a call chain so every layer spends from the same budget: a retry never
// sleeps past it, a pool never waits past it, and a Redis or PostgreSQL call turns it into its
// socket or statement timeout.
//
// Thread safety: a Deadline is an immutable value; copy it freely between threads.
//
//   keel::Deadline d = keel::Deadline::After(250ms);   // on keel::SteadyClock()
//   auto lease = pool.Acquire(d);                       // waits at most what is left
//   if (d.Expired()) return absl::DeadlineExceededError("...");
//   auto inner = keel::Deadline::Min(d, keel::Deadline::After(50ms));  // per-attempt bound
//   socket.set_timeout(inner.Remaining());
//
//   keel::ManualClock clock;                            // in tests
//   auto t = keel::Deadline::After(1s, clock);
//   clock.Advance(1s);  // t.Expired() is now true
#pragma once

#include <chrono>

#include "keel/clock.h"

namespace keel {

class Deadline {
 public:
  // A deadline that never expires. Remaining() is Duration::max().
  static Deadline Infinite() { return Deadline(TimePoint::max(), &SteadyClock()); }

  // A deadline at `t` on `clock`'s timeline.
  static Deadline At(TimePoint t, const Clock& clock = SteadyClock()) {
    return Deadline(t, &clock);
  }

  // A deadline `d` from now on `clock`. Saturates: a duration too large to represent, such as
  // Duration::max(), gives Infinite(). A zero or negative `d` gives an already expired deadline.
  template <typename Rep, typename Period>
  static Deadline After(std::chrono::duration<Rep, Period> d, const Clock& clock = SteadyClock()) {
    return AfterNanos(SaturatingNanos(d), clock);
  }

  // The earlier of two deadlines (its clock comes with it).
  static Deadline Min(const Deadline& a, const Deadline& b) { return b.time_ < a.time_ ? b : a; }

  TimePoint time() const { return time_; }
  const Clock& clock() const { return *clock_; }
  bool IsInfinite() const { return time_ == TimePoint::max(); }

  // Time left, never negative; Duration::max() for an infinite deadline.
  Duration Remaining() const;
  bool Expired() const { return !IsInfinite() && clock_->Now() >= time_; }

  friend bool operator==(const Deadline& a, const Deadline& b) { return a.time_ == b.time_; }
  friend auto operator<=>(const Deadline& a, const Deadline& b) { return a.time_ <=> b.time_; }

 private:
  Deadline(TimePoint t, const Clock* clock) : time_(t), clock_(clock) {}

  template <typename Rep, typename Period>
  static Duration SaturatingNanos(std::chrono::duration<Rep, Period> d) {
    using Wide = std::chrono::duration<long double, std::nano>;
    const Wide wide = std::chrono::duration_cast<Wide>(d);
    if (wide >= Wide(Duration::max().count())) return Duration::max();
    if (wide <= Wide(Duration::min().count())) return Duration::min();
    return std::chrono::duration_cast<Duration>(d);
  }
  static Deadline AfterNanos(Duration d, const Clock& clock);

  TimePoint time_;
  const Clock* clock_;
};

}  // namespace keel
