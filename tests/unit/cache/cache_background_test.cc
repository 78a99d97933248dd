// keel::cache::Cache<T>: single-flight, refresh-ahead, XFetch. ManualClock, ManualExecutor and
// fixed random sources; threads only where concurrency is the behaviour under test.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <future>
#include <random>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "keel/async/executor.h"
#include "keel/cache/cache.h"
#include "keel/cache/local_tier.h"
#include "support/poll.h"
#include "unit/cache/cache_fakes.h"

using keel::Deadline;
using keel::ManualClock;
using keel::cache::Cache;
using keel::cache::LocalTier;
using namespace std::chrono_literals;

namespace {

using StringCache = Cache<std::string>;

// Drops every task it is given without running it.
class DroppingExecutor final : public keel::Executor {
 public:
  void Post(absl::AnyInvocable<void()> task) override {
    posted.fetch_add(1);
    task = nullptr;
  }
  std::atomic<int> posted{0};
};

struct Fixture {
  ManualClock clock;
  std::mt19937_64 random{11};
  keel::ManualExecutor executor;
  LocalTier<std::string>* local = nullptr;

  std::unique_ptr<StringCache> Make(StringCache::Options options) {
    if (options.executor == nullptr) options.executor = &executor;
    StringCache::Tiers tiers;
    auto l = LocalTier<std::string>::Create({.max_entries = 1000}, clock).value();
    local = l.get();
    tiers.push_back(std::move(l));
    return StringCache::Create(std::move(options), std::move(tiers), clock, nullptr, random)
        .value();
  }
};

StringCache::Loader Counting(std::atomic<int>& calls, std::string value) {
  return [&calls, value](Deadline) -> absl::StatusOr<std::string> {
    calls.fetch_add(1);
    return value;
  };
}

}  // namespace

TEST_CASE("cache single-flight: 1000 concurrent GetOrLoad of one cold key call the loader once",
          "[cache]") {
  constexpr int kCallers = 1000;
  StringCache::Tiers tiers;
  tiers.push_back(LocalTier<std::string>::Create({.max_entries = 10}).value());
  auto cache = StringCache::Create({.name = "flight"}, std::move(tiers)).value();
  std::atomic<int> calls{0};
  // The load lasts until every other caller waits for it, so all 1000 miss together.
  const StringCache::Loader loader = [&](Deadline) -> absl::StatusOr<std::string> {
    calls.fetch_add(1);
    if (!keel::test::PollUntil(
            [&] { return cache->Stats().stampede_waits_total == kCallers - 1; })) {
      return absl::DeadlineExceededError("the waiters never came");
    }
    return std::string("v");
  };
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kCallers; ++i) {
    threads.emplace_back([&] {
      absl::StatusOr<std::string> v = cache->GetOrLoad(Deadline::Infinite(), "hot", loader);
      if (v.ok() && *v == "v") ok.fetch_add(1);
    });
  }
  for (auto& t : threads) t.join();
  CHECK(calls == 1);
  CHECK(ok == kCallers);
  CHECK(cache->Stats().stampede_waits_total == kCallers - 1);
  CHECK(cache->Stats().loads_total == 1);
}

TEST_CASE("cache single-flight: a waiter whose deadline passes leaves, the load goes on",
          "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "leave"});
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> calls{0};
  const StringCache::Loader slow = [&](Deadline) -> absl::StatusOr<std::string> {
    calls.fetch_add(1);
    released.wait();
    return std::string("v");
  };
  auto leader = std::async(std::launch::async,
                           [&] { return cache->GetOrLoad(Deadline::Infinite(), "k", slow); });
  REQUIRE(keel::test::PollUntil([&] { return calls == 1; }));
  auto patient = std::async(std::launch::async,
                            [&] { return cache->GetOrLoad(Deadline::Infinite(), "k", slow); });
  auto hurried = std::async(std::launch::async, [&] {
    return cache->GetOrLoad(Deadline::After(100ms, f.clock), "k", slow);
  });
  REQUIRE(keel::test::PollUntil([&] { return cache->Stats().stampede_waits_total == 2; }));
  f.clock.AwaitSleepers(1);  // the hurried caller waits on the manual clock
  f.clock.Advance(100ms);
  absl::StatusOr<std::string> gave_up = hurried.get();
  CHECK(absl::IsDeadlineExceeded(gave_up.status()));
  CHECK(gave_up.status().message() ==
        "cache \"leave\": deadline passed waiting for another caller's load of the key");
  release.set_value();
  CHECK(leader.get().value() == "v");
  CHECK(patient.get().value() == "v");
  CHECK(calls == 1);
}

TEST_CASE("cache single-flight: when the leader runs out of time a waiter with time left loads",
          "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "relay"});
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> calls{0};
  const StringCache::Loader loader = [&](Deadline) -> absl::StatusOr<std::string> {
    if (calls.fetch_add(1) == 0) {
      released.wait();
      return absl::DeadlineExceededError("the leader's deadline");
    }
    return std::string("v");
  };
  auto leader = std::async(std::launch::async,
                           [&] { return cache->GetOrLoad(Deadline::Infinite(), "k", loader); });
  REQUIRE(keel::test::PollUntil([&] { return calls == 1; }));
  auto waiter = std::async(std::launch::async,
                           [&] { return cache->GetOrLoad(Deadline::Infinite(), "k", loader); });
  REQUIRE(keel::test::PollUntil([&] { return cache->Stats().stampede_waits_total == 1; }));
  release.set_value();
  CHECK(absl::IsDeadlineExceeded(leader.get().status()));
  CHECK(waiter.get().value() == "v");
  CHECK(calls == 2);
}

TEST_CASE("cache refresh-ahead serves the old value, then the new one, one reload at a time",
          "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "refresh", .ttl = 60s, .refresh_after = 10s});
  std::atomic<int> calls{0};
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v1")).value() == "v1");
  f.clock.Advance(10s - 1ns);
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v2")).value() == "v1");
  CHECK(f.executor.pending() == 0);  // not due yet
  f.clock.Advance(1ns);
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v2")).value() == "v1");
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v2")).value() == "v1");
  CHECK(f.executor.pending() == 1);  // single-flight: one reload for both reads
  CHECK(calls == 1);                 // nothing ran on the readers' thread
  CHECK(f.executor.RunPending() == 1);
  CHECK(calls == 2);
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v3")).value() == "v2");
  CHECK(cache->Stats().refreshes_total == 1);
  CHECK(f.executor.pending() == 0);  // the reload re-stamped the entry
}

TEST_CASE("cache refresh-ahead: a failed reload keeps the old value and later reloads still run",
          "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "refail", .ttl = 60s, .refresh_after = 10s});
  std::atomic<int> calls{0};
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v1")).ok());
  f.clock.Advance(10s);
  const StringCache::Loader failing = [](Deadline) -> absl::StatusOr<std::string> {
    return absl::UnavailableError("db down");
  };
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", failing).value() == "v1");
  f.executor.RunPending();
  CHECK(cache->Stats().refresh_failures_total == 1);
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v2")).value() == "v1");
  REQUIRE(f.executor.pending() == 1);  // the failure did not stop refreshing
  f.executor.RunPending();
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v3")).value() == "v2");
}

TEST_CASE("cache refresh-ahead: a reload slower than the refresh interval does not stall it",
          "[cache]") {
  Fixture f;
  auto cache =
      f.Make({.name = "slow", .ttl = 600s, .refresh_after = 10s, .background_timeout = 30s});
  std::atomic<int> calls{0};
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v1")).ok());
  f.clock.Advance(10s);
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v2")).value() == "v1");
  REQUIRE(f.executor.pending() == 1);
  SECTION("it finishes late: the next interval refreshes again") {
    f.clock.Advance(15s);  // the reload takes longer than refresh_after
    f.executor.RunPending();
    CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v3")).value() == "v2");
    f.clock.Advance(10s);
    CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v3")).value() == "v2");
    CHECK(f.executor.pending() == 1);
  }
  SECTION("it never finishes: after background_timeout another reload starts") {
    f.clock.Advance(29s);
    CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v3")).value() == "v1");
    CHECK(f.executor.pending() == 1);
    f.clock.Advance(1s);
    CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v3")).value() == "v1");
    CHECK(f.executor.pending() == 2);
    f.executor.RunPending();
    CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v4")).value() == "v3");
  }
}

TEST_CASE("cache refresh-ahead: ttl still removes entries nobody read", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "expire", .ttl = 60s, .refresh_after = 10s});
  std::atomic<int> calls{0};
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v1")).ok());
  f.clock.Advance(60s);
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v2")).value() == "v2");
  CHECK(calls == 2);
  CHECK(f.executor.pending() == 0);  // a foreground load, not a refresh
}

TEST_CASE("cache refresh-ahead: a reload the executor drops is counted and retried", "[cache]") {
  Fixture f;
  DroppingExecutor dropping;
  auto cache = f.Make({.name = "drop", .ttl = 60s, .refresh_after = 10s, .executor = &dropping});
  std::atomic<int> calls{0};
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v1")).ok());
  f.clock.Advance(10s);
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v2")).value() == "v1");
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v2")).value() == "v1");
  CHECK(dropping.posted == 2);
  CHECK(cache->Stats().refreshes_dropped_total == 2);
}

TEST_CASE("cache refresh-ahead runs on its own thread pool by default", "[cache]") {
  std::mt19937_64 random(3);
  ManualClock clock;
  StringCache::Tiers tiers;
  tiers.push_back(LocalTier<std::string>::Create({.max_entries = 10}, clock).value());
  auto cache = StringCache::Create({.name = "pool", .ttl = 60s, .refresh_after = 1s},
                                   std::move(tiers), clock, nullptr, random)
                   .value();
  std::atomic<int> calls{0};
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", Counting(calls, "v1")).ok());
  clock.Advance(1s);
  const std::thread::id reader = std::this_thread::get_id();
  std::atomic<bool> elsewhere{false};
  const StringCache::Loader loader = [&](Deadline) -> absl::StatusOr<std::string> {
    elsewhere = std::this_thread::get_id() != reader;
    return std::string("v2");
  };
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", loader).value() == "v1");
  REQUIRE(keel::test::PollUntil([&] { return cache->Stats().refreshes_total == 1; }));
  CHECK(elsewhere);
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", loader).value() == "v2");
}

TEST_CASE("cache XFetch's test fires at the rate exp(-gap / (delta * beta)) predicts", "[cache]") {
  std::mt19937_64 random(5);
  const auto now = ManualClock::kDefaultStart;
  using Case = std::tuple<keel::Duration, keel::Duration, double>;
  for (const auto& [gap, delta, beta] :
       {Case{1s, 1s, 1.0}, Case{2s, 1s, 1.0}, Case{1s, 1s, 2.0}, Case{500ms, 2s, 0.5}}) {
    constexpr int kDraws = 100'000;
    int fired = 0;
    for (int i = 0; i < kDraws; ++i) {
      const double u = absl::Uniform<double>(absl::IntervalOpenClosed, random, 0.0, 1.0);
      fired += keel::cache::internal::XFetchDue(now, now + gap, delta, beta, u) ? 1 : 0;
    }
    const double expected = std::exp(-std::chrono::duration<double>(gap).count() /
                                     (std::chrono::duration<double>(delta).count() * beta));
    CHECK(std::abs(static_cast<double>(fired) / kDraws - expected) < 0.01);
  }
  // Past the expiry it always fires; without a delta, only at the expiry.
  CHECK(keel::cache::internal::XFetchDue(now + 1s, now, 1s, 1.0, 1.0));
  CHECK(!keel::cache::internal::XFetchDue(now, now + 1ns, 0s, 1.0, 0.001));
}

TEST_CASE("cache XFetch recomputes before expiry at the predicted rate, in the background",
          "[cache]") {
  Fixture f;
  DroppingExecutor dropping;  // every recompute is dropped, so every read draws again
  auto cache = f.Make({.name = "xfetch", .ttl = 60s, .xfetch = true, .executor = &dropping});
  // The load takes 2 s on the cache's clock: the entry's delta.
  const StringCache::Loader loader = [&](Deadline) -> absl::StatusOr<std::string> {
    f.clock.Advance(2s);
    return std::string("v");
  };
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", loader).ok());
  auto entry = f.local->store().GetEntry("k");
  REQUIRE(entry.has_value());
  CHECK(entry->metadata.load_time == 2s);
  // Far from the expiry: P = exp(-58 / 2), never in practice.
  f.clock.Advance(2s);
  for (int i = 0; i < 1000; ++i) REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", loader).ok());
  CHECK(dropping.posted == 0);
  // 2 s before the expiry: P = exp(-2 / 2) = 0.368.
  f.clock.Set(*entry->metadata.expires - 2s);
  constexpr int kReads = 20'000;
  for (int i = 0; i < kReads; ++i) {
    REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", loader).value() == "v");
  }
  const double rate = static_cast<double>(dropping.posted.load()) / kReads;
  CHECK(std::abs(rate - std::exp(-1.0)) < 0.02);
  CHECK(cache->Stats().early_recomputes_total == static_cast<uint64_t>(dropping.posted.load()));
  CHECK(cache->Stats().loads_total == 1);  // every read was served the current value
}

TEST_CASE("cache XFetch's recompute replaces the value before it expires", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "xfetch2", .ttl = 60s, .xfetch = true});
  std::atomic<int> calls{0};
  const StringCache::Loader loader = [&](Deadline) -> absl::StatusOr<std::string> {
    f.clock.Advance(1s);
    return std::string("v") + std::to_string(calls.fetch_add(1) + 1);
  };
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", loader).value() == "v1");
  auto entry = f.local->store().GetEntry("k");
  f.clock.Set(*entry->metadata.expires - 1ns);  // P ~ 1
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", loader).value() == "v1");
  CHECK(f.executor.pending() == 1);
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", loader).value() == "v1");
  CHECK(f.executor.pending() == 1);  // single-flight
  f.executor.RunPending();
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", loader).value() == "v2");
  CHECK(cache->Stats().early_recomputes_total == 1);
}
