// A test clock whose sleeps return at once after moving time forward by the sleep, recording
// each one: a retry loop runs to completion on the test thread, deterministically, and the test
// reads back exactly which delays it chose.
#pragma once

#include <vector>

#include "keel/clock.h"

namespace keel::testing {

class RecordingClock final : public Clock {
 public:
  TimePoint Now() const override { return now_; }
  void SleepUntil(TimePoint t) override {
    sleeps.push_back(t - now_);
    wake_times.push_back(t);
    if (t > now_) now_ = t;
  }
  void Advance(Duration d) { now_ += d; }

  std::vector<Duration> sleeps;
  std::vector<TimePoint> wake_times;

 protected:
  void WaitOnce(Mutex&, CondVar&, TimePoint deadline) const override {
    if (deadline != TimePoint::max() && deadline > now_) now_ = deadline;
  }

 private:
  mutable TimePoint now_ = ManualClock::kDefaultStart;  // a wait moves it: waits are const
};

}  // namespace keel::testing
