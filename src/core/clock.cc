#include "keel/clock.h"

#include <thread>

namespace keel {
namespace {

class SteadyClockImpl final : public Clock {
 public:
  TimePoint Now() const override { return std::chrono::steady_clock::now(); }
  void SleepUntil(TimePoint t) override { std::this_thread::sleep_until(t); }

 protected:
  void WaitOnce(Mutex& mu, CondVar& cv, TimePoint deadline) const override
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (deadline == TimePoint::max()) {
      cv.Wait(mu);
    } else {
      cv.WaitUntil(mu, deadline);
    }
  }
};

// How often a condition wait on a ManualClock re-reads the manual time.
constexpr auto kManualPollPeriod = std::chrono::milliseconds(1);

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
  const int64_t target = t.time_since_epoch().count();
  MutexLock lock(mu_);
  ++sleepers_;
  cv_.SignalAll();  // AwaitSleepers
  while (now_.load(std::memory_order_acquire) < target) cv_.Wait(mu_);
  --sleepers_;
}

void ManualClock::WaitOnce(Mutex& mu, CondVar& cv, TimePoint deadline) const {
  (void)deadline;  // manual time: the caller re-checks it after every short real-time wait
  AddSleepers(1);
  cv.WaitUntil(mu, std::chrono::steady_clock::now() + kManualPollPeriod);
  AddSleepers(-1);
}

void ManualClock::AddSleepers(int delta) const {
  {
    MutexLock lock(mu_);
    sleepers_ += delta;
  }
  cv_.SignalAll();
}

void ManualClock::Advance(Duration d) {
  if (d <= Duration::zero()) return;
  {
    MutexLock lock(mu_);  // read-modify-write under mu_ so concurrent advances all count
    now_.store(now_.load(std::memory_order_relaxed) + d.count(), std::memory_order_release);
  }
  cv_.SignalAll();
}

void ManualClock::Set(TimePoint t) {
  {
    MutexLock lock(mu_);
    const int64_t target = t.time_since_epoch().count();
    if (target <= now_.load(std::memory_order_relaxed)) return;
    now_.store(target, std::memory_order_release);
  }
  cv_.SignalAll();
}

int ManualClock::sleepers() const {
  MutexLock lock(mu_);
  return sleepers_;
}

void ManualClock::AwaitSleepers(int n) const {
  MutexLock lock(mu_);
  while (sleepers_ < n) cv_.Wait(mu_);
}

}  // namespace keel
