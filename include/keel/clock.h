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
//
//   std::thread sleeper([&] { clock.SleepFor(5s); });
//   clock.AwaitSleepers(1);               // the thread is now blocked in SleepFor
//   clock.Advance(5s);                    // ... and this wakes it
//   sleeper.join();
//
// Components wait for a condition with a deadline through the clock, so the same code waits in
// real time in production and in manual time under test:
//
//   keel::MutexLock lock(mu_);
//   if (!clock_.WaitUntil(mu_, cv_, deadline.time(), [&] { return free_ > 0; })) {
//     return absl::DeadlineExceededError(...);
//   }
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "keel/sync.h"

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

  // Blocks the calling thread until `Now() >= t`. Used only for deliberate waits (retry backoff);
  // waits for a condition use WaitUntil.
  virtual void SleepUntil(TimePoint t) = 0;
  void SleepFor(Duration d);

  // Blocks until `pred()` holds or `Now() >= deadline`; returns the final value of `pred()`.
  // `TimePoint::max()` waits without a time limit. Whoever makes `pred` true must signal `cv`.
  // Const, like Now(): waiting does not change the clock, so a component can wait on the clock a
  // caller's Deadline carries (`deadline.clock()`), which is how every keel wait honours it.
  // REQUIRES: `mu` is held; it is held again on return (released while waiting).
  template <typename Pred>
  bool WaitUntil(Mutex& mu, CondVar& cv, TimePoint deadline, Pred pred) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    while (!pred()) {
      if (deadline != TimePoint::max() && Now() >= deadline) return false;
      WaitOnce(mu, cv, deadline);
    }
    return true;
  }

 protected:
  // One wait on `cv`: returns on a signal, a spurious wake-up, or (at the latest) at `deadline`.
  virtual void WaitOnce(Mutex& mu, CondVar& cv, TimePoint deadline) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) = 0;
};

// The process-wide clock backed by std::chrono::steady_clock. Never destroyed.
Clock& SteadyClock();

// A clock that moves only when told to. Starts at an arbitrary non-zero point so that code which
// subtracts durations from "now" never underflows the epoch.
//
// Sleeps (SleepUntil) wake exactly when another thread advances the time far enough. Condition
// waits (WaitUntil) wake on their condition variable as usual, and notice a manual time change
// within about a millisecond of real time: they re-check the manual time on a short real-time
// period, which keeps the clock free of any lock ordering with the components' mutexes.
class ManualClock final : public Clock {
 public:
  static constexpr TimePoint kDefaultStart = TimePoint{} + std::chrono::hours(24);

  explicit ManualClock(TimePoint start = kDefaultStart) : now_(start.time_since_epoch().count()) {}

  TimePoint Now() const override;
  void SleepUntil(TimePoint t) override ABSL_LOCKS_EXCLUDED(mu_);

  // Moves time forward by `d` and wakes every sleeper whose time has come. Negative `d` is
  // ignored: a steady clock never goes backwards.
  void Advance(Duration d) ABSL_LOCKS_EXCLUDED(mu_);
  // Sets the time to `t`; an earlier `t` than Now() is ignored.
  void Set(TimePoint t) ABSL_LOCKS_EXCLUDED(mu_);

  // Number of threads currently blocked in a sleep or condition wait on this clock.
  int sleepers() const ABSL_LOCKS_EXCLUDED(mu_);
  // Blocks (in real time) until at least `n` threads are blocked on this clock. Lets a test know a
  // thread has reached its wait before advancing time, without sleeping.
  void AwaitSleepers(int n) const ABSL_LOCKS_EXCLUDED(mu_);

 protected:
  void WaitOnce(Mutex& mu, CondVar& cv, TimePoint deadline) const override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void AddSleepers(int delta) const ABSL_LOCKS_EXCLUDED(mu_);

  // Nanoseconds since the steady epoch; atomic so Now() is lock-free for hot paths under test.
  std::atomic<int64_t> now_;
  mutable Mutex mu_;
  mutable CondVar cv_;                             // signalled when now_ or sleepers_ changes
  mutable int sleepers_ ABSL_GUARDED_BY(mu_) = 0;  // waits are const, and count here
};

}  // namespace keel
