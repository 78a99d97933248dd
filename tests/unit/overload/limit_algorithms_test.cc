#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <random>
#include <vector>

#include "keel/overload/aimd_limit.h"
#include "keel/overload/gradient2_limit.h"
#include "keel/overload/gradient_limit.h"
#include "keel/overload/vegas_limit.h"
#include "keel/overload/windowed_limit.h"
#include "unit/overload/fake_limit.h"
#include "unit/overload/fixed_random.h"

namespace {

using namespace std::chrono_literals;
using keel::Duration;
using keel::TimePoint;
using keel::overload::LimitSample;

LimitSample Sample(Duration rtt, int in_flight, bool dropped = false,
                   TimePoint start = keel::ManualClock::kDefaultStart) {
  LimitSample s;
  s.start = start;
  s.now = start + rtt;
  s.rtt = rtt;
  s.in_flight = in_flight;
  s.dropped = dropped;
  return s;
}

TEST_CASE("vegas limit defaults are Netflix's") {
  const keel::overload::VegasLimit::Options o;
  CHECK(o.initial_limit == 20);
  CHECK(o.max_limit == 1000);
  CHECK(o.smoothing == 1.0);
  CHECK(o.probe_multiplier == 30);
}

TEST_CASE("vegas limit log10 root is max(1, floor(log10))") {
  using keel::overload::internal::Log10Root;
  CHECK(Log10Root(0) == 1);
  CHECK(Log10Root(9) == 1);
  CHECK(Log10Root(99) == 1);
  CHECK(Log10Root(100) == 2);
  CHECK(Log10Root(999) == 2);
  CHECK(Log10Root(1000) == 3);
}

TEST_CASE("vegas limit follows its update rule on a hand-worked sequence") {
  keel_test::ZeroGen zero;  // probe jitter 0.5: first probe after 0.5 * 30 * L samples
  auto vegas = keel::overload::VegasLimit::Create({}, zero).value();
  CHECK(vegas->probe_jitter() == 0.5);
  CHECK(vegas->limit() == 20);
  // 1: no no-load RTT yet: it becomes 10ms, the limit stays.
  CHECK(vegas->Update(Sample(10ms, 20)) == 20);
  CHECK(vegas->Rtt().no_load == 10ms);
  // 2: queue = ceil(20 * (1 - 10/10)) = 0 <= threshold log10(20) = 1: L + beta (6 * 1) = 26.
  CHECK(vegas->Update(Sample(10ms, 10)) == 26);
  // 3: in_flight 5 * 2 < 26: app-limited, no change.
  CHECK(vegas->Update(Sample(10ms, 5)) == 26);
  // 4: queue = ceil(26 * (1 - 10/20)) = 13 > beta 6: L - log10(26) = 25.
  CHECK(vegas->Update(Sample(20ms, 26)) == 25);
  // 5: queue = ceil(25 * (1 - 10/12)) = 5, between alpha 3 and beta 6: no change.
  CHECK(vegas->Update(Sample(12ms, 25)) == 25);
  // 6: queue = ceil(25 * (1 - 10/10.5)) = 2 < alpha 3: L + log10(25) = 26.
  CHECK(vegas->Update(Sample(10500us, 25)) == 26);
  // 7: a drop decreases even when app-limited: 26 - 1.
  CHECK(vegas->Update(Sample(10ms, 1, /*dropped=*/true)) == 25);
  // 8: a faster RTT becomes the no-load RTT; the limit stays.
  CHECK(vegas->Update(Sample(5ms, 25)) == 25);
  CHECK(vegas->Rtt().no_load == 5ms);
  CHECK(vegas->Rtt().sample == 5ms);
}

TEST_CASE("vegas limit grows by 6 * log10(L) above 100 and clamps at max_limit") {
  keel_test::ZeroGen zero;
  auto big = keel::overload::VegasLimit::Create({.initial_limit = 100}, zero).value();
  big->Update(Sample(10ms, 100));
  CHECK(big->Update(Sample(10ms, 100)) == 112);  // log10(100) = 2: 100 + 12
  auto capped =
      keel::overload::VegasLimit::Create({.initial_limit = 20, .max_limit = 22}, zero).value();
  capped->Update(Sample(10ms, 20));
  CHECK(capped->Update(Sample(10ms, 20)) == 22);
}

TEST_CASE("vegas limit smoothing moves part of the way to the new estimate") {
  keel_test::ZeroGen zero;
  auto vegas = keel::overload::VegasLimit::Create({.smoothing = 0.5}, zero).value();
  vegas->Update(Sample(10ms, 20));
  CHECK(vegas->Update(Sample(10ms, 20)) == 23);  // 0.5 * 20 + 0.5 * 26
}

TEST_CASE("vegas limit probes: after jitter * multiplier * L samples the RTT becomes no-load") {
  keel_test::ZeroGen zero;  // jitter 0.5: probe when 0.5 * 2 * 2 = 2 <= probe_count
  auto vegas =
      keel::overload::VegasLimit::Create({.initial_limit = 2, .probe_multiplier = 2}, zero).value();
  CHECK(vegas->Update(Sample(10ms, 2)) == 2);  // count 1: sets no-load 10ms
  CHECK(vegas->Update(Sample(30ms, 2)) == 2);  // count 2: probe, no-load := 30ms
  CHECK(vegas->Rtt().no_load == 30ms);
  CHECK(vegas->probe_count() == 0);
  // With no-load 30ms the 30ms sample shows no queue: 2 + 6. (Had the probe not refreshed it,
  // queue = ceil(2 * (1 - 10/30)) = 2 < alpha would give 3.)
  CHECK(vegas->Update(Sample(30ms, 2)) == 8);
}

TEST_CASE("vegas limit validates its options") {
  CHECK(keel::overload::VegasLimit::Create({.max_limit = 0}).status().message() ==
        "vegas_limit.max_limit must be >= 1, got 0");
  CHECK(keel::overload::VegasLimit::Create({.initial_limit = 30, .max_limit = 20})
            .status()
            .message() == "vegas_limit.initial_limit must be <= max_limit, got 30");
  CHECK(!keel::overload::VegasLimit::Create({.smoothing = 0}).ok());
  CHECK(!keel::overload::VegasLimit::Create({.probe_multiplier = 0}).ok());
}

TEST_CASE("gradient2 limit defaults are Netflix's") {
  const keel::overload::Gradient2Limit::Options o;
  CHECK(o.initial_limit == 20);
  CHECK(o.min_limit == 20);
  CHECK(o.max_limit == 200);
  CHECK(o.smoothing == 0.2);
  CHECK(o.queue_size == 4);
  CHECK(o.long_window == 600);
  CHECK(o.rtt_tolerance == 1.5);
}

TEST_CASE("gradient2 limit follows its update rule on a hand-worked sequence") {
  auto g = keel::overload::Gradient2Limit::Create({}).value();
  // 1: long = 10 (warm-up mean), gradient min(1, 1.5 * 10/10) = 1: 20 + 4 = 24, smoothed
  //    0.8 * 20 + 0.2 * 24 = 20.8.
  CHECK(g->Update(Sample(10ms, 20)) == 20);
  // 2: 0.8 * 20.8 + 0.2 * 24.8 = 21.6.
  CHECK(g->Update(Sample(10ms, 20)) == 21);
  // 3: long = mean(10, 10, 30) = 16.67, gradient 1.5 * 16.67 / 30 = 0.8333:
  //    21.6 * 0.8333 + 4 = 22, smoothed 0.8 * 21.6 + 0.2 * 22 = 21.68.
  CHECK(g->Update(Sample(30ms, 21)) == 21);
  CHECK(g->Rtt().no_load.count() == Approx(16'666'666.7).epsilon(1e-6));
  // 4: long = mean(10, 10, 30, 2) = 13, long / short = 6.5 > 2: long decays to 12.35; the
  //    gradient uses 13: min(1, 1.5 * 13 / 2) = 1: 0.8 * 21.68 + 0.2 * 25.68 = 22.48.
  CHECK(g->Update(Sample(2ms, 21)) == 22);
  CHECK(g->Rtt().no_load.count() == Approx(12'350'000).epsilon(1e-9));
  CHECK(g->Rtt().sample == 2ms);
  // 5: app-limited (5 < 22.48 / 2): the limit stays, the long RTT still learns. Still in the
  //    10-sample warm-up, the average is the plain mean of all five (the decay above only
  //    changed the current value, as in Netflix's ExpAvgMeasurement): 62 / 5 = 12.4.
  CHECK(g->Update(Sample(10ms, 5)) == 22);
  CHECK(g->Rtt().no_load.count() == Approx(12.4e6).epsilon(1e-7));
}

TEST_CASE("gradient2 limit clamps the gradient at 0.5 and the limit at min_limit") {
  auto g = keel::overload::Gradient2Limit::Create({.initial_limit = 40, .min_limit = 30}).value();
  // Ten app-limited 1ms samples: long RTT 1ms, limit unchanged.
  for (int i = 0; i < 10; ++i) CHECK(g->Update(Sample(1ms, 1)) == 40);
  // 1000ms: gradient 1.5 * 4.3 / 1000 clamped to 0.5: 0.8 * 40 + 0.2 * (20 + 4) = 36.8.
  CHECK(g->Update(Sample(1000ms, 40)) == 36);
  // It keeps falling towards 0.9 L + 0.8, floored at min_limit.
  int limit = 0;
  for (int i = 0; i < 50; ++i) limit = g->Update(Sample(1000ms, 40));
  CHECK(limit == 30);
}

TEST_CASE("gradient2 limit's long RTT is an exponential average after 10 warm-up samples") {
  auto g = keel::overload::Gradient2Limit::Create({}).value();
  for (int i = 0; i < 10; ++i) g->Update(Sample(10ms, 1));
  CHECK(g->Rtt().no_load == 10ms);
  g->Update(Sample(610ms, 1));  // factor 2 / 601: 10 + 600 * 2/601
  CHECK(g->Rtt().no_load.count() == Approx(10e6 + 600e6 * 2.0 / 601).epsilon(1e-7));
}

TEST_CASE("gradient2 limit validates its options") {
  CHECK(keel::overload::Gradient2Limit::Create({.min_limit = 0}).status().message() ==
        "gradient2_limit.min_limit must be >= 1, got 0");
  CHECK(!keel::overload::Gradient2Limit::Create({.initial_limit = 10}).ok());
  CHECK(!keel::overload::Gradient2Limit::Create({.rtt_tolerance = 0.9}).ok());
  CHECK(!keel::overload::Gradient2Limit::Create({.long_window = 0}).ok());
}

TEST_CASE("aimd limit defaults are Netflix's") {
  const keel::overload::AimdLimit::Options o;
  CHECK(o.min_limit == 20);
  CHECK(o.initial_limit == 20);
  CHECK(o.max_limit == 200);
  CHECK(o.backoff_ratio == 0.9);
  CHECK(o.timeout == 5s);
}

TEST_CASE("aimd limit follows its update rule on a hand-worked sequence") {
  auto a = keel::overload::AimdLimit::Create({.initial_limit = 20, .min_limit = 1, .max_limit = 21})
               .value();
  CHECK(a->Update(Sample(10ms, 10)) == 21);                   // 10 * 2 >= 20: + 1
  CHECK(a->Update(Sample(10ms, 10)) == 21);                   // 10 * 2 < 21: unused, no growth
  CHECK(a->Update(Sample(10ms, 11)) == 21);                   // + 1 = 22, clamped at max 21
  CHECK(a->Update(Sample(10ms, 1, /*dropped=*/true)) == 18);  // floor(21 * 0.9)
  CHECK(a->Update(Sample(6s, 18)) == 16);  // slower than the 5s timeout: floor(18 * 0.9)
  auto floor = keel::overload::AimdLimit::Create({}).value();
  CHECK(floor->Update(Sample(10ms, 1, true)) == 20);  // floor(18) clamped at min 20
}

TEST_CASE("aimd limit validates its options") {
  CHECK(keel::overload::AimdLimit::Create({.backoff_ratio = 1.0}).status().message() ==
        "aimd_limit.backoff_ratio must be in [0.5, 1), got 1");
  CHECK(!keel::overload::AimdLimit::Create({.timeout = 0s}).ok());
  CHECK(!keel::overload::AimdLimit::Create({.initial_limit = 300}).ok());
}

TEST_CASE("gradient limit defaults are Envoy's") {
  const keel::overload::GradientLimit::Options o;
  CHECK(o.min_rtt_request_count == 50);
  CHECK(o.jitter == 0.15);
  CHECK(o.min_rtt_buffer == 0.25);
  CHECK(o.min_concurrency == 3);
  CHECK(o.max_concurrency == 1000);
  CHECK(o.sample_percentile == 0.5);
  CHECK(o.min_rtt_interval == 60s);
  CHECK(o.update_interval == 100ms);
}

TEST_CASE("gradient limit measures minRTT, then follows the gradient per sample window") {
  keel::ManualClock clock;
  std::mt19937_64 seeded(1);
  auto g = keel::overload::GradientLimit::Create({.min_rtt_request_count = 5, .jitter = 0}, seeded,
                                                 clock)
               .value();
  const TimePoint t0 = clock.Now();
  // Created inside a minRTT window: pinned to min_concurrency.
  CHECK(g->in_min_rtt_window());
  CHECK(g->limit() == 3);
  auto at = [&](Duration rtt, int in_flight = 3) {
    LimitSample s = Sample(rtt, in_flight, false, clock.Now());
    clock.Advance(rtt);
    s.now = clock.Now();
    return g->Update(s);
  };
  // A call started before the window is not counted in it.
  CHECK(g->Update(Sample(1ms, 1, false, t0 - 1ms)) == 3);
  for (Duration rtt : {10ms, 12ms, 8ms, 10ms}) at(rtt);
  CHECK(g->in_min_rtt_window());
  at(14ms);  // the 5th: p50 (nearest rank 3 of 8, 10, 10, 12, 14) = 10ms
  CHECK_FALSE(g->in_min_rtt_window());
  CHECK(g->Rtt().no_load == 10ms);
  CHECK(g->limit() == 3);                            // back to its value before the window
  CHECK(g->next_min_rtt_at() == clock.Now() + 60s);  // no jitter
  // Window 1 (100ms): samples at 10ms. Closed by the first sample after its end:
  // gradient 12.5 / 10 = 1.25, 3 * 1.25 = 3.75 + sqrt(3.75) = 5.69 -> 5.
  for (int i = 0; i < 9; ++i) at(10ms);
  CHECK(g->limit() == 3);
  at(25ms);  // closes window 1 (its end was 100ms after the minRTT) and is the first sample of
             // window 2
  CHECK(g->limit() == 5);
  CHECK(g->Rtt().sample == 10ms);
  // Window 2: samples at 25ms: gradient 0.5, 5 * 0.5 = 2.5 + 1.58 = 4.08 -> 4.
  for (int i = 0; i < 3; ++i) at(25ms);
  at(50ms);
  CHECK(g->limit() == 4);
  // Window 3: 50ms, gradient 0.25 clamped to 0.5: 2 + 1.41 -> 3 (the floor).
  at(50ms);
  at(50ms);
  CHECK(g->limit() == 3);
  // Five more windows at the floor in a row re-measure minRTT at once.
  for (int w = 0; w < 5; ++w) {
    at(50ms);
    at(50ms);
  }
  CHECK_FALSE(g->in_min_rtt_window());
  at(50ms);  // the first sample after the fifth: enters the minRTT window
  CHECK(g->in_min_rtt_window());
}

TEST_CASE("gradient limit re-measures minRTT after min_rtt_interval plus jitter") {
  keel::ManualClock clock;
  std::mt19937_64 seeded(7);
  auto g = keel::overload::GradientLimit::Create({.min_rtt_request_count = 2, .min_concurrency = 3},
                                                 seeded, clock)
               .value();
  for (int i = 0; i < 2; ++i) {
    LimitSample s = Sample(10ms, 3, false, clock.Now());
    clock.Advance(10ms);
    s.now = clock.Now();
    g->Update(s);
  }
  CHECK_FALSE(g->in_min_rtt_window());
  const TimePoint due = g->next_min_rtt_at();
  CHECK(due >= clock.Now() + 60s);
  CHECK(due < clock.Now() + 60s + 9s);  // jitter < ceil(60000ms * 0.15)
  // Grow the limit, then cross the due time: the limit is pinned to 3 and restored afterwards.
  for (int i = 0; i < 30; ++i) {
    clock.Advance(50ms);
    LimitSample s = Sample(10ms, 3, false, clock.Now() - 10ms);
    s.now = clock.Now();
    g->Update(s);
  }
  const int grown = g->limit();
  CHECK(grown > 3);
  clock.Set(due);
  LimitSample late = Sample(10ms, 3, false, clock.Now() - 10ms);
  late.now = clock.Now();
  CHECK(g->Update(late) == 3);
  CHECK(g->in_min_rtt_window());
  for (int i = 0; i < 2; ++i) {
    LimitSample s = Sample(10ms, 3, false, clock.Now());
    clock.Advance(10ms);
    s.now = clock.Now();
    g->Update(s);
  }
  CHECK(g->limit() == grown);
}

TEST_CASE("gradient limit keeps at most max_samples_per_window samples per window") {
  keel::ManualClock clock;
  std::mt19937_64 seeded(3);
  auto g = keel::overload::GradientLimit::Create(
               {.min_rtt_request_count = 1000, .max_samples_per_window = 10}, seeded, clock)
               .value();
  // 1000 samples into a reservoir of 10: the p50 of a uniform sample of 1..1000 ms.
  for (int i = 1; i <= 1000; ++i) {
    LimitSample s = Sample(std::chrono::milliseconds(i), 3, false, clock.Now());
    s.now = clock.Now() + s.rtt;
    g->Update(s);
  }
  CHECK_FALSE(g->in_min_rtt_window());
  CHECK(g->Rtt().no_load > 100ms);
  CHECK(g->Rtt().no_load < 900ms);
}

TEST_CASE("gradient limit validates its options") {
  CHECK(keel::overload::GradientLimit::Create({.min_concurrency = 0}).status().message() ==
        "gradient_limit.min_concurrency must be >= 1, got 0");
  CHECK(!keel::overload::GradientLimit::Create({.jitter = 1.5}).ok());
  CHECK(!keel::overload::GradientLimit::Create({.update_interval = 0s}).ok());
  CHECK(!keel::overload::GradientLimit::Create({.max_concurrency = 2}).ok());
}

}  // namespace

namespace {

TEST_CASE("windowed limit defaults are Netflix's") {
  const keel::overload::WindowedLimit::Options o;
  CHECK(o.min_window == 1s);
  CHECK(o.max_window == 1s);
  CHECK(o.window_size == 10);
  CHECK(o.min_rtt_threshold == 100us);
}

TEST_CASE("windowed limit passes one averaged sample per window to its delegate") {
  std::vector<LimitSample> seen;
  auto w =
      keel::overload::WindowedLimit::Create({}, std::make_unique<keel_test::FakeLimit>(7, &seen))
          .value();
  const TimePoint t0 = keel::ManualClock::kDefaultStart;
  // The first sample ends after next_update (0): it closes a window of one sample, too small
  // to pass on; the next window ends 1s later (2 * 10ms clamped to [1s, 1s]).
  CHECK(w->Update(Sample(10ms, 1, false, t0)) == 7);
  CHECK(seen.empty());
  // Ignored below the 100us threshold.
  w->Update(Sample(50us, 9, true, t0));
  // Ten samples in the window: 10..19ms, in flight up to 12, one dropped.
  for (int i = 0; i < 10; ++i) {
    w->Update(Sample(std::chrono::milliseconds(10 + i), 3 + i, i == 4, t0 + 100ms));
  }
  CHECK(seen.empty());  // all end before t0 + 10ms + 1s
  // The next sample ending after the window closes it (it is counted in it).
  w->Update(Sample(20ms, 2, false, t0 + 1s));
  REQUIRE(seen.size() == 1);
  CHECK(seen[0].rtt == Duration((145 + 20) * 1'000'000 / 11));  // mean of 10..19 and 20 ms
  CHECK(seen[0].in_flight == 12);
  CHECK(seen[0].dropped);
}

TEST_CASE("windowed limit validates its options with Netflix's rules") {
  CHECK(keel::overload::WindowedLimit::Create({.window_size = 5},
                                              std::make_unique<keel_test::FakeLimit>(1))
            .status()
            .message() == "windowed_limit.window_size must be >= 10, got 5");
  CHECK(!keel::overload::WindowedLimit::Create({.min_window = 50ms},
                                               std::make_unique<keel_test::FakeLimit>(1))
             .ok());
  CHECK(!keel::overload::WindowedLimit::Create({}, nullptr).ok());
}

}  // namespace
