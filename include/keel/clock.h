// keel/clock.h: the injectable time source every keel component reads.
//
// Defines `keel::Clock` (the interface), `keel::SteadyClock()` (the process-wide default backed by
// std::chrono::steady_clock) and `keel::ManualClock` (a clock tests move by hand).
//
// Thread safety: every Clock here is thread-safe.
//
// keel measures intervals on the steady clock only: wall-clock jumps (NTP, DST) must never open a
// breaker or refill a bucket. Components take a `Clock&` defaulting to `SteadyClock()`; tests pass
// a `ManualClock` and never sleep:
//
//   keel::ManualClock clock;
//   auto breaker = keel::CircuitBreaker::Create({.wait_in_open = 30s}, clock).value();
//   ...                                   // trip it
//   clock.Advance(30s);                   // no real waiting
//   REQUIRE(breaker->state() == keel::CircuitBreaker::State::kHalfOpen);
//
//   std::thread sleeper([&] { clock.SleepFor(5s); });
//   clock.AwaitSleepers(1);               // the thread is now blocked in SleepFor
//   clock.Advance(5s);                    // ... and this wakes it
//   sleeper.join();
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace keel {

// Intervals are nanoseconds on the steady clock; public APIs accept any std::chrono duration.
using Duration = std::chrono::nanoseconds;
using TimePoint = std::chrono::steady_clock::time_point;

// The source of "now" for intervals, timeouts and rate computations.
class Clock {
 public:
  virtual ~Clock() = default;

  // The current time on this clock's steady timeline.
  virtual TimePoint Now() const = 0;

  // Blocks the calling thread until `Now() >= t`. Used only for the rare deliberate waits (retry
  // backoff); waits on a condition use `WaitUntil`.
  virtual void SleepUntil(TimePoint t) = 0;
  void SleepFor(Duration d);

  // Blocks until `condition` holds or `Now() >= deadline`, whichever comes first; returns whether
  // the condition holds. `TimePoint::max()` waits without a time limit.
  // REQUIRES: `mu` is held by the caller; it is held again on return (released while waiting).
  virtual bool WaitUntil(absl::Mutex& mu, const absl::Condition& condition, TimePoint deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;
};

// The process-wide clock backed by std::chrono::steady_clock. Never destroyed.
Clock& SteadyClock();

// A clock that moves only when told to. Starts at an arbitrary non-zero point so that code which
// subtracts durations from "now" never underflows the epoch.
//
// Sleeps (`SleepUntil`) wake exactly when another thread advances the time far enough. Condition
// waits (`WaitUntil`) wake when the condition's mutex is released as usual, and notice a manual
// time change within about a millisecond of real time (they re-check the manual time on a short
// real-time period, which keeps the clock free of any lock ordering with components' mutexes).
class ManualClock final : public Clock {
 public:
  static constexpr TimePoint kDefaultStart = TimePoint{} + std::chrono::hours(24);

  explicit ManualClock(TimePoint start = kDefaultStart) : now_(start.time_since_epoch().count()) {}

  TimePoint Now() const override;
  void SleepUntil(TimePoint t) override ABSL_LOCKS_EXCLUDED(mu_);
  bool WaitUntil(absl::Mutex& mu, const absl::Condition& condition, TimePoint deadline) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) ABSL_LOCKS_EXCLUDED(mu_);

  // Moves time forward by `d` and wakes every sleeper whose time has come.
  // REQUIRES: d >= 0 (time never goes backwards on a steady clock; negative values are ignored).
  void Advance(Duration d) ABSL_LOCKS_EXCLUDED(mu_);
  // Sets the time to `t`. REQUIRES: t >= Now(); an earlier `t` is ignored.
  void Set(TimePoint t) ABSL_LOCKS_EXCLUDED(mu_);

  // Number of threads currently blocked in SleepUntil/SleepFor/WaitUntil on this clock.
  int sleepers() const ABSL_LOCKS_EXCLUDED(mu_);
  // Blocks (in real time) until at least `n` threads are blocked on this clock. Lets a test know a
  // thread has reached its wait before advancing time, without sleeping.
  void AwaitSleepers(int n) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // Nanoseconds since the steady epoch; atomic so Now() is lock-free for hot paths under test.
  std::atomic<int64_t> now_;
  mutable absl::Mutex mu_;
  int sleepers_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace keel
