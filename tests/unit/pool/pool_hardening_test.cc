// Pool behaviour around user code and user objects it does not own: the clock after the pool is
// gone, hooks that throw, and deadlines on another clock than the pool's.
#include <atomic>
#include <catch2/catch.hpp>
#include <stdexcept>
#include <string>
#include <thread>

#include "keel/clock.h"
#include "keel/pool/pool.h"
#include "unit/pool/pool_test_support.h"

namespace keel {
namespace {

using namespace pool_test;  // NOLINT: the shared fakes

// A clock that counts every read once `gone` is set (the test's stand-in for a destroyed clock).
class WatchedClock final : public Clock {
 public:
  TimePoint Now() const override {
    if (gone.load()) reads_after_gone.fetch_add(1);
    return ManualClock::kDefaultStart;
  }
  void SleepUntil(TimePoint) override {}
  std::atomic<bool> gone{false};
  mutable std::atomic<int> reads_after_gone{0};

 protected:
  void WaitOnce(Mutex&, CondVar&, TimePoint) const override {}
};

bool Contains(const absl::Status& s, const std::string& part) {
  return std::string(s.message()).find(part) != std::string::npos;
}

TEST_CASE("pool lease returned after the pool is destroyed reads no clock and calls no hook",
          "[pool]") {
  WatchedClock clock;
  Backend b;
  std::atomic<int> resets{0};
  PoolHooks<Fake> hooks = b.Hooks();
  hooks.on_return = [&](Fake&) { resets.fetch_add(1); };
  auto pool = Pool<Fake>::Create(TestOptions(), std::move(hooks), clock).value();
  auto lease = pool->Acquire();
  REQUIRE(lease.ok());
  pool.reset();
  clock.gone = true;  // what ~Pool promised: the clock may be destroyed now
  lease->Release();
  CHECK(clock.reads_after_gone.load() == 0);
  CHECK(resets.load() == 0);
  CHECK(b.alive.load() == 0);
}

TEST_CASE("pool create hook that throws fails the acquire with INTERNAL and is counted", "[pool]") {
  ManualClock clock;
  Backend b;
  PoolHooks<Fake> hooks = b.Hooks();
  bool throw_now = true;
  auto create = hooks.create;
  hooks.create = [&, create](Deadline d) -> absl::StatusOr<std::unique_ptr<Fake>> {
    if (throw_now) throw std::runtime_error("driver exploded");
    return create(d);
  };
  auto pool = Pool<Fake>::Create(TestOptions(1), std::move(hooks), clock).value();
  auto failed = pool->Acquire(Deadline::After(1s, clock));
  CHECK(failed.status().code() == absl::StatusCode::kInternal);
  CHECK(Contains(failed.status(),
                 "pool \"test\": cannot create a connection: pool \"test\": the "
                 "create hook threw an exception: driver exploded"));
  // The slot it held is free again: the pool is not wedged.
  const PoolStats after_throw = pool->Stats();
  CHECK(after_throw.hook_exceptions_total == 1);
  CHECK(after_throw.create_failures_total == 1);
  CHECK(after_throw.connecting == 0);
  CHECK(after_throw.total == 0);
  throw_now = false;
  CHECK(pool->Acquire(Deadline::After(1s, clock)).ok());
}

TEST_CASE("pool maintenance survives a create hook that throws", "[pool]") {
  ManualClock clock;
  Backend b;
  PoolHooks<Fake> hooks = b.Hooks();
  hooks.create = [](Deadline) -> absl::StatusOr<std::unique_ptr<Fake>> { throw 42; };
  auto pool = Pool<Fake>::Create(TestOptions(2), std::move(hooks), clock).value();
  pool->RunMaintenance();
  const PoolStats s = pool->Stats();
  CHECK(s.hook_exceptions_total == 1);
  CHECK(s.create_failures_total == 1);
  CHECK(s.connecting == 0);
}

TEST_CASE("pool validate hook that throws discards the resource and hands out a new one",
          "[pool]") {
  ManualClock clock;
  Backend b;
  PoolHooks<Fake> hooks = b.Hooks();
  hooks.validate = [](Fake& f, Deadline) -> absl::Status {
    if (f.id == 0) throw std::logic_error("bad ping");
    return absl::OkStatus();
  };
  auto pool = Pool<Fake>::Create(TestOptions(1), std::move(hooks), clock).value();
  {
    auto first = pool->Acquire();
    REQUIRE(first.ok());
    CHECK((*first)->id == 0);
  }
  clock.Advance(1s);  // past validation_bypass: the next handout validates
  auto second = pool->Acquire(Deadline::After(1s, clock));
  REQUIRE(second.ok());
  CHECK((*second)->id == 1);
  const PoolStats s = pool->Stats();
  CHECK(s.hook_exceptions_total == 1);
  CHECK(s.validation_failures_total == 1);
  CHECK(b.alive.load() == 1);
}

TEST_CASE("pool is_broken hook that throws counts as broken", "[pool]") {
  ManualClock clock;
  Backend b;
  PoolHooks<Fake> hooks = b.Hooks();
  hooks.is_broken = [](const Fake& f) -> bool {
    if (f.id == 0) throw std::runtime_error("fd check failed");
    return false;
  };
  auto pool = Pool<Fake>::Create(TestOptions(1), std::move(hooks), clock).value();
  pool->Acquire()->Release();  // id 0 goes idle (a handover checks is_broken only on reuse)
  auto lease = pool->Acquire(Deadline::After(1s, clock));
  REQUIRE(lease.ok());
  CHECK((*lease)->id == 1);
  CHECK(pool->Stats().hook_exceptions_total == 1);
  CHECK(pool->Stats().validation_failures_total == 1);
}

TEST_CASE("pool on_return hook that throws closes the resource instead of reusing it", "[pool]") {
  ManualClock clock;
  Backend b;
  PoolHooks<Fake> hooks = b.Hooks();
  hooks.on_return = [](Fake&) { throw std::runtime_error("rollback failed"); };
  auto pool = Pool<Fake>::Create(TestOptions(1), std::move(hooks), clock).value();
  pool->Acquire()->Release();
  const PoolStats s = pool->Stats();
  CHECK(s.hook_exceptions_total == 1);
  CHECK(s.destroyed_total == 1);
  CHECK(s.idle == 0);
  CHECK(b.alive.load() == 0);
  auto next = pool->Acquire(Deadline::After(1s, clock));
  REQUIRE(next.ok());
  CHECK((*next)->id == 1);
}

TEST_CASE("pool waits on the deadline's own clock, not the pool's", "[pool]") {
  // The pool keeps real time (its acquire_timeout is 30 s); the caller's deadline is manual.
  ManualClock caller_clock;
  Backend b;
  auto pool = Pool<Fake>::Create(TestOptions(1), b.Hooks(), SteadyClock()).value();
  auto held = pool->Acquire();
  REQUIRE(held.ok());
  absl::Status waited;
  std::thread waiter([&] { waited = pool->Acquire(Deadline::After(5s, caller_clock)).status(); });
  caller_clock.AwaitSleepers(1);
  caller_clock.Advance(5s);
  waiter.join();
  CHECK(waited.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(pool->Stats().timeouts_total == 1);
}

TEST_CASE("pool metrics are labelled name and count hook exceptions", "[pool]") {
  ManualClock clock;
  Backend b;
  MetricsRegistry registry;
  PoolHooks<Fake> hooks = b.Hooks();
  hooks.on_return = [](Fake&) { throw 1; };
  auto pool = Pool<Fake>::Create(TestOptions(), std::move(hooks), clock, &registry).value();
  pool->Acquire()->Release();
  const std::string text = registry.RenderPrometheus();
  CHECK(text.find("keel_pool_hook_exceptions_total{name=\"test\"} 1") != std::string::npos);
  CHECK(text.find("pool=") == std::string::npos);
}

}  // namespace
}  // namespace keel
