#include "keel/clock.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <thread>
#include <vector>

using namespace std::chrono_literals;

TEST_CASE("manual clock starts at a non-zero point and moves only when told") {
  keel::ManualClock clock;
  const keel::TimePoint start = clock.Now();
  CHECK(start == keel::ManualClock::kDefaultStart);
  CHECK(clock.Now() == start);
  clock.Advance(5s);
  CHECK(clock.Now() - start == 5s);
  clock.Set(start + 7s);
  CHECK(clock.Now() - start == 7s);
}

TEST_CASE("manual clock never goes backwards") {
  keel::ManualClock clock;
  const keel::TimePoint start = clock.Now();
  clock.Advance(-3s);
  CHECK(clock.Now() == start);
  clock.Set(start - 1s);
  CHECK(clock.Now() == start);
}

TEST_CASE("manual clock wakes a sleeper only when time reaches its wake-up time") {
  keel::ManualClock clock;
  std::atomic<bool> woke{false};
  std::thread sleeper([&] {
    clock.SleepFor(5s);
    woke = true;
  });
  clock.AwaitSleepers(1);
  clock.Advance(4s);
  // Still blocked: the sleeper is counted until it returns.
  CHECK(clock.sleepers() == 1);
  CHECK_FALSE(woke.load());
  clock.Advance(1s);
  sleeper.join();
  CHECK(woke.load());
  CHECK(clock.sleepers() == 0);
}

TEST_CASE("manual clock sleeps of zero or in the past return at once") {
  keel::ManualClock clock;
  clock.SleepFor(0s);
  clock.SleepFor(-1s);
  clock.SleepUntil(clock.Now() - 1s);
  CHECK(clock.sleepers() == 0);
}

TEST_CASE("manual clock condition wait returns when the condition becomes true") {
  keel::ManualClock clock;
  keel::Mutex mu;
  keel::CondVar cv;
  bool ready = false;
  bool result = false;
  std::thread waiter([&] {
    keel::MutexLock lock(mu);
    result = clock.WaitUntil(mu, cv, keel::TimePoint::max(), [&] { return ready; });
  });
  clock.AwaitSleepers(1);
  {
    keel::MutexLock lock(mu);
    ready = true;
  }
  cv.SignalAll();
  waiter.join();
  CHECK(result);
}

TEST_CASE("manual clock condition wait times out when manual time passes the deadline") {
  keel::ManualClock clock;
  keel::Mutex mu;
  keel::CondVar cv;
  bool result = true;
  const keel::TimePoint deadline = clock.Now() + 10s;
  std::thread waiter([&] {
    keel::MutexLock lock(mu);
    result = clock.WaitUntil(mu, cv, deadline, [] { return false; });
  });
  clock.AwaitSleepers(1);
  clock.Advance(9s);
  clock.Advance(1s);
  waiter.join();
  CHECK_FALSE(result);
}

TEST_CASE("steady clock condition wait with an expired deadline returns the condition at once") {
  keel::Clock& clock = keel::SteadyClock();
  keel::Mutex mu;
  keel::CondVar cv;
  keel::MutexLock lock(mu);
  CHECK_FALSE(clock.WaitUntil(mu, cv, clock.Now() - 1s, [] { return false; }));
  CHECK(clock.WaitUntil(mu, cv, clock.Now() - 1s, [] { return true; }));
}

TEST_CASE("steady clock condition wait times out in real time") {
  keel::Clock& clock = keel::SteadyClock();
  keel::Mutex mu;
  keel::CondVar cv;
  keel::MutexLock lock(mu);
  const keel::TimePoint deadline = clock.Now() + 2ms;
  CHECK_FALSE(clock.WaitUntil(mu, cv, deadline, [] { return false; }));
  CHECK(clock.Now() >= deadline);
}

TEST_CASE("concurrent advances of a manual clock all count") {
  keel::ManualClock clock;
  const keel::TimePoint start = clock.Now();
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&] {
      for (int j = 0; j < 1000; ++j) clock.Advance(1ms);
    });
  }
  for (auto& t : threads) t.join();
  CHECK(clock.Now() - start == 4s);
}

TEST_CASE("steady clock is monotonic") {
  keel::Clock& clock = keel::SteadyClock();
  const keel::TimePoint a = clock.Now();
  const keel::TimePoint b = clock.Now();
  CHECK(b >= a);
}
