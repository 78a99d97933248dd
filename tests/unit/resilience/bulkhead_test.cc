#include "keel/resilience/bulkhead.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

using namespace std::chrono_literals;
using keel::SemaphoreBulkhead;

std::unique_ptr<SemaphoreBulkhead> Make(keel::ManualClock& clock, int max_concurrent,
                                        keel::Duration max_wait = keel::Duration::zero()) {
  auto b = SemaphoreBulkhead::Create(
      {.name = "ai-calls", .max_concurrent = max_concurrent, .max_wait = max_wait}, clock);
  REQUIRE(b.ok());
  return std::move(b).value();
}

bool Contains(const absl::Status& s, const std::string& part) {
  return std::string(s.message()).find(part) != std::string::npos;
}

TEST_CASE("semaphore bulkhead options default to 25 concurrent and no wait") {
  const SemaphoreBulkhead::Options o;
  CHECK(o.max_concurrent == 25);
  CHECK(o.max_wait == keel::Duration::zero());
  CHECK(o.name == "bulkhead");
}

TEST_CASE("semaphore bulkhead admits max_concurrent then rejects with RESOURCE_EXHAUSTED") {
  keel::ManualClock clock;
  auto b = Make(clock, 2);
  auto p1 = b->TryAcquire();
  auto p2 = b->TryAcquire();
  REQUIRE(p1.ok());
  REQUIRE(p2.ok());
  auto p3 = b->TryAcquire();
  REQUIRE_FALSE(p3.ok());
  CHECK(absl::IsResourceExhausted(p3.status()));
  CHECK(Contains(p3.status(), "bulkhead \"ai-calls\": full (2/2 in use"));
  CHECK(b->Stats().in_use == 2);
  CHECK(b->Stats().rejected_total == 1);
}

TEST_CASE("semaphore bulkhead permits release on destruction, Release() and move") {
  keel::ManualClock clock;
  auto b = Make(clock, 1);
  {
    auto p = b->TryAcquire();
    REQUIRE(p.ok());
    CHECK_FALSE(b->TryAcquire().ok());
  }
  auto p = b->TryAcquire();
  REQUIRE(p.ok());
  SemaphoreBulkhead::Permit moved = std::move(*p);
  p->Release();  // moved-from: nothing to release
  CHECK(b->Stats().in_use == 1);
  moved.Release();
  moved.Release();  // idempotent
  CHECK(b->Stats().in_use == 0);
  CHECK(b->TryAcquire().ok());
}

TEST_CASE("semaphore bulkhead Acquire with max_wait zero rejects at once when full") {
  keel::ManualClock clock;
  auto b = Make(clock, 1);
  auto held = b->TryAcquire();
  REQUIRE(held.ok());
  auto r = b->Acquire(keel::Deadline::Infinite());
  REQUIRE_FALSE(r.ok());
  CHECK(absl::IsResourceExhausted(r.status()));
}

TEST_CASE("semaphore bulkhead Acquire waits until a permit is released") {
  keel::ManualClock clock;
  auto b = Make(clock, 1, 10s);
  auto held = b->TryAcquire();
  REQUIRE(held.ok());
  std::atomic<int> result{-1};
  std::thread waiter([&] {
    auto p = b->Acquire(keel::Deadline::Infinite());
    result = p.ok() ? 1 : 0;
  });
  clock.AwaitSleepers(1);
  CHECK(b->Stats().waiting == 1);
  held->Release();
  waiter.join();
  CHECK(result == 1);
  CHECK(b->Stats().in_use == 0);  // the waiter's permit was released when its thread ended
}

TEST_CASE("semaphore bulkhead serves waiters FIFO and newcomers cannot barge in") {
  keel::ManualClock clock;
  auto b = Make(clock, 1, 1h);
  auto held = b->TryAcquire();
  REQUIRE(held.ok());
  std::atomic<int> order{0};
  std::atomic<int> first_rank{0}, second_rank{0};
  keel::Mutex mu;
  keel::CondVar cv;
  bool release_first = false;
  std::thread first([&] {
    auto p = b->Acquire(keel::Deadline::Infinite());
    first_rank = p.ok() ? ++order : -1;
    keel::MutexLock lock(mu);
    while (!release_first) cv.Wait(mu);
  });
  clock.AwaitSleepers(1);
  std::thread second([&] {
    auto p = b->Acquire(keel::Deadline::Infinite());
    second_rank = p.ok() ? ++order : -1;
  });
  clock.AwaitSleepers(2);
  held->Release();  // goes to `first`, the longest waiter
  while (first_rank == 0) std::this_thread::yield();
  CHECK(first_rank == 1);
  CHECK(second_rank == 0);
  CHECK_FALSE(b->TryAcquire().ok());  // `second` is queued: no barging even if one frees up
  {
    keel::MutexLock lock(mu);
    release_first = true;
  }
  cv.SignalAll();
  first.join();
  second.join();
  CHECK(second_rank == 2);
}

TEST_CASE("semaphore bulkhead TryAcquire does not barge past a waiter") {
  keel::ManualClock clock;
  auto b = Make(clock, 2, 1h);
  auto a = b->TryAcquire();
  auto c = b->TryAcquire();
  REQUIRE(a.ok());
  REQUIRE(c.ok());
  std::optional<SemaphoreBulkhead::Permit> handed;  // written by the waiter, read after join
  std::thread waiter([&] {
    auto p = b->Acquire(keel::Deadline::Infinite());
    if (p.ok()) handed.emplace(std::move(*p));
  });
  clock.AwaitSleepers(1);
  a->Release();                       // handed straight to the waiter...
  CHECK_FALSE(b->TryAcquire().ok());  // ...so this newcomer finds none, woken waiter or not
  waiter.join();
  CHECK(handed.has_value());
  CHECK(b->Stats().in_use == 2);
}

TEST_CASE("semaphore bulkhead Acquire fails with DEADLINE_EXCEEDED when the deadline comes first") {
  keel::ManualClock clock;
  auto b = Make(clock, 1, 10s);
  auto held = b->TryAcquire();
  REQUIRE(held.ok());
  absl::Status status;
  std::thread waiter([&] { status = b->Acquire(keel::Deadline::After(2s, clock)).status(); });
  clock.AwaitSleepers(1);
  clock.Advance(2s);
  waiter.join();
  CHECK(absl::IsDeadlineExceeded(status));
  CHECK(Contains(status, "bulkhead \"ai-calls\""));
  CHECK(b->Stats().waiting == 0);
  CHECK(b->Stats().timed_out_total == 1);
}

TEST_CASE("semaphore bulkhead Acquire fails with RESOURCE_EXHAUSTED when max_wait comes first") {
  keel::ManualClock clock;
  auto b = Make(clock, 1, 1s);
  auto held = b->TryAcquire();
  REQUIRE(held.ok());
  absl::Status status;
  std::thread waiter([&] { status = b->Acquire(keel::Deadline::After(1h, clock)).status(); });
  clock.AwaitSleepers(1);
  clock.Advance(1s);
  waiter.join();
  CHECK(absl::IsResourceExhausted(status));
  CHECK(b->Stats().waiting == 0);
  held->Release();
  CHECK(b->TryAcquire().ok());  // the timed-out waiter left the queue
}

TEST_CASE("semaphore bulkhead Acquire with an expired deadline fails at once") {
  keel::ManualClock clock;
  auto b = Make(clock, 1, 10s);
  auto held = b->TryAcquire();
  REQUIRE(held.ok());
  auto r = b->Acquire(keel::Deadline::After(0s, clock));
  CHECK(absl::IsDeadlineExceeded(r.status()));
}

TEST_CASE("semaphore bulkhead Shutdown fails waiters and later acquires with CANCELLED") {
  keel::ManualClock clock;
  auto b = Make(clock, 1, 1h);
  auto held = b->TryAcquire();
  REQUIRE(held.ok());
  absl::Status status;
  std::thread waiter([&] { status = b->Acquire(keel::Deadline::Infinite()).status(); });
  clock.AwaitSleepers(1);
  b->Shutdown();
  waiter.join();
  CHECK(absl::IsCancelled(status));
  CHECK(absl::IsCancelled(b->TryAcquire().status()));
  CHECK(absl::IsCancelled(b->Acquire(keel::Deadline::Infinite()).status()));
  held->Release();  // a held permit stays valid across shutdown
  CHECK(b->Stats().in_use == 0);
  CHECK(b->Stats().shut_down);
}

TEST_CASE("semaphore bulkhead exports metrics") {
  keel::ManualClock clock;
  keel::MetricsRegistry registry;
  auto b = SemaphoreBulkhead::Create({.name = "m", .max_concurrent = 1}, clock, &registry);
  REQUIRE(b.ok());
  auto p = (*b)->TryAcquire();
  CHECK_FALSE((*b)->TryAcquire().ok());
  const std::string text = registry.RenderPrometheus();
  CHECK(text.find("keel_bulkhead_in_use{name=\"m\"} 1") != std::string::npos);
  CHECK(text.find("keel_bulkhead_acquired_total{name=\"m\"} 1") != std::string::npos);
  CHECK(text.find("keel_bulkhead_rejected_total{name=\"m\",reason=\"full\"} 1") !=
        std::string::npos);
}

TEST_CASE("semaphore bulkhead rejects bad options with INVALID_ARGUMENT naming the field") {
  keel::ManualClock clock;
  auto zero = SemaphoreBulkhead::Create({.max_concurrent = 0}, clock);
  CHECK(absl::IsInvalidArgument(zero.status()));
  CHECK(std::string(zero.status().message()) ==
        "bulkhead \"bulkhead\": max_concurrent must be >= 1, got 0");
  auto negative = SemaphoreBulkhead::Create({.max_wait = -1s}, clock);
  CHECK(absl::IsInvalidArgument(negative.status()));
  // The duration prints as every keel duration does (it printed "-1000000000 ns").
  CHECK(std::string(negative.status().message()) ==
        "bulkhead \"bulkhead\": max_wait must be >= 0, got -1s");
  auto unnamed = SemaphoreBulkhead::Create({.name = ""}, clock);
  CHECK(Contains(unnamed.status(), "bulkhead \"\": name must be non-empty"));
}

}  // namespace

TEST_CASE("semaphore bulkhead waits on the deadline's own clock, not the bulkhead's") {
  // The bulkhead keeps real time (max_wait 1 h); the caller's deadline is on a manual clock.
  keel::ManualClock caller_clock;
  auto b =
      SemaphoreBulkhead::Create({.name = "ai-calls", .max_concurrent = 1, .max_wait = 1h}).value();
  auto held = b->TryAcquire();
  REQUIRE(held.ok());
  absl::Status waited;
  std::thread waiter(
      [&] { waited = b->Acquire(keel::Deadline::After(3s, caller_clock)).status(); });
  caller_clock.AwaitSleepers(1);
  caller_clock.Advance(3s);
  waiter.join();
  CHECK(absl::IsDeadlineExceeded(waited));
  CHECK(Contains(waited, "bulkhead \"ai-calls\": deadline passed while waiting for a permit"));
  CHECK(b->Stats().timed_out_total == 1);
}
