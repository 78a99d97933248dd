// Measures how far Cloudflare's sliding window counter strays from the exact sliding log under
// Poisson traffic (fixed seed, so the figures are reproducible and quoted in
// docs/rate-limiting.md), and checks the documented bounds.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

#include "keel/limit/sliding_window.h"

using namespace std::chrono_literals;
using keel::limit::SlidingWindowCounter;
using keel::limit::SlidingWindowLog;

namespace {

// Poisson arrivals at `per_second` for `seconds`, as nanosecond offsets. The exponential gaps
// are computed from raw mt19937_64 output (not std::exponential_distribution, whose algorithm is
// implementation-defined) so every standard library produces the same sequence.
std::vector<int64_t> PoissonArrivals(double per_second, int seconds, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> out;
  double t = 0;
  for (;;) {
    const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1)
    t += -std::log1p(-u) / per_second;
    if (t >= seconds) return out;
    out.push_back(static_cast<int64_t>(t * 1e9));
  }
}

// The most admissions within any half-open span [t, t + window).
int64_t MaxInAnyWindow(const std::vector<int64_t>& admitted, int64_t window) {
  int64_t best = 0;
  size_t lo = 0;
  for (size_t hi = 0; hi < admitted.size(); ++hi) {
    while (admitted[hi] - admitted[lo] >= window) ++lo;
    best = std::max<int64_t>(best, static_cast<int64_t>(hi - lo + 1));
  }
  return best;
}

}  // namespace

TEST_CASE(
    "sliding window counter stays within its measured bounds of the exact log under Poisson "
    "traffic") {
  // Two measures. "Shadow": each counter decision is compared with what the exact rule says about
  // the counter's own admission history (the per-decision error, without the knock-on effect of
  // earlier differences). "Independent": an exact log runs side by side on its own decisions, as
  // if a service had picked one or the other; once the two admit different requests their states
  // differ, so disagreements compound near the limit.
  constexpr int64_t kLimit = 100;
  constexpr int64_t kWindow = 1'000'000'000;
  constexpr int kSeconds = 600;
  std::printf(
      "sliding window counter vs exact log: limit %lld per 1s, %d s of Poisson traffic, "
      "seed 42\n",
      static_cast<long long>(kLimit), kSeconds);
  std::printf(
      "  offered/s  requests  wrongly-allowed  wrongly-denied  independent-differ  "
      "admitted log/counter  max-in-any-1s counter\n");
  for (const double offered : {50.0, 90.0, 100.0, 110.0, 150.0, 300.0}) {
    keel::ManualClock clock;
    const keel::TimePoint start = clock.Now();
    auto log = SlidingWindowLog::Create({.limit = kLimit, .window = 1s}, clock).value();
    auto counter = SlidingWindowCounter::Create({.limit = kLimit, .window = 1s}, clock).value();
    const std::vector<int64_t> arrivals = PoissonArrivals(offered, kSeconds, /*seed=*/42);
    int64_t independent_differ = 0;
    int64_t wrongly_allowed = 0;
    int64_t wrongly_denied = 0;
    std::vector<int64_t> admitted_log;
    std::vector<int64_t> admitted_counter;
    size_t shadow_lo = 0;  // admitted_counter[shadow_lo..] are within the last window
    for (const int64_t at : arrivals) {
      const keel::TimePoint now = start + std::chrono::nanoseconds(at);
      const bool by_log = log.TryAcquire(1, now).value().allowed;
      while (shadow_lo < admitted_counter.size() && admitted_counter[shadow_lo] + kWindow <= at) {
        ++shadow_lo;
      }
      const bool exact = static_cast<int64_t>(admitted_counter.size() - shadow_lo) + 1 <= kLimit;
      const bool by_counter = counter.TryAcquire(1, now).value().allowed;
      if (by_log) admitted_log.push_back(at);
      if (by_counter) admitted_counter.push_back(at);
      independent_differ += by_log != by_counter;
      wrongly_allowed += by_counter && !exact;
      wrongly_denied += !by_counter && exact;
    }
    const double n = static_cast<double>(arrivals.size());
    const double allowed_pct = 100.0 * static_cast<double>(wrongly_allowed) / n;
    const double denied_pct = 100.0 * static_cast<double>(wrongly_denied) / n;
    const int64_t max_counter = MaxInAnyWindow(admitted_counter, kWindow);
    std::printf("  %9.0f  %8zu  %7lld %6.2f%%  %6lld %6.2f%%  %8lld %6.2f%%  %9zu/%-9zu  %21lld\n",
                offered, arrivals.size(), static_cast<long long>(wrongly_allowed), allowed_pct,
                static_cast<long long>(wrongly_denied), denied_pct,
                static_cast<long long>(independent_differ),
                100.0 * static_cast<double>(independent_differ) / n, admitted_log.size(),
                admitted_counter.size(), static_cast<long long>(max_counter));
    // The log is exact; the counter stays within its documented 2x worst case.
    CHECK(MaxInAnyWindow(admitted_log, kWindow) <= kLimit);
    CHECK(max_counter <= 2 * kLimit);
    // Well below the limit neither limiter has anything to deny.
    if (offered <= 50) CHECK(independent_differ == 0);
    // The measured figures (docs/rate-limiting.md quotes this table): below the limit the two
    // disagree on under 5% of decisions; at any load the counter's worst 1s span stays within
    // 25% of the limit (far from the 2x adversarial bound), because Poisson arrivals are close
    // to the even spread the weighting assumes.
    if (offered < kLimit) CHECK(independent_differ < 0.05 * n);
    CHECK(max_counter <= kLimit + kLimit / 4);
    // Over the whole run the counter admits within 2% of what the exact log admits.
    CHECK(std::abs(static_cast<double>(admitted_counter.size()) -
                   static_cast<double>(admitted_log.size())) <
          0.02 * static_cast<double>(admitted_log.size()));
  }
}
