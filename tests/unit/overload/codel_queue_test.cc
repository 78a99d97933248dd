#include "keel/overload/codel_queue.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <vector>

namespace {

using namespace std::chrono_literals;
using keel::Criticality;
using keel::overload::CodelQueue;

TEST_CASE("codel queue defaults are Facebook's: target 5ms, interval 100ms") {
  const keel::overload::CodelQueueOptions o;
  CHECK(o.target == 5ms);
  CHECK(o.interval == 100ms);
  CHECK(o.adaptive_lifo);
  CHECK(o.max_waiting == 1000);
}

TEST_CASE("codel queue gives interval until it has not been empty for interval, then target") {
  keel::ManualClock clock;
  CodelQueue q({}, clock.Now());
  CHECK(q.TimeoutFor(clock.Now()) == 100ms);  // empty
  CodelQueue::Waiter a, b, c;
  REQUIRE(q.Push(a, clock.Now()));
  clock.Advance(99ms);
  CHECK_FALSE(q.Standing(clock.Now()));
  CHECK(q.TimeoutFor(clock.Now()) == 100ms);  // non-empty for 99ms only
  clock.Advance(1ms);
  CHECK(q.Standing(clock.Now()));
  CHECK(q.TimeoutFor(clock.Now()) == 5ms);  // not empty within the last 100ms
  REQUIRE(q.Push(b, clock.Now()));
  // Draining it to empty resets the clock: the next arrival gets interval again.
  q.Grant(*q.Next(clock.Now()), clock.Now());
  q.Remove(a, clock.Now());
  q.Remove(b, clock.Now());
  CHECK(q.empty());
  clock.Advance(1ms);
  CHECK(q.TimeoutFor(clock.Now()) == 100ms);
  REQUIRE(q.Push(c, clock.Now()));
  clock.Advance(50ms);
  CHECK(q.TimeoutFor(clock.Now()) == 100ms);  // non-empty since 50ms only
  clock.Advance(50ms);
  CHECK(q.TimeoutFor(clock.Now()) == 5ms);
}

TEST_CASE("codel queue serves FIFO normally and LIFO while standing") {
  keel::ManualClock clock;
  CodelQueue q({}, clock.Now());
  std::vector<CodelQueue::Waiter> w(4);
  for (auto& x : w) REQUIRE(q.Push(x, clock.Now()));
  CHECK(q.Next(clock.Now()) == &w[0]);  // not standing: oldest first
  clock.Advance(100ms);
  CHECK(q.Next(clock.Now()) == &w[3]);  // standing: newest first
  q.Grant(w[3], clock.Now());
  CHECK(w[3].granted);
  CHECK(q.Next(clock.Now()) == &w[2]);
}

TEST_CASE("codel queue without adaptive LIFO stays FIFO under congestion") {
  keel::ManualClock clock;
  CodelQueue q({.adaptive_lifo = false}, clock.Now());
  std::vector<CodelQueue::Waiter> w(3);
  for (auto& x : w) REQUIRE(q.Push(x, clock.Now()));
  clock.Advance(1s);
  CHECK(q.Next(clock.Now()) == &w[0]);
}

TEST_CASE("codel queue serves the most critical level first") {
  keel::ManualClock clock;
  CodelQueue q({}, clock.Now());
  CodelQueue::Waiter shed(Criticality::kSheddable), crit(Criticality::kCritical),
      plus(Criticality::kCriticalPlus), shed_plus(Criticality::kSheddablePlus);
  for (auto* x : {&shed, &crit, &shed_plus, &plus}) REQUIRE(q.Push(*x, clock.Now()));
  std::vector<CodelQueue::Waiter*> order;
  while (CodelQueue::Waiter* n = q.Next(clock.Now())) {
    order.push_back(n);
    q.Grant(*n, clock.Now());
  }
  CHECK(order == std::vector<CodelQueue::Waiter*>{&plus, &crit, &shed_plus, &shed});
}

TEST_CASE("codel queue when full sheds the newest least critical waiter for a more critical one") {
  keel::ManualClock clock;
  CodelQueue q({.max_waiting = 3}, clock.Now());
  CodelQueue::Waiter s1(Criticality::kSheddable), s2(Criticality::kSheddable),
      c1(Criticality::kCritical), c2(Criticality::kCritical), c3(Criticality::kCritical),
      s3(Criticality::kSheddable);
  REQUIRE(q.Push(s1, clock.Now()));
  REQUIRE(q.Push(s2, clock.Now()));
  REQUIRE(q.Push(c1, clock.Now()));
  CHECK_FALSE(q.Push(s3, clock.Now()));  // full, and nothing below sheddable
  REQUIRE(q.Push(c2, clock.Now()));      // sheds s2, the newest sheddable
  CHECK(s2.shed);
  CHECK_FALSE(s1.shed);
  REQUIRE(q.Push(c3, clock.Now()));  // sheds s1
  CHECK(s1.shed);
  CodelQueue::Waiter c4(Criticality::kCritical);
  CHECK_FALSE(q.Push(c4, clock.Now()));  // full of critical: an equal one is refused
  CHECK(q.size() == 3);
}

TEST_CASE("codel queue wait ends at its timeout or the deadline, whichever is first") {
  keel::ManualClock clock;
  keel::Mutex mu;
  bool shut_down = false;
  CodelQueue q({}, clock.Now());
  keel::MutexLock lock(mu);
  {
    CodelQueue::Waiter w;
    REQUIRE(q.Push(w, clock.Now()));
    // An already expired deadline: over at once, counted as the deadline's.
    CHECK(q.Wait(mu, w, 5ms, keel::Deadline::After(0s, clock), clock, shut_down) ==
          CodelQueue::WaitEnd::kDeadline);
    CHECK(q.empty());
  }
  {
    CodelQueue::Waiter w;
    REQUIRE(q.Push(w, clock.Now()));
    // A zero queue timeout with a later deadline: the queue's timeout.
    CHECK(q.Wait(mu, w, 0ms, keel::Deadline::After(1s, clock), clock, shut_down) ==
          CodelQueue::WaitEnd::kQueueTimeout);
    CHECK(q.empty());
  }
  {
    CodelQueue::Waiter w;
    REQUIRE(q.Push(w, clock.Now()));
    shut_down = true;
    CHECK(q.Wait(mu, w, 5ms, keel::Deadline::Infinite(), clock, shut_down) ==
          CodelQueue::WaitEnd::kShutdown);
  }
}

TEST_CASE("codel queue options are validated") {
  const keel::internal::OptionsOf of("adaptive limiter", "db");
  CHECK(CodelQueue::Validate(of, {.target = 0ms}).message() ==
        "adaptive limiter \"db\": queue.target must be > 0, got 0");
  CHECK(!CodelQueue::Validate(of, {.target = 200ms}).ok());
  CHECK(!CodelQueue::Validate(of, {.max_waiting = 0}).ok());
  CHECK(CodelQueue::Validate(of, {}).ok());
}

}  // namespace
