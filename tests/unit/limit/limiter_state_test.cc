// The State API (Apply/Peek on external per-key state) that Keyed stores instead of whole
// limiters must decide exactly as the limiter's own TryAcquire/Check, call for call.
#include <catch2/catch.hpp>
#include <cstdint>
#include <random>
#include <vector>

#include "keel/limit/fixed_window.h"
#include "keel/limit/gcra.h"
#include "keel/limit/keyed.h"
#include "keel/limit/sliding_window.h"
#include "keel/limit/token_bucket.h"

using namespace std::chrono_literals;
using keel::Duration;
using keel::limit::Decision;

namespace {

// Replays one random sequence of (time step, quantity, peek or acquire) through the limiter's
// own methods and through Apply/Peek on a separate State: no decision may differ, and the
// sequence must exercise both outcomes.
template <typename Limiter>
void ReplayAndCompare(typename Limiter::Options options, Duration max_step, int64_t max_n) {
  keel::ManualClock clock;
  Limiter own = Limiter::Create(options, clock).value();
  const Limiter params = Limiter::Create(options, clock).value();
  typename Limiter::State state;
  std::mt19937_64 rng(7);
  int differ = 0, allowed = 0, denied = 0;
  for (int i = 0; i < 20'000; ++i) {
    clock.Advance(Duration(static_cast<int64_t>(rng() % static_cast<uint64_t>(max_step.count()))));
    const int64_t n = static_cast<int64_t>(rng() % static_cast<uint64_t>(max_n + 1));
    const bool peek = rng() % 5 == 0;
    const Decision a = peek ? own.Check(n, clock.Now()).value() : own.TryAcquire(n).value();
    const Decision b =
        peek ? params.Peek(state, n, clock.Now()) : params.Apply(state, n, clock.Now());
    differ += !(a == b);
    allowed += a.allowed;
    denied += !a.allowed;
  }
  CHECK(differ == 0);
  CHECK(allowed > 1000);
  CHECK(denied > 1000);
}

}  // namespace

TEST_CASE("limiter State API decides exactly as the limiter itself") {
  SECTION("token bucket") {
    ReplayAndCompare<keel::limit::TokenBucket>({.rate = 100, .burst = 10}, 20ms, 3);
  }
  SECTION("gcra") {
    ReplayAndCompare<keel::limit::Gcra>({.count = 100, .period = 1s, .max_burst = 9}, 20ms, 3);
  }
  SECTION("fixed window, aligned") {
    ReplayAndCompare<keel::limit::FixedWindow>({.limit = 10, .window = 100ms}, 20ms, 3);
  }
  SECTION("fixed window, from the first request") {
    ReplayAndCompare<keel::limit::FixedWindow>(
        {.limit = 10,
         .window = 100ms,
         .alignment = keel::limit::FixedWindow::Alignment::kFirstRequest},
        20ms, 3);
  }
  SECTION("sliding window log") {
    ReplayAndCompare<keel::limit::SlidingWindowLog>({.limit = 10, .window = 100ms}, 20ms, 3);
  }
  SECTION("sliding window counter") {
    ReplayAndCompare<keel::limit::SlidingWindowCounter>({.limit = 10, .window = 100ms}, 20ms, 3);
  }
}

TEST_CASE("sliding window log stays exact while it compacts its expired entries") {
  // Admissions at many distinct instants, so the log keeps dropping expired entries in bulk;
  // a brute-force count over every admission decides each request independently.
  keel::ManualClock clock;
  constexpr int64_t kLimit = 50;
  constexpr Duration kWindow = 1s;
  auto log =
      keel::limit::SlidingWindowLog::Create({.limit = kLimit, .window = kWindow}, clock).value();
  std::vector<std::pair<keel::TimePoint, int64_t>> admitted;
  std::mt19937_64 rng(11);
  int mismatches = 0, admissions = 0;
  for (int i = 0; i < 20'000; ++i) {
    clock.Advance(Duration(static_cast<int64_t>(rng() % 40'000'000)));  // < 40 ms
    const int64_t n = 1 + static_cast<int64_t>(rng() % 3);
    int64_t counted = 0;
    for (const auto& [at, q] : admitted) {
      if (at + kWindow > clock.Now()) counted += q;
    }
    const bool expect = counted + n <= kLimit;
    const Decision d = log.TryAcquire(n).value();
    mismatches += d.allowed != expect;
    if (d.allowed) {
      admitted.emplace_back(clock.Now(), n);
      ++admissions;
    }
    // Keep the reference small: entries older than the window no longer count.
    while (admitted.size() > 4 * kLimit) admitted.erase(admitted.begin());
  }
  CHECK(mismatches == 0);
  CHECK(admissions > 10'000);
}

TEST_CASE("keyed entries of one-word limiters fill exactly one cache line") {
  // What keeps a lookup over many keys to one cache line (see the Keyed banner).
  using TbEntry = keel::limit::internal::KeyedEntry<keel::limit::TokenBucket::State>;
  using GcraEntry = keel::limit::internal::KeyedEntry<keel::limit::Gcra::State>;
  STATIC_REQUIRE(sizeof(TbEntry) == 64);
  STATIC_REQUIRE(alignof(TbEntry) == 64);
  STATIC_REQUIRE(sizeof(GcraEntry) == 64);
  STATIC_REQUIRE(alignof(GcraEntry) == 64);
}
