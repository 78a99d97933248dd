// Every algorithm, configured for "10 per second", under the same bursty input: the behaviour
// docs/rate-limiting.md plots. Set KEEL_LIMIT_PLOT_CSV=<file> to write the per-100ms series the
// plot is drawn from (docs/rate-limiting-plot.gp).
#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "keel/limit/fixed_window.h"
#include "keel/limit/gcra.h"
#include "keel/limit/leaky_bucket.h"
#include "keel/limit/sliding_window.h"
#include "keel/limit/token_bucket.h"

using namespace std::chrono_literals;
using namespace keel::limit;

namespace {

constexpr int kBuckets = 100;  // 10 s in 100 ms buckets
constexpr int64_t kBucketNanos = 100'000'000;

// 3 requests per second in the background, plus three bursts of 40 requests within 100 ms: at
// 2.0 s, straddling the window boundary at 5.0 s, and at 7.5 s.
std::vector<int64_t> BurstyInput() {
  std::vector<int64_t> at;
  for (int64_t t = 0; t < 10'000'000'000; t += 333'333'333) at.push_back(t);
  for (const int64_t burst : {2'000'000'000LL, 4'950'000'000LL, 7'500'000'000LL}) {
    for (int i = 0; i < 40; ++i) at.push_back(burst + i * 2'500'000);
  }
  std::sort(at.begin(), at.end());
  return at;
}

enum Series { kOffered, kToken, kGcra, kFixed, kLog, kCounter, kLeaky, kSeriesCount };
const char* const kNames[] = {"offered",      "token_bucket",       "gcra",
                              "fixed_window", "sliding_window_log", "sliding_window_counter",
                              "leaky_bucket"};

}  // namespace

TEST_CASE("limiters set to 10 per second differ as documented under the same bursty input") {
  keel::ManualClock clock;
  const keel::TimePoint start = clock.Now();
  auto token = TokenBucket::Create({.rate = 10, .burst = 10}, clock).value();
  auto gcra = Gcra::Create({.count = 10, .period = 1s, .max_burst = 9}, clock).value();
  auto fixed = FixedWindow::Create({.limit = 10, .window = 1s}, clock).value();
  auto log = SlidingWindowLog::Create({.limit = 10, .window = 1s}, clock).value();
  auto counter = SlidingWindowCounter::Create({.limit = 10, .window = 1s}, clock).value();
  auto leaky = LeakyBucket::Create({.rate = 10, .capacity = 10}, clock).value();

  std::vector<std::array<int, kSeriesCount>> per_bucket(kBuckets + 20,
                                                        std::array<int, kSeriesCount>{});
  std::array<std::vector<int64_t>, kSeriesCount> admitted;
  for (const int64_t at : BurstyInput()) {
    const keel::TimePoint now = start + std::chrono::nanoseconds(at);
    const int b = static_cast<int>(at / kBucketNanos);
    const auto record = [&](Series s, bool ok, int64_t when) {
      if (!ok) return;
      per_bucket[when / kBucketNanos][s]++;
      admitted[s].push_back(when);
    };
    ++per_bucket[b][kOffered];
    record(kToken, token.TryAcquire(1, now).value().allowed, at);
    record(kGcra, gcra.TryAcquire(1, now).value().allowed, at);
    record(kFixed, fixed.TryAcquire(1, now).value().allowed, at);
    record(kLog, log.TryAcquire(1, now).value().allowed, at);
    record(kCounter, counter.TryAcquire(1, now).value().allowed, at);
    const LeakyBucket::Admission a = leaky.Admit(now);
    record(kLeaky, a.admitted, at + a.delay.count());  // plotted when it leaves the shaper
  }

  const auto max_in_window = [](const std::vector<int64_t>& v, int64_t window) {
    int64_t best = 0;
    size_t lo = 0;
    for (size_t hi = 0; hi < v.size(); ++hi) {
      while (v[hi] - v[lo] >= window) ++lo;
      best = std::max<int64_t>(best, static_cast<int64_t>(hi - lo + 1));
    }
    return best;
  };
  // The exact algorithms never let more than 10 through in any second; bucket-style ones allow
  // the burst plus what refilled, the fixed window twice the limit around its boundary.
  CHECK(max_in_window(admitted[kLog], 1'000'000'000) == 10);
  CHECK(max_in_window(admitted[kFixed], 1'000'000'000) == 20);
  CHECK(max_in_window(admitted[kToken], 1'000'000'000) <= 10 + 10);
  CHECK(admitted[kToken] == admitted[kGcra]);  // GCRA is the token bucket, by another name
  CHECK(max_in_window(admitted[kCounter], 1'000'000'000) <= 20);
  // The shaper never lets two requests out within 100 ms of each other.
  bool smooth = true;
  for (size_t i = 1; i < admitted[kLeaky].size(); ++i) {
    smooth = smooth && admitted[kLeaky][i] - admitted[kLeaky][i - 1] >= 100'000'000;
  }
  CHECK(smooth);

  if (const char* path = std::getenv("KEEL_LIMIT_PLOT_CSV")) {
    FILE* f = std::fopen(path, "w");
    REQUIRE(f != nullptr);
    std::fprintf(f, "# time_s");
    for (const char* name : kNames) std::fprintf(f, " %s", name);
    std::fprintf(f, "\n");
    for (int b = 0; b < kBuckets + 10; ++b) {
      std::fprintf(f, "%.1f", b / 10.0);
      for (int s = 0; s < kSeriesCount; ++s) std::fprintf(f, " %d", per_bucket[b][s]);
      std::fprintf(f, "\n");
    }
    std::fclose(f);
  }
}
