#include "keel/overload/adaptive_limiter.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "keel/status.h"
#include "unit/overload/fake_limit.h"

namespace {

using namespace std::chrono_literals;
using keel::Criticality;
using keel::overload::AdaptiveLimiter;
using keel::overload::LimitSample;
using keel_test::FakeLimit;

std::unique_ptr<AdaptiveLimiter> Make(keel::ManualClock& clock, int limit,
                                      AdaptiveLimiter::Options options = {},
                                      std::vector<LimitSample>* samples = nullptr,
                                      const int* next = nullptr,
                                      keel::MetricsRegistry* metrics = nullptr) {
  if (options.name == "adaptive_limiter") options.name = "db";
  auto l = AdaptiveLimiter::Create(
      std::move(options), std::make_unique<FakeLimit>(limit, samples, next), clock, metrics);
  REQUIRE(l.ok());
  return std::move(l).value();
}

bool Contains(const absl::Status& s, const std::string& part) {
  return std::string(s.message()).find(part) != std::string::npos;
}

TEST_CASE("adaptive limiter admits up to the limit, then RESOURCE_EXHAUSTED at once") {
  keel::ManualClock clock;
  auto l = Make(clock, 2);
  auto a = l->TryAcquire();
  auto b = l->TryAcquire();
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  auto c = l->TryAcquire();
  REQUIRE_FALSE(c.ok());
  CHECK(absl::IsResourceExhausted(c.status()));
  CHECK(c.status().message() == "adaptive limiter \"db\": limit reached (2/2 in flight)");
  CHECK_FALSE(keel::RetryAfter(c.status()).has_value());
  CHECK(l->Stats().rejected_limit_total == 1);
  a->OnIgnore();
  CHECK(l->in_flight() == 1);
  CHECK(l->TryAcquire().ok());  // the temporary is destroyed: ignored
  CHECK(l->Stats().ignored_total == 2);
  CHECK(l->in_flight() == 1);
}

TEST_CASE("adaptive limiter permit records latency, in-flight at grant and outcome once") {
  keel::ManualClock clock;
  std::vector<LimitSample> samples;
  auto l = Make(clock, 10, {}, &samples);
  auto first = l->TryAcquire();
  auto second = l->TryAcquire();
  REQUIRE(first.ok());
  REQUIRE(second.ok());
  const keel::TimePoint t0 = clock.Now();
  clock.Advance(12ms);
  first->OnSuccess();
  first->OnDropped();  // already recorded: nothing
  clock.Advance(3ms);
  second->OnDropped();
  REQUIRE(samples.size() == 2);
  CHECK(samples[0].rtt == 12ms);
  CHECK(samples[0].start == t0);
  CHECK(samples[0].in_flight == 1);
  CHECK_FALSE(samples[0].dropped);
  CHECK(samples[1].rtt == 15ms);
  CHECK(samples[1].in_flight == 2);
  CHECK(samples[1].dropped);
  {
    auto ignored = l->TryAcquire();  // destroyed unrecorded: no sample
  }
  CHECK(samples.size() == 2);
  const auto s = l->Stats();
  CHECK(s.success_total == 1);
  CHECK(s.dropped_total == 1);
  CHECK(s.ignored_total == 1);
  CHECK(s.in_flight == 0);
}

TEST_CASE("adaptive limiter moved permits record once") {
  keel::ManualClock clock;
  std::vector<LimitSample> samples;
  auto l = Make(clock, 1, {}, &samples);
  auto p = l->TryAcquire();
  REQUIRE(p.ok());
  AdaptiveLimiter::Permit moved = std::move(*p);
  CHECK_FALSE(p->held());
  CHECK(moved.held());
  p->OnSuccess();  // moved-from: nothing
  CHECK(samples.empty());
  moved.OnSuccess();
  CHECK(samples.size() == 1);
  CHECK(l->in_flight() == 0);
}

TEST_CASE("adaptive limiter enforces the limit its algorithm returns and tells the listener") {
  keel::ManualClock clock;
  int next = 1;
  std::vector<std::pair<int, int>> heard;
  AdaptiveLimiter* self = nullptr;
  AdaptiveLimiter::Options options;
  options.on_limit_change = [&](int from, int to) {
    // Called outside the lock: the limiter may be used from the listener.
    heard.emplace_back(from, to);
    CHECK(self->Stats().limit == to);
  };
  auto l = Make(clock, 3, std::move(options), nullptr, &next);
  self = l.get();
  CHECK(l->limit() == 3);
  l->TryAcquire()->OnSuccess();
  CHECK(l->limit() == 1);
  auto held = l->TryAcquire();
  REQUIRE(held.ok());
  CHECK_FALSE(l->TryAcquire().ok());
  next = 4;
  held->OnSuccess();
  CHECK(l->limit() == 4);
  next = 4;
  l->TryAcquire()->OnSuccess();  // unchanged: no call
  CHECK(heard == std::vector<std::pair<int, int>>{{3, 1}, {1, 4}});
}

TEST_CASE("adaptive limiter catches and counts a listener's exception") {
  keel::ManualClock clock;
  int next = 5;
  AdaptiveLimiter::Options options;
  options.on_limit_change = [](int, int) { throw std::runtime_error("listener bug"); };
  auto l = Make(clock, 3, std::move(options), nullptr, &next);
  l->TryAcquire()->OnSuccess();
  CHECK(l->limit() == 5);
  CHECK(l->Stats().listener_exceptions_total == 1);
  next = 6;
  l->TryAcquire()->OnSuccess();  // delivery is not wedged
  CHECK(l->Stats().listener_exceptions_total == 2);
}

TEST_CASE("adaptive limiter sheds lower criticalities first: each fills only its share") {
  keel::ManualClock clock;
  auto l = Make(clock, 20);  // shares 1, 1, 0.9, 0.75: sheddable 15, sheddable_plus 18
  std::vector<AdaptiveLimiter::Permit> held;
  for (int i = 0; i < 15; ++i)
    held.push_back(std::move(l->TryAcquire(Criticality::kSheddable)).value());
  auto refused = l->TryAcquire(Criticality::kSheddable);
  REQUIRE_FALSE(refused.ok());
  CHECK(refused.status().message() ==
        "adaptive limiter \"db\": limit reached for sheddable calls (15/20 in flight, sheddable "
        "may use 15)");
  for (int i = 0; i < 3; ++i) {
    held.push_back(std::move(l->TryAcquire(Criticality::kSheddablePlus)).value());
  }
  CHECK_FALSE(l->TryAcquire(Criticality::kSheddablePlus).ok());
  held.push_back(std::move(l->TryAcquire(Criticality::kCritical)).value());
  held.push_back(std::move(l->TryAcquire(Criticality::kCriticalPlus)).value());
  CHECK_FALSE(l->TryAcquire(Criticality::kCriticalPlus).ok());
  CHECK(l->in_flight() == 20);
}

TEST_CASE("adaptive limiter validates its options") {
  keel::ManualClock clock;
  CHECK(AdaptiveLimiter::Create({.name = "db"}, nullptr, clock).status().message() ==
        "adaptive limiter \"db\": algorithm must be set");
  AdaptiveLimiter::Options zero{.name = "db"};
  zero.criticality_share[2] = 0;
  CHECK(AdaptiveLimiter::Create(zero, std::make_unique<FakeLimit>(1), clock).status().message() ==
        "adaptive limiter \"db\": criticality_share[2] must be in (0, 1], got 0");
  AdaptiveLimiter::Options rising{.name = "db"};
  rising.criticality_share = {1, 0.5, 0.6, 0.5};
  CHECK(AdaptiveLimiter::Create(rising, std::make_unique<FakeLimit>(1), clock).status().message() ==
        "adaptive limiter \"db\": criticality_share[2] must be <= criticality_share[1], got 0.6");
  AdaptiveLimiter::Options bad_queue{.name = "db",
                                     .queue = keel::overload::CodelQueueOptions{.target = 0ms}};
  CHECK_FALSE(AdaptiveLimiter::Create(bad_queue, std::make_unique<FakeLimit>(1), clock).ok());
}

TEST_CASE("adaptive limiter registers its series") {
  keel::ManualClock clock;
  keel::MetricsRegistry metrics;
  auto l = Make(clock, 7, {}, nullptr, nullptr, &metrics);
  l->TryAcquire()->OnSuccess();
  auto held = l->TryAcquire();
  const std::string text = metrics.RenderPrometheus();
  CHECK(text.find("keel_adaptive_limit{algorithm=\"fake\",name=\"db\"} 7") != std::string::npos);
  CHECK(text.find("keel_adaptive_limit_in_flight{algorithm=\"fake\",name=\"db\"} 1") !=
        std::string::npos);
  CHECK(text.find("keel_adaptive_limit_calls_total{algorithm=\"fake\",name=\"db\",outcome="
                  "\"success\"} 1") != std::string::npos);
  CHECK(text.find("keel_adaptive_limit_rejected_total{algorithm=\"fake\",name=\"db\",reason="
                  "\"queue_timeout\"} 0") != std::string::npos);
  CHECK(text.find("keel_adaptive_limit_rtt_seconds{algorithm=\"fake\",estimate=\"no_load\"") !=
        std::string::npos);
}

AdaptiveLimiter::Options Queued(keel::overload::CodelQueueOptions q = {}) {
  return {.name = "db", .queue = q};
}

TEST_CASE("adaptive limiter without a queue: Acquire fails at once like TryAcquire") {
  keel::ManualClock clock;
  auto l = Make(clock, 1);
  auto held = l->TryAcquire();
  auto r = l->Acquire(keel::Deadline::After(1s, clock));
  REQUIRE_FALSE(r.ok());
  CHECK(absl::IsResourceExhausted(r.status()));
}

TEST_CASE("adaptive limiter queue grants a waiter when a permit is released") {
  keel::ManualClock clock;
  std::vector<LimitSample> samples;
  auto l = Make(clock, 1, Queued(), &samples);
  auto held = l->TryAcquire();
  REQUIRE(held.ok());
  std::optional<absl::StatusOr<AdaptiveLimiter::Permit>> got;
  std::thread waiter([&] { got.emplace(l->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(1);
  CHECK(l->Stats().waiting == 1);
  CHECK_FALSE(l->TryAcquire().ok());  // no barging past the waiter
  clock.Advance(3ms);
  held->OnSuccess();
  waiter.join();
  REQUIRE(got->ok());
  CHECK((*got)->start() == clock.Now());  // its latency is measured from the grant
  CHECK(l->in_flight() == 1);
  CHECK(l->Stats().queued_total == 1);
  CHECK(l->Stats().waiting == 0);
}

TEST_CASE("adaptive limiter queue times out after interval, with a retry-after hint") {
  keel::ManualClock clock;
  auto l = Make(clock, 1, Queued());
  auto held = l->TryAcquire();
  std::optional<absl::StatusOr<AdaptiveLimiter::Permit>> got;
  std::thread waiter([&] { got.emplace(l->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(1);
  clock.Advance(99ms);
  CHECK(l->Stats().waiting == 1);
  clock.Advance(1ms);
  waiter.join();
  REQUIRE_FALSE(got->ok());
  CHECK(absl::IsResourceExhausted(got->status()));
  CHECK(Contains(got->status(), "no permit within the queue timeout of 100ms"));
  CHECK(keel::RetryAfter(got->status()) == std::optional<keel::Duration>(100ms));
  CHECK(l->Stats().rejected_queue_timeout_total == 1);
}

TEST_CASE("adaptive limiter queue gives target to callers arriving at a standing queue") {
  keel::ManualClock clock;
  auto l = Make(clock, 1, Queued());
  auto held = l->TryAcquire();
  std::optional<absl::StatusOr<AdaptiveLimiter::Permit>> first, second;
  std::thread a([&] { first.emplace(l->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(1);
  clock.Advance(60ms);
  std::thread b([&] { second.emplace(l->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(2);
  clock.Advance(40ms);  // a times out at 100ms; the queue has not been empty for 100ms
  a.join();
  CHECK(absl::IsResourceExhausted(first->status()));
  std::optional<absl::StatusOr<AdaptiveLimiter::Permit>> third;
  std::thread c([&] { third.emplace(l->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(2);
  clock.Advance(5ms);  // c arrived at a standing queue: 5ms
  c.join();
  REQUIRE_FALSE(third->ok());
  CHECK(Contains(third->status(), "queue timeout of 5ms"));
  held->OnSuccess();  // b (interval timeout) is served
  b.join();
  CHECK(second->ok());
}

TEST_CASE("adaptive limiter queue: the caller's deadline bounds the wait") {
  keel::ManualClock clock;
  auto l = Make(clock, 1, Queued());
  auto held = l->TryAcquire();
  std::optional<absl::StatusOr<AdaptiveLimiter::Permit>> got;
  std::thread waiter([&] { got.emplace(l->Acquire(keel::Deadline::After(20ms, clock))); });
  clock.AwaitSleepers(1);
  clock.Advance(20ms);
  waiter.join();
  REQUIRE_FALSE(got->ok());
  CHECK(absl::IsDeadlineExceeded(got->status()));
  CHECK(l->Stats().rejected_deadline_total == 1);
}

TEST_CASE("adaptive limiter queue serves the more critical waiter first") {
  keel::ManualClock clock;
  auto l = Make(clock, 1, Queued());
  auto held = l->TryAcquire();
  std::optional<absl::StatusOr<AdaptiveLimiter::Permit>> sheddable, critical;
  std::thread s(
      [&] { sheddable.emplace(l->Acquire(keel::Deadline::Infinite(), Criticality::kSheddable)); });
  clock.AwaitSleepers(1);
  std::thread c([&] {
    critical.emplace(l->Acquire(keel::Deadline::Infinite(), Criticality::kCriticalPlus));
  });
  clock.AwaitSleepers(2);
  held->OnSuccess();
  c.join();
  REQUIRE(critical->ok());
  CHECK(l->Stats().waiting == 1);
  (*critical)->OnSuccess();
  s.join();
  CHECK(sheddable->ok());
}

TEST_CASE("adaptive limiter queue sheds a less critical waiter when full") {
  keel::ManualClock clock;
  auto l = Make(clock, 1, Queued({.max_waiting = 1}));
  auto held = l->TryAcquire();
  std::optional<absl::StatusOr<AdaptiveLimiter::Permit>> sheddable;
  std::thread s(
      [&] { sheddable.emplace(l->Acquire(keel::Deadline::Infinite(), Criticality::kSheddable)); });
  clock.AwaitSleepers(1);
  auto full = l->Acquire(keel::Deadline::Infinite(), Criticality::kSheddable);
  CHECK(full.status().message() == "adaptive limiter \"db\": queue full (1 waiting)");
  std::optional<absl::StatusOr<AdaptiveLimiter::Permit>> critical;
  std::thread c([&] { critical.emplace(l->Acquire(keel::Deadline::Infinite())); });
  s.join();  // displaced
  REQUIRE_FALSE(sheddable->ok());
  CHECK(Contains(sheddable->status(), "shed from the queue for a more critical call"));
  CHECK(keel::RetryAfter(sheddable->status()).has_value());
  held->OnSuccess();
  c.join();
  CHECK(critical->ok());
  CHECK(l->Stats().rejected_shed_total == 1);
  CHECK(l->Stats().rejected_queue_full_total == 1);
}

TEST_CASE("adaptive limiter queue grants waiters when the limit grows") {
  keel::ManualClock clock;
  int next = 3;
  auto l = Make(clock, 1, Queued(), nullptr, &next);
  auto held = l->TryAcquire();
  std::optional<absl::StatusOr<AdaptiveLimiter::Permit>> a, b;
  std::thread ta([&] { a.emplace(l->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(1);
  std::thread tb([&] { b.emplace(l->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(2);
  held->OnSuccess();  // the limit becomes 3: both waiters fit
  ta.join();
  tb.join();
  CHECK(a->ok());
  CHECK(b->ok());
  CHECK(l->in_flight() == 2);
}

TEST_CASE("adaptive limiter Shutdown fails waiters and later calls with CANCELLED") {
  keel::ManualClock clock;
  auto l = Make(clock, 1, Queued());
  auto held = l->TryAcquire();
  std::optional<absl::StatusOr<AdaptiveLimiter::Permit>> got;
  std::thread waiter([&] { got.emplace(l->Acquire(keel::Deadline::Infinite())); });
  clock.AwaitSleepers(1);
  l->Shutdown();
  waiter.join();
  CHECK(absl::IsCancelled(got->status()));
  CHECK(absl::IsCancelled(l->TryAcquire().status()));
  CHECK(absl::IsCancelled(l->Acquire(keel::Deadline::Infinite()).status()));
  held->OnSuccess();  // a held permit stays valid
  CHECK(l->in_flight() == 0);
}

}  // namespace
