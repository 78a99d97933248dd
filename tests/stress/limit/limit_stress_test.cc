// Many threads against one limiter: the total admitted never exceeds the algorithm's bound, and
// with time frozen it is exactly the capacity (no token spent twice, none lost). Run under TSan
// in CI. Assertions happen on the main thread only (Catch2 v2 is not thread-safe).
#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "keel/limit/concurrency_limiter.h"
#include "keel/limit/fixed_window.h"
#include "keel/limit/gcra.h"
#include "keel/limit/keyed.h"
#include "keel/limit/keyed_concurrency_limiter.h"
#include "keel/limit/leaky_bucket.h"
#include "keel/limit/sliding_window.h"
#include "keel/limit/token_bucket.h"

using namespace std::chrono_literals;
using namespace keel::limit;

namespace {

constexpr int kThreads = 4;

// Runs `body(thread_index)` on kThreads threads started together.
void RunThreads(const std::function<void(int)>& body) {
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      body(i);
    });
  }
  go.store(true, std::memory_order_release);
  for (auto& t : threads) t.join();
}

// Hammers `try_acquire` from kThreads threads while one more thread advances `clock` by `step`
// `steps` times; returns the total admitted.
int64_t HammerWhileTimeMoves(keel::ManualClock& clock, keel::Duration step, int steps,
                             const std::function<bool()>& try_acquire) {
  std::atomic<int64_t> admitted{0};
  std::atomic<bool> done{false};
  std::thread ticker([&] {
    for (int i = 0; i < steps; ++i) {
      clock.Advance(step);
      std::this_thread::yield();
    }
    done.store(true);
  });
  RunThreads([&](int) {
    int64_t mine = 0;
    while (!done.load(std::memory_order_relaxed)) mine += try_acquire() ? 1 : 0;
    for (int i = 0; i < 100; ++i) mine += try_acquire() ? 1 : 0;
    admitted.fetch_add(mine);
  });
  ticker.join();
  return admitted.load();
}

}  // namespace

TEST_CASE("stress: token bucket admits exactly its burst with time frozen") {
  keel::ManualClock clock;
  auto bucket = TokenBucket::Create({.rate = 1, .burst = 1000}, clock).value();
  std::atomic<int64_t> admitted{0};
  RunThreads([&](int) {
    for (int i = 0; i < 5000; ++i) admitted += bucket.TryAcquire().value().allowed ? 1 : 0;
  });
  CHECK(admitted.load() == 1000);
}

TEST_CASE("stress: token bucket never admits more than burst plus the refill") {
  keel::ManualClock clock;
  auto bucket = TokenBucket::Create({.rate = 1000, .burst = 50}, clock).value();
  const int64_t admitted =
      HammerWhileTimeMoves(clock, 1ms, 2000, [&] { return bucket.TryAcquire().value().allowed; });
  CHECK(admitted <= 50 + 2000);
  CHECK(admitted >= 50);
}

TEST_CASE("stress: token bucket reservations get distinct FIFO slots across threads") {
  keel::ManualClock clock;
  auto bucket = TokenBucket::Create({.rate = 1000, .burst = 10}, clock).value();
  constexpr int kEach = 500;
  std::vector<std::vector<int64_t>> waits(kThreads);
  RunThreads([&](int t) {
    for (int i = 0; i < kEach; ++i) waits[t].push_back(bucket.Reserve().value().count());
  });
  std::vector<int64_t> all;
  for (const auto& w : waits) {
    // Each thread's own reservations are in non-decreasing order (FIFO).
    CHECK(std::is_sorted(w.begin(), w.end()));
    all.insert(all.end(), w.begin(), w.end());
  }
  std::sort(all.begin(), all.end());
  // Exactly: 10 immediate, then one per millisecond, no slot handed out twice.
  REQUIRE(all.size() == kThreads * kEach);
  bool exact = true;
  for (size_t i = 0; i < all.size(); ++i) {
    const int64_t want = i < 10 ? 0 : static_cast<int64_t>(i - 9) * 1'000'000;
    exact = exact && all[i] == want;
  }
  CHECK(exact);
}

TEST_CASE("stress: gcra admits exactly its limit with time frozen and its bound as time moves") {
  keel::ManualClock clock;
  auto gcra = Gcra::Create({.count = 1000, .period = 1s, .max_burst = 99}, clock).value();
  std::atomic<int64_t> frozen{0};
  RunThreads([&](int) {
    for (int i = 0; i < 5000; ++i) frozen += gcra.TryAcquire().value().allowed ? 1 : 0;
  });
  CHECK(frozen.load() == 100);
  clock.Advance(1h);
  const int64_t moving =
      HammerWhileTimeMoves(clock, 1ms, 2000, [&] { return gcra.TryAcquire().value().allowed; });
  CHECK(moving <= 100 + 2000);
}

TEST_CASE("stress: leaky bucket hands out exactly capacity distinct slots with time frozen") {
  keel::ManualClock clock;
  auto shaper = LeakyBucket::Create({.rate = 1000, .capacity = 200}, clock).value();
  std::vector<std::vector<int64_t>> delays(kThreads);
  RunThreads([&](int t) {
    for (int i = 0; i < 1000; ++i) {
      const auto a = shaper.Admit();
      if (a.admitted) delays[t].push_back(a.delay.count());
    }
  });
  std::vector<int64_t> all;
  for (const auto& d : delays) all.insert(all.end(), d.begin(), d.end());
  std::sort(all.begin(), all.end());
  REQUIRE(all.size() == 200);
  bool distinct_slots = true;
  for (size_t i = 0; i < all.size(); ++i) {
    distinct_slots = distinct_slots && all[i] == static_cast<int64_t>(i) * 1'000'000;
  }
  CHECK(distinct_slots);
}

TEST_CASE("stress: concurrency limiter never has more than max permits out") {
  auto limiter = ConcurrencyLimiter::Create({.max = 3}).value();
  std::atomic<int64_t> holding{0};
  std::atomic<int64_t> most{0};
  std::atomic<int64_t> granted{0};
  RunThreads([&](int) {
    for (int i = 0; i < 20000; ++i) {
      auto permit = limiter->TryAcquire();
      if (!permit) continue;
      ++granted;
      const int64_t now = ++holding;
      int64_t seen = most.load();
      while (now > seen && !most.compare_exchange_weak(seen, now)) {
      }
      --holding;
    }
  });
  CHECK(most.load() <= 3);
  CHECK(granted.load() > 0);
  CHECK(limiter->in_flight() == 0);
}

TEST_CASE("stress: window limiters admit exactly their limit with time frozen") {
  keel::ManualClock clock;
  auto fixed = FixedWindow::Create({.limit = 300, .window = 1s}, clock).value();
  auto log = SlidingWindowLog::Create({.limit = 300, .window = 1s}, clock).value();
  auto counter = SlidingWindowCounter::Create({.limit = 300, .window = 1s}, clock).value();
  std::atomic<int64_t> a{0}, b{0}, c{0};
  RunThreads([&](int) {
    for (int i = 0; i < 2000; ++i) {
      a += fixed.TryAcquire().value().allowed ? 1 : 0;
      b += log.TryAcquire().value().allowed ? 1 : 0;
      c += counter.TryAcquire().value().allowed ? 1 : 0;
    }
  });
  CHECK(a.load() == 300);
  CHECK(b.load() == 300);
  CHECK(c.load() == 300);
}

TEST_CASE("stress: keyed limiter admits exactly each key's burst across threads") {
  keel::ManualClock clock;
  auto keyed = Keyed<TokenBucket>::Create(
                   {.shards = 4}, {{.rate = 1, .burst = 25}, {.rate = 10, .burst = 40}}, clock)
                   .value();
  constexpr int kKeys = 20;
  std::vector<std::atomic<int64_t>> per_key(kKeys);
  RunThreads([&](int t) {
    for (int i = 0; i < 2000; ++i) {
      const int k = (i + t) % kKeys;
      if (keyed->TryAcquire("key-" + std::to_string(k)).value().allowed) ++per_key[k];
    }
  });
  bool exact = true;
  for (auto& n : per_key) exact = exact && n.load() == 25;
  CHECK(exact);
  CHECK(keyed->Stats().keys == kKeys);
}

TEST_CASE("stress: keyed concurrency limiter never has more than max out per key") {
  auto limiter = KeyedConcurrencyLimiter::Create({.max = 3, .shards = 2}).value();
  constexpr int kKeys = 5;
  std::vector<std::atomic<int64_t>> out(kKeys);
  std::vector<std::atomic<int64_t>> peak(kKeys);
  std::atomic<int64_t> acquired{0};
  RunThreads([&](int t) {
    for (int i = 0; i < 3000; ++i) {
      const int k = (i * 7 + t) % kKeys;
      auto permit = limiter->TryAcquire("key-" + std::to_string(k)).value();
      if (!permit) continue;
      ++acquired;
      const int64_t now_out = ++out[k];
      int64_t seen = peak[k].load();
      while (now_out > seen && !peak[k].compare_exchange_weak(seen, now_out)) {
      }
      std::this_thread::yield();  // hold the permit across a reschedule
      --out[k];
    }
  });
  bool bounded = true;
  for (auto& p : peak) bounded = bounded && p.load() <= 3;
  CHECK(bounded);
  CHECK(acquired.load() > 0);
  // Every permit was released: every key's entry is gone.
  CHECK(limiter->Stats().keys == 0);
  CHECK(limiter->Stats().in_flight == 0);
}
