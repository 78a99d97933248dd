// SemaphoreBulkhead with Options::queue: the CoDel + adaptive LIFO queue.
#include <catch2/catch.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <thread>

#include "keel/resilience/bulkhead.h"
#include "keel/status.h"

namespace {

using namespace std::chrono_literals;
using keel::Criticality;
using keel::SemaphoreBulkhead;
using Result = std::optional<absl::StatusOr<SemaphoreBulkhead::Permit>>;

std::unique_ptr<SemaphoreBulkhead> Make(keel::ManualClock& clock,
                                        keel::overload::CodelQueueOptions q = {}) {
  auto b = SemaphoreBulkhead::Create({.name = "ai-calls", .max_concurrent = 1, .queue = q}, clock);
  REQUIRE(b.ok());
  return std::move(b).value();
}

bool Contains(const absl::Status& s, const std::string& part) {
  return std::string(s.message()).find(part) != std::string::npos;
}

TEST_CASE("semaphore bulkhead without a queue keeps its FIFO max_wait behaviour by default") {
  const SemaphoreBulkhead::Options o;
  CHECK_FALSE(o.queue.has_value());
}

TEST_CASE("semaphore bulkhead with a queue refuses a max_wait") {
  keel::ManualClock clock;
  auto b = SemaphoreBulkhead::Create(
      {.name = "ai-calls", .max_wait = 10ms, .queue = keel::overload::CodelQueueOptions{}}, clock);
  CHECK(b.status().message() == "bulkhead \"ai-calls\": max_wait must be 0 with a queue, got 10ms");
  CHECK_FALSE(SemaphoreBulkhead::Create(
                  {.name = "x", .queue = keel::overload::CodelQueueOptions{.target = 0ms}}, clock)
                  .ok());
}

TEST_CASE("semaphore bulkhead queue hands a released permit to a waiter") {
  keel::ManualClock clock;
  auto b = Make(clock);
  auto held = b->TryAcquire();
  REQUIRE(held.ok());
  Result got;
  std::thread t([&] { got.emplace(b->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(1);
  CHECK(b->Stats().waiting == 1);
  CHECK_FALSE(b->TryAcquire().ok());  // no barging
  held->Release();
  t.join();
  CHECK(got->ok());
  CHECK(b->Stats().in_use == 1);
}

TEST_CASE("semaphore bulkhead queue times out at interval, then at target once standing") {
  keel::ManualClock clock;
  auto b = Make(clock);
  auto held = b->TryAcquire();
  Result first, second, third;
  std::thread a([&] { first.emplace(b->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(1);
  clock.Advance(50ms);
  std::thread c([&] { second.emplace(b->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(2);
  clock.Advance(50ms);  // a: 100ms
  a.join();
  REQUIRE_FALSE(first->ok());
  CHECK(absl::IsResourceExhausted(first->status()));
  CHECK(Contains(first->status(), "no permit within the queue timeout of 100ms"));
  CHECK(keel::RetryAfter(first->status()) == std::optional<keel::Duration>(100ms));
  std::thread d([&] { third.emplace(b->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(2);
  clock.Advance(5ms);  // standing for 100ms: d gets 5ms
  d.join();
  CHECK(Contains(third->status(), "queue timeout of 5ms"));
  CHECK(b->Stats().queue_timed_out_total == 2);
  held->Release();
  c.join();
  CHECK(second->ok());
}

TEST_CASE("semaphore bulkhead queue serves the newest waiter first while standing") {
  keel::ManualClock clock;
  auto b = Make(clock);
  auto held = b->TryAcquire();
  // f keeps the queue non-empty from t = 0 (and times out at 100ms); o and n arrive later, with
  // the 100ms timeout of a queue that is not standing yet.
  Result filler, old_one, new_one;
  std::thread f([&] { filler.emplace(b->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(1);
  clock.Advance(50ms);
  std::thread o([&] { old_one.emplace(b->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(2);
  clock.Advance(49ms);
  std::thread n([&] { new_one.emplace(b->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(3);
  clock.Advance(1ms);  // t = 100ms: f times out; the queue has not been empty for 100ms
  f.join();
  CHECK(absl::IsResourceExhausted(filler->status()));
  held->Release();  // standing: LIFO, so n (newest) before o
  n.join();
  CHECK(new_one->ok());
  CHECK(b->Stats().waiting == 1);
  (*new_one)->Release();
  o.join();
  CHECK(old_one->ok());
}

TEST_CASE("semaphore bulkhead queue serves the more critical waiter first") {
  keel::ManualClock clock;
  auto b = Make(clock);
  auto held = b->TryAcquire();
  Result sheddable, critical;
  std::thread s(
      [&] { sheddable.emplace(b->Acquire(keel::Deadline::Infinite(), Criticality::kSheddable)); });
  clock.AwaitSleepers(1);
  std::thread c([&] { critical.emplace(b->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(2);
  held->Release();
  c.join();
  CHECK(critical->ok());
  (*critical)->Release();
  s.join();
  CHECK(sheddable->ok());
}

TEST_CASE("semaphore bulkhead queue: the deadline bounds the wait and Shutdown cancels it") {
  keel::ManualClock clock;
  auto b = Make(clock);
  auto held = b->TryAcquire();
  Result late, cancelled;
  std::thread t([&] { late.emplace(b->Acquire(keel::Deadline::After(10ms, clock))); });
  clock.AwaitSleepers(1);
  clock.Advance(10ms);
  t.join();
  CHECK(absl::IsDeadlineExceeded(late->status()));
  std::thread u([&] { cancelled.emplace(b->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(1);
  b->Shutdown();
  u.join();
  CHECK(absl::IsCancelled(cancelled->status()));
}

}  // namespace
