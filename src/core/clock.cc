#include "keel/clock.h"

#include <thread>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace keel {
namespace {

class SteadyClockImpl final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }

  void SleepUntil(TimePoint t) override { std::this_thread::sleep_until(t); }

  bool WaitUntil(absl::Mutex& mu, const absl::Condition& condition, TimePoint deadline) override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (deadline == TimePoint::max()) {
      mu.Await(condition);
      return true;
    }
    // absl waits on its own (realtime-based) clock: convert the remaining steady interval.
    const Duration remaining = deadline - Now();
    if (remaining <= Duration::zero()) return condition.Eval();
    return mu.AwaitWithTimeout(condition, absl::FromChrono(remaining));
  }
};

}  // namespace

void Clock::SleepFor(Duration d) {
  if (d <= Duration::zero()) return;
  const TimePoint now = Now();
  SleepUntil(d >= TimePoint::max() - now ? TimePoint::max() : now + d);
}

Clock& SteadyClock() {
  static SteadyClockImpl* const clock = new SteadyClockImpl();  // never destroyed
  return *clock;
}

TimePoint ManualClock::Now() const {
  // acquire pairs with the release store in Set(): a thread that sees the new time also sees what
  // the advancing thread wrote before advancing.
  return TimePoint(Duration(now_.load(std::memory_order_acquire)));
}

void ManualClock::SleepUntil(TimePoint t) {
  absl::MutexLock lock(&mu_);
  ++sleepers_;
  const int64_t target = t.time_since_epoch().count();
  auto reached = [this, target]() { return now_.load(std::memory_order_acquire) >= target; };
  mu_.Await(absl::Condition(&reached));
  --sleepers_;
}

bool ManualClock::WaitUntil(absl::Mutex& mu, const absl::Condition& condition,
                            TimePoint deadline) {
  {
    absl::MutexLock lock(&mu_);
    ++sleepers_;
  }
  bool satisfied = condition.Eval();
  // Manual time moves without touching `mu`, so poll it on a short real-time period.
  while (!satisfied && Now() < deadline) {
    satisfied = mu.AwaitWithTimeout(condition, absl::Milliseconds(1));
  }
  {
    absl::MutexLock lock(&mu_);
    --sleepers_;
  }
  return satisfied;
}

void ManualClock::Advance(Duration d) {
  if (d <= Duration::zero()) return;
  Set(Now() + d);
}

void ManualClock::Set(TimePoint t) {
  // Taking mu_ makes absl re-evaluate the sleepers' conditions when it is released.
  absl::MutexLock lock(&mu_);
  const int64_t target = t.time_since_epoch().count();
  if (target > now_.load(std::memory_order_relaxed)) {
    now_.store(target, std::memory_order_release);
  }
}

int ManualClock::sleepers() const {
  absl::MutexLock lock(&mu_);
  return sleepers_;
}

void ManualClock::AwaitSleepers(int n) const {
  absl::MutexLock lock(&mu_);
  auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return sleepers_ >= n; };
  mu_.Await(absl::Condition(&enough));
}

}  // namespace keel
