#include "keel/pool/pool.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "keel/clock.h"
#include "keel/metrics.h"
#include "keel/sync.h"
#include "unit/pool/pool_test_support.h"

namespace keel {
namespace {

using namespace std::chrono_literals;

using namespace pool_test;  // NOLINT: the shared fakes

TEST_CASE("pool rejects bad options naming the field", "[pool]") {
  Backend b;
  auto bad = [&](PoolOptions o) { return Pool<Fake>::Create(std::move(o), b.Hooks()).status(); };
  auto s = bad({.max_size = 0});
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message() == "pool \"pool\": max_size must be >= 1, got 0");
  s = bad({.max_size = 4, .min_idle = 5});
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message() == "pool \"pool\": min_idle must be in [0, max_size = 4], got 5");
  CHECK(bad({.acquire_timeout = 0s}).message() ==
        "pool \"pool\": acquire_timeout must be > 0, got 0");
  CHECK(bad({.name = "db", .validation_bypass = -1500us}).message() ==
        "pool \"db\": validation_bypass must be >= 0, got -1.5ms");
  CHECK(bad({.max_connecting = 0}).code() == absl::StatusCode::kInvalidArgument);
  auto no_create = Pool<Fake>::Create({.name = "x"}, PoolHooks<Fake>{});
  CHECK(no_create.status().message() == "pool \"x\": hooks.create must be set");
}

TEST_CASE("pool creates on demand and reuses a returned resource", "[pool]") {
  ManualClock clock;
  Backend b;
  auto pool = MakePool(TestOptions(), b, clock);
  int first_id;
  {
    auto lease = pool->Acquire();
    REQUIRE(lease.ok());
    first_id = (*lease)->id;
    CHECK(pool->Stats().in_use == 1);
  }
  CHECK(pool->Stats().idle == 1);
  auto again = pool->Acquire();
  REQUIRE(again.ok());
  CHECK((*again)->id == first_id);
  CHECK((*again)->resets == 1);  // on_return ran once
  CHECK(pool->Stats().created_total == 1);
  CHECK(pool->Stats().acquired_total == 2);
}

TEST_CASE("pool serves waiters in FIFO order", "[pool]") {
  ManualClock clock;
  Backend b;
  auto pool = MakePool(TestOptions(1), b, clock);
  auto held = pool->Acquire();
  REQUIRE(held.ok());
  std::vector<int> order;
  Mutex order_mu;
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto lease = pool->Acquire();
      if (!lease.ok()) {
        failures.fetch_add(1);
        return;
      }
      MutexLock lock(order_mu);
      order.push_back(i);
    });
    AwaitTrue([&] { return pool->Stats().pending == i + 1; });  // queued before the next starts
  }
  held->Release();
  for (auto& t : threads) t.join();
  CHECK(failures.load() == 0);
  CHECK(order == std::vector<int>{0, 1, 2, 3});
  CHECK(pool->Stats().created_total == 1);
}

TEST_CASE("pool hands a returned resource to the waiter, not to a later TryAcquire", "[pool]") {
  ManualClock clock;
  Backend b;
  auto pool = MakePool(TestOptions(1), b, clock);
  auto held = pool->Acquire();
  REQUIRE(held.ok());
  std::atomic<bool> got{false};
  std::atomic<bool> done{false};
  std::thread waiter([&] {
    auto lease = pool->Acquire();
    got = lease.ok();
    while (!done.load()) std::this_thread::yield();  // hold it until the barger has tried
  });
  AwaitTrue([&] { return pool->Stats().pending == 1; });
  held->Release();  // assigned to the waiter here, whether or not it has woken yet
  auto barger = pool->TryAcquire();
  done = true;
  waiter.join();
  CHECK(got.load());
  CHECK(barger.status().code() == absl::StatusCode::kResourceExhausted);
}

TEST_CASE("pool acquire times out with an explanatory message", "[pool]") {
  ManualClock clock;
  Backend b;
  auto pool = MakePool(TestOptions(2), b, clock);
  b.refuse = true;
  auto refused = pool->Acquire();
  CHECK(refused.status().code() == absl::StatusCode::kUnavailable);
  CHECK(refused.status().message() ==
        "pool \"test\": cannot create a connection: connection refused");
  b.refuse = false;
  clock.Advance(3s);
  auto a = pool->Acquire();
  auto c = pool->Acquire();
  REQUIRE(a.ok());
  REQUIRE(c.ok());
  absl::Status status;
  std::thread waiter([&] { status = pool->Acquire(Deadline::After(250ms, clock)).status(); });
  clock.AwaitSleepers(1);
  clock.Advance(250ms);
  waiter.join();
  CHECK(status.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(status.message() ==
        "pool \"test\": no connection within 250ms (2/2 in use, 1 waiting, last create error "
        "3.25s ago: connection refused)");
  CHECK(pool->Stats().timeouts_total == 1);
  CHECK(pool->Stats().create_failures_total == 1);
  CHECK(pool->Stats().pending == 0);
}

TEST_CASE("pool acquire_timeout bounds an infinite deadline", "[pool]") {
  ManualClock clock;
  Backend b;
  PoolOptions o = TestOptions(1);
  o.acquire_timeout = 1s;
  auto pool = MakePool(o, b, clock);
  auto held = pool->Acquire();
  REQUIRE(held.ok());
  absl::Status status;
  std::thread waiter([&] { status = pool->Acquire(Deadline::Infinite()).status(); });
  clock.AwaitSleepers(1);
  clock.Advance(999ms);
  CHECK(pool->Stats().pending == 1);  // still waiting
  clock.Advance(1ms);
  waiter.join();
  CHECK(status.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(status.message() == "pool \"test\": no connection within 1s (1/1 in use, 1 waiting)");
}

TEST_CASE("pool validates only resources idle longer than the bypass window", "[pool]") {
  ManualClock clock;
  Backend b;
  auto pool = MakePool(TestOptions(), b, clock);
  { auto lease = pool->Acquire(); }
  clock.Advance(400ms);
  { auto lease = pool->Acquire(); }
  CHECK(b.validations.load() == 0);
  clock.Advance(600ms);
  { auto lease = pool->Acquire(); }
  CHECK(b.validations.load() == 1);
  CHECK(pool->Stats().created_total == 1);
}

TEST_CASE("pool discards a resource that fails validation and hands out a new one", "[pool]") {
  ManualClock clock;
  Backend b;
  auto pool = MakePool(TestOptions(), b, clock);
  {
    auto lease = pool->Acquire();
    (*lease)->healthy = false;  // the server dropped it while idle
  }
  clock.Advance(1s);
  auto lease = pool->Acquire();
  REQUIRE(lease.ok());
  CHECK((*lease)->id == 1);
  CHECK(pool->Stats().validation_failures_total == 1);
  CHECK(pool->Stats().destroyed_total == 1);
  CHECK(b.alive.load() == 1);
}

TEST_CASE("pool discards a resource its local check finds broken, even inside the bypass window",
          "[pool]") {
  ManualClock clock;
  Backend b;
  auto pool = MakePool(TestOptions(), b, clock);
  {
    auto lease = pool->Acquire();
    (*lease)->closed = true;  // e.g. the server closed the socket while it was leased
  }
  auto lease = pool->Acquire();
  REQUIRE(lease.ok());
  CHECK((*lease)->id == 1);
  CHECK(b.validations.load() == 0);
  CHECK(pool->Stats().validation_failures_total == 1);
  CHECK(b.alive.load() == 1);
}

TEST_CASE("pool waiter handed a broken resource keeps its place and gets a new one", "[pool]") {
  ManualClock clock;
  Backend b;
  auto pool = MakePool(TestOptions(1), b, clock);
  auto held = pool->Acquire();
  REQUIRE(held.ok());
  absl::StatusOr<int> got_id = absl::UnknownError("not run");
  std::thread waiter([&] {
    auto lease = pool->Acquire();
    got_id = lease.ok() ? absl::StatusOr<int>((*lease)->id) : lease.status();
  });
  AwaitTrue([&] { return pool->Stats().pending == 1; });
  (*held)->closed = true;
  held->Release();
  waiter.join();
  REQUIRE(got_id.ok());
  CHECK(*got_id == 1);
  CHECK(pool->Stats().validation_failures_total == 1);
  CHECK(pool->Stats().pending == 0);
}

TEST_CASE("pool closes an invalidated resource and replaces it", "[pool]") {
  ManualClock clock;
  Backend b;
  auto pool = MakePool(TestOptions(), b, clock);
  auto lease = pool->Acquire();
  REQUIRE(lease.ok());
  lease->Invalidate();
  CHECK(!*lease);
  CHECK(b.alive.load() == 0);
  auto next = pool->Acquire();
  REQUIRE(next.ok());
  CHECK((*next)->id == 1);
  CHECK((*next)->resets == 0);  // on_return is not called for a broken resource
  PoolStats s = pool->Stats();
  CHECK(s.destroyed_total == 1);
  CHECK(s.total == 1);
}

TEST_CASE("pool fails fast with UNAVAILABLE when creation fails", "[pool]") {
  ManualClock clock;
  Backend b;
  b.refuse = true;
  auto pool = MakePool(TestOptions(), b, clock);
  auto lease = pool->Acquire(Deadline::After(5s, clock));
  CHECK(lease.status().code() == absl::StatusCode::kUnavailable);
  CHECK(pool->Stats().pending == 0);
  CHECK(pool->Stats().total == 0);
}

TEST_CASE("pool retires resources in the last 2.5% of max_lifetime", "[pool]") {
  ManualClock clock;
  Backend b;
  std::mt19937_64 random(42);
  PoolOptions o = TestOptions(10);
  o.max_lifetime = 1000s;
  o.keepalive_interval = 10000s;
  o.idle_timeout = 10000s;
  auto created = Pool<Fake>::Create(o, b.Hooks(), clock, nullptr, random);
  REQUIRE(created.ok());
  auto& pool = *created;
  pool->RunMaintenance();  // fills min_idle (= max_size)
  REQUIRE(pool->Stats().idle == 10);
  clock.Advance(975s - 1ms);
  pool->RunMaintenance();
  CHECK(pool->Stats().destroyed_total == 0);
  clock.Advance(12500ms);  // half way through the jitter window
  pool->RunMaintenance();
  const uint64_t halfway = pool->Stats().destroyed_total;
  CHECK(halfway > 0);               // some retired ...
  CHECK(halfway < 10);              // ... but not all at once
  CHECK(pool->Stats().idle == 10);  // and the maintainer replaced them
  clock.Advance(12500ms);
  pool->RunMaintenance();
  CHECK(pool->Stats().destroyed_total == 10);
}

TEST_CASE("pool closes a resource past its lifetime when it is returned", "[pool]") {
  ManualClock clock;
  Backend b;
  PoolOptions o = TestOptions();
  o.max_lifetime = 60s;
  auto pool = MakePool(o, b, clock);
  auto lease = pool->Acquire();
  REQUIRE(lease.ok());
  clock.Advance(60s);
  lease->Release();
  CHECK(b.alive.load() == 0);
  CHECK(pool->Stats().idle == 0);
}

TEST_CASE("pool closes idle resources above min_idle after idle_timeout", "[pool]") {
  ManualClock clock;
  Backend b;
  PoolOptions o = TestOptions(3);
  o.min_idle = 1;
  o.idle_timeout = 10min;
  o.keepalive_interval = 1h;
  auto pool = MakePool(o, b, clock);
  {
    auto l1 = pool->Acquire();
    auto l2 = pool->Acquire();
    auto l3 = pool->Acquire();
  }
  clock.Advance(10min - 1s);
  pool->RunMaintenance();
  CHECK(pool->Stats().idle == 3);
  clock.Advance(1s);
  pool->RunMaintenance();
  CHECK(pool->Stats().idle == 1);
  CHECK(b.alive.load() == 1);
}

TEST_CASE("pool maintenance fills min_idle", "[pool]") {
  ManualClock clock;
  Backend b;
  PoolOptions o = TestOptions(4);
  auto pool = MakePool(o, b, clock);
  pool->RunMaintenance();
  CHECK(pool->Stats().idle == 4);
  CHECK(b.creates.load() == 4);
}

TEST_CASE("pool maintenance stops filling at the first creation failure", "[pool]") {
  ManualClock clock;
  Backend b;
  b.refuse = true;
  auto pool = MakePool(TestOptions(4), b, clock);
  pool->RunMaintenance();
  CHECK(b.creates.load() == 1);
  CHECK(pool->Stats().create_failures_total == 1);
}

TEST_CASE("pool keepalive validates idle resources and replaces broken ones", "[pool]") {
  ManualClock clock;
  Backend b;
  PoolOptions o = TestOptions(2);
  o.keepalive_interval = 2min;
  auto pool = MakePool(o, b, clock);
  pool->RunMaintenance();
  REQUIRE(pool->Stats().idle == 2);
  {
    auto lease = pool->Acquire();
    (*lease)->healthy = false;
  }
  clock.Advance(2min);
  pool->RunMaintenance();
  CHECK(b.validations.load() == 2);
  CHECK(pool->Stats().validation_failures_total == 1);
  CHECK(pool->Stats().idle == 2);  // refilled
  CHECK(b.creates.load() == 3);
}

TEST_CASE("pool keeps at most max_connecting creations in flight", "[pool]") {
  ManualClock clock;
  std::atomic<int> alive{0};
  std::atomic<int> in_flight{0};
  std::atomic<int> peak{0};
  Mutex gate_mu;
  CondVar gate_cv;
  bool open = false;
  PoolHooks<Fake> hooks;
  hooks.create = [&](Deadline) -> absl::StatusOr<std::unique_ptr<Fake>> {
    const int now = in_flight.fetch_add(1) + 1;
    int seen = peak.load();
    while (now > seen && !peak.compare_exchange_weak(seen, now)) {
    }
    {
      MutexLock lock(gate_mu);
      while (!open) gate_cv.Wait(gate_mu);
    }
    in_flight.fetch_sub(1);
    return std::make_unique<Fake>(0, &alive);
  };
  PoolOptions o = TestOptions(8);
  o.max_connecting = 2;
  auto pool = Pool<Fake>::Create(o, hooks, clock).value();
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 5; ++i) {
    threads.emplace_back([&] {
      if (pool->Acquire().ok()) ok.fetch_add(1);
    });
  }
  AwaitTrue([&] { return pool->Stats().pending == 5 && in_flight.load() == 2; });
  CHECK(pool->Stats().connecting == 2);
  {
    MutexLock lock(gate_mu);
    open = true;
  }
  gate_cv.SignalAll();
  for (auto& t : threads) t.join();
  CHECK(ok.load() == 5);
  CHECK(peak.load() == 2);
}

TEST_CASE("pool reports a leaked lease once with its label", "[pool]") {
  ManualClock clock;
  Backend b;
  std::vector<std::string> reports;
  PoolOptions o = TestOptions();
  o.leak_detection_threshold = 10s;
  o.on_leak = [&](std::string_view r) { reports.emplace_back(r); };
  auto pool = MakePool(o, b, clock);
  auto lease = pool->Acquire();
  REQUIRE(lease.ok());
  lease->SetLabel("GET /diaries");
  clock.Advance(9s);
  pool->RunMaintenance();
  CHECK(reports.empty());
  clock.Advance(2s);
  pool->RunMaintenance();
  pool->RunMaintenance();
  REQUIRE(reports.size() == 1);
  CHECK(reports[0] ==
        "pool \"test\": connection leased by \"GET /diaries\" has been held for 11s "
        "(leak_detection_threshold 10s); possible leak");
  CHECK(pool->Stats().leaks_detected_total == 1);
}

TEST_CASE("pool shutdown cancels waiters, closes idle resources and later returns", "[pool]") {
  ManualClock clock;
  Backend b;
  auto pool = MakePool(TestOptions(2), b, clock);
  auto a = pool->Acquire();
  auto c = pool->Acquire();
  REQUIRE(a.ok());
  REQUIRE(c.ok());
  c->Release();  // one idle
  auto c2 = pool->Acquire();
  REQUIRE(c2.ok());
  c2->Release();
  absl::Status waiter_status;
  auto held = pool->Acquire();  // both in use now
  std::thread waiter([&] { waiter_status = pool->Acquire().status(); });
  AwaitTrue([&] { return pool->Stats().pending == 1; });
  pool->Shutdown();
  waiter.join();
  CHECK(waiter_status.code() == absl::StatusCode::kCancelled);
  CHECK(pool->Acquire().status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK(b.alive.load() == 2);
  a->Release();
  held->Release();
  CHECK(b.alive.load() == 0);
  CHECK(pool->Stats().total == 0);
  pool->Shutdown();  // idempotent
}

TEST_CASE("pool lease may outlive the pool", "[pool]") {
  ManualClock clock;
  Backend b;
  auto pool = MakePool(TestOptions(), b, clock);
  auto lease = pool->Acquire();
  REQUIRE(lease.ok());
  pool.reset();
  CHECK(b.alive.load() == 1);
  CHECK((*lease)->id == 0);
  lease->Release();
  CHECK(b.alive.load() == 0);
}

TEST_CASE("pool registers gauges, counters and the acquire latency histogram", "[pool]") {
  ManualClock clock;
  Backend b;
  MetricsRegistry registry;
  auto pool = Pool<Fake>::Create(TestOptions(), b.Hooks(), clock, &registry).value();
  auto lease = pool->Acquire();
  REQUIRE(lease.ok());
  const std::string text = registry.RenderPrometheus();
  CHECK(text.find("keel_pool_in_use{name=\"test\"} 1") != std::string::npos);
  CHECK(text.find("keel_pool_created_total{name=\"test\"} 1") != std::string::npos);
  CHECK(text.find("keel_pool_acquire_seconds_count{name=\"test\"} 1") != std::string::npos);
  auto dup = Pool<Fake>::Create(TestOptions(), b.Hooks(), clock, &registry);
  CHECK(!dup.ok());
}

TEST_CASE("pool background maintainer fills the pool without being called", "[pool]") {
  ManualClock clock;
  Backend b;
  PoolOptions o = TestOptions(3);
  o.background_maintenance = true;
  auto pool = MakePool(o, b, clock);
  AwaitTrue([&] { return pool->Stats().idle == 3; });
  CHECK(pool->Stats().maintenance_runs_total >= 1);
  // An invalidated resource below min_idle wakes the maintainer at once (no time passes).
  auto lease = pool->Acquire();
  lease->Invalidate();
  AwaitTrue([&] { return pool->Stats().idle == 3; });
  CHECK(b.creates.load() == 4);
  pool->Shutdown();
}

}  // namespace
}  // namespace keel
