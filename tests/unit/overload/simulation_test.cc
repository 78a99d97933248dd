// The closed-loop overload simulation of docs/overload.md: deterministic, in simulated time.
//
// A server with 50 parallel slots and a fixed 10 ms service time (capacity c = 50 in flight,
// 5000 calls/s) queues what it cannot start (FIFO, unbounded). Calls arrive as a Poisson process
// (fixed seed) at 0.5x capacity for 30 s, then ramping linearly to 3x over 60 s. The limiter under
// test runs on a ManualClock set to each event's time; every completed call is recorded as a
// success. Netflix's algorithms run as Netflix's README wires them, through a WindowedLimit, with
// 100 ms windows (Netflix's minimum, Envoy's update interval: every algorithm updates at the same
// pace); their per-call form is run too and printed for comparison. AIMD, which only
// reacts to drops, is given a 12.5 ms timeout (1.25x the unloaded RTT) so a slow call counts as
// one. The unloaded RTT is the service time, 10 ms: a call that never queues.
//
// Set KEEL_OVERLOAD_SIM_DIR to a directory to get each run's time series as CSV (the plot in
// docs/overload.md is drawn from them by docs/overload.gnuplot).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include "keel/overload/adaptive_limiter.h"
#include "keel/overload/aimd_limit.h"
#include "keel/overload/codel_queue.h"
#include "keel/overload/gradient2_limit.h"
#include "keel/overload/gradient_limit.h"
#include "keel/overload/vegas_limit.h"
#include "keel/overload/windowed_limit.h"
#include "support/sanitizers.h"

namespace {

using namespace std::chrono_literals;
using keel::Duration;
using keel::TimePoint;
using keel::overload::AdaptiveLimiter;

// The runs that are only printed for comparison (per-call updates, Gradient2 with 100 ms windows)
// are skipped in the sanitizer builds: single-threaded and deterministic, they have nothing for
// the sanitizers to find, and they would double the simulation's time there.
#if defined(KEEL_TEST_ASAN) || defined(KEEL_TEST_TSAN)
constexpr bool kComparisons = false;
#else
constexpr bool kComparisons = true;
#endif

constexpr int kSlots = 50;
constexpr Duration kService = 10ms;
constexpr double kCapacityPerSecond = kSlots / 0.010;  // 5000 calls/s

double Seconds(Duration d) { return std::chrono::duration<double>(d).count(); }
double Millis(Duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

Duration Percentile(std::vector<Duration> v, double q) {
  if (v.empty()) return Duration::zero();
  const size_t rank = std::clamp<size_t>(static_cast<size_t>(std::ceil(q * v.size())), 1, v.size());
  std::nth_element(v.begin(), v.begin() + static_cast<ptrdiff_t>(rank - 1), v.end());
  return v[rank - 1];
}

// A FIFO server with kSlots slots and a fixed service time, driven by the event loop.
struct Event {
  TimePoint at;
  int kind;  // 0 arrival, 1 service done, 2 queue timeout
  int64_t id;
  bool operator>(const Event& o) const { return at > o.at || (at == o.at && id > o.id); }
};
using EventQueue = std::priority_queue<Event, std::vector<Event>, std::greater<>>;

struct Call {
  TimePoint arrival;
  std::optional<AdaptiveLimiter::Permit> permit;
};

// Offered load (a multiple of capacity) at simulated time t: 0.5x for `warmup` (the limit
// starts from the algorithm's initial value and learns the unloaded dependency), then a linear
// ramp to 3x over `length`.
double RampLoad(Duration t, Duration warmup, Duration length) {
  if (t < warmup) return 0.5;
  return 0.5 + 2.5 * Seconds(t - warmup) / Seconds(length);
}

struct RampResult {
  // Over the overloaded part of the ramp (offered load >= 1.25x), once settled:
  int limit_min = 0, limit_max = 0;
  double limit_mean = 0;
  Duration admitted_p99{}, admitted_max{};
  double rejected_fraction = 0;  // of the calls offered in that part
  double goodput = 0;            // calls completed per second in that part
  Duration unloaded_p99{};       // p99 during the warm-up at 0.5x
  Duration ramp_p99{};           // p99 from 1.25x to the end, settled or not
};

// Runs the ramp against `limiter` (nullptr: no limiter) and prints a row per 0.25x of load.
RampResult RunRamp(const std::string& label, keel::ManualClock& clock, AdaptiveLimiter* limiter,
                   Duration warmup = 30s, Duration length = 60s,
                   std::function<TimePoint()> settled_until_at_ramp = nullptr) {
  TimePoint settled_until = TimePoint::max();
  std::mt19937_64 rng(42);
  EventQueue events;
  std::vector<Call> calls;
  std::deque<int64_t> server_queue;
  int busy = 0;
  const TimePoint t0 = clock.Now();
  const TimePoint ramp_start = t0 + warmup;
  const TimePoint end = ramp_start + length;
  auto schedule_arrival = [&](TimePoint now) {
    const double rate = RampLoad(now - t0, warmup, length) * kCapacityPerSecond;
    std::exponential_distribution<double> gap(rate);
    const auto next =
        now + std::chrono::duration_cast<Duration>(std::chrono::duration<double>(gap(rng)));
    if (next < end) events.push({next, 0, static_cast<int64_t>(calls.size())});
  };
  auto start = [&](int64_t id, TimePoint now) {
    ++busy;
    events.push({now + kService, 1, id});
  };
  calls.reserve(1'000'000);
  events.push({t0, 0, 0});
  struct Bucket {
    std::vector<Duration> latencies;
    int64_t offered = 0, rejected = 0, completed = 0;
    std::vector<int> limits;
  };
  // 0.25x-wide buckets of offered load from 0.5x to 3x.
  std::vector<Bucket> buckets(10);
  std::FILE* csv = nullptr;
  if (const char* dir = std::getenv("KEEL_OVERLOAD_SIM_DIR")) {
    std::string file = label;  // "vegas (windowed)" -> vegas__windowed_.csv
    for (char& ch : file) {
      if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
    }
    csv = std::fopen((std::string(dir) + "/" + file + ".csv").c_str(), "w");
    if (csv) std::fprintf(csv, "t_s,load,limit,p99_ms,rejected\n");
  }
  TimePoint next_tick = t0;
  std::vector<Duration> tick_latencies;
  int64_t tick_offered = 0, tick_rejected = 0;
  RampResult r;
  std::vector<Duration> settled_latencies, unloaded_latencies, ramp_latencies;
  std::vector<int> settled_limits;
  int64_t settled_offered = 0, settled_rejected = 0, settled_completed = 0;
  TimePoint settled_from = TimePoint::max();
  while (!events.empty()) {
    const Event ev = events.top();
    events.pop();
    clock.Set(ev.at);
    const double load = RampLoad(ev.at - t0, warmup, length);
    const bool ramping = ev.at >= ramp_start;
    if (ramping && settled_until_at_ramp) {
      settled_until = settled_until_at_ramp();  // evaluated once, when the ramp starts
      settled_until_at_ramp = nullptr;
    }
    Bucket& b = buckets[std::clamp<size_t>(static_cast<size_t>((load - 0.5) / 0.25), 0, 9)];
    const bool settled = ramping && load >= 1.25 && ev.at < settled_until;
    if (settled && settled_from == TimePoint::max()) settled_from = ev.at;
    while (ev.at >= next_tick) {
      if (limiter != nullptr && ramping) {
        b.limits.push_back(limiter->limit());
        if (settled) settled_limits.push_back(limiter->limit());
      }
      if (csv && next_tick > ramp_start) {
        std::fprintf(csv, "%.2f,%.3f,%d,%.3f,%.4f\n", Seconds(next_tick - ramp_start), load,
                     limiter ? limiter->limit() : 0, Millis(Percentile(tick_latencies, 0.99)),
                     tick_offered ? double(tick_rejected) / tick_offered : 0.0);
      }
      tick_latencies.clear();
      tick_offered = tick_rejected = 0;
      next_tick += 100ms;
    }
    if (ev.kind == 0) {
      calls.push_back({ev.at, std::nullopt});
      Call& call = calls.back();
      if (ramping) ++b.offered;
      ++tick_offered;
      if (settled) ++settled_offered;
      schedule_arrival(ev.at);
      if (limiter != nullptr) {
        absl::StatusOr<AdaptiveLimiter::Permit> p = limiter->TryAcquire();
        if (!p.ok()) {
          if (ramping) ++b.rejected;
          ++tick_rejected;
          if (settled) ++settled_rejected;
          continue;
        }
        call.permit.emplace(std::move(*p));
      }
      if (busy < kSlots) {
        start(ev.id, ev.at);
      } else {
        server_queue.push_back(ev.id);
      }
    } else {
      Call& call = calls[static_cast<size_t>(ev.id)];
      const Duration latency = ev.at - call.arrival;
      if (call.permit) call.permit->OnSuccess();
      --busy;
      if (ramping) {
        ++b.completed;
        b.latencies.push_back(latency);
      }
      tick_latencies.push_back(latency);
      if (!ramping) unloaded_latencies.push_back(latency);
      if (ramping && load >= 1.25) ramp_latencies.push_back(latency);
      if (settled) {
        settled_latencies.push_back(latency);
        ++settled_completed;
      }
      if (!server_queue.empty()) {
        const int64_t next = server_queue.front();
        server_queue.pop_front();
        start(next, ev.at);
      }
    }
  }
  if (csv) std::fclose(csv);
  std::printf("\n%s\n  load   limit(min..max)  p50 ms  p99 ms  max ms  rejected\n", label.c_str());
  for (size_t i = 0; i < buckets.size(); ++i) {
    const Bucket& b = buckets[i];
    const auto [mn, mx] =
        b.limits.empty() ? std::pair<int, int>(0, 0)
                         : std::pair<int, int>(*std::min_element(b.limits.begin(), b.limits.end()),
                                               *std::max_element(b.limits.begin(), b.limits.end()));
    std::printf("  %.2fx  %4d..%-4d       %6.1f  %6.1f  %6.1f  %5.1f%%\n", 0.5 + 0.25 * i + 0.125,
                mn, mx, Millis(Percentile(b.latencies, 0.5)), Millis(Percentile(b.latencies, 0.99)),
                Millis(Percentile(b.latencies, 1.0)),
                b.offered ? 100.0 * b.rejected / b.offered : 0.0);
  }
  if (!settled_limits.empty()) {
    r.limit_min = *std::min_element(settled_limits.begin(), settled_limits.end());
    r.limit_max = *std::max_element(settled_limits.begin(), settled_limits.end());
    double sum = 0;
    for (int l : settled_limits) sum += l;
    r.limit_mean = sum / settled_limits.size();
  }
  r.admitted_p99 = Percentile(settled_latencies, 0.99);
  r.ramp_p99 = Percentile(ramp_latencies, 0.99);
  r.admitted_max = Percentile(settled_latencies, 1.0);
  r.unloaded_p99 = Percentile(unloaded_latencies, 0.99);
  r.rejected_fraction = settled_offered ? double(settled_rejected) / settled_offered : 0;
  r.goodput =
      settled_completed / Seconds(std::min(end, settled_until) - std::min(settled_from, end));
  std::printf(
      "  from 1.25x: limit %d..%d (mean %.1f), admitted p99 %.1f ms (max %.1f), p99 at 0.5x "
      "%.1f ms, rejected %.1f%%, goodput %.0f/s (capacity %.0f/s)\n",
      r.limit_min, r.limit_max, r.limit_mean, Millis(r.admitted_p99), Millis(r.admitted_max),
      Millis(r.unloaded_p99), 100 * r.rejected_fraction, r.goodput, kCapacityPerSecond);
  return r;
}

std::unique_ptr<AdaptiveLimiter> Limiter(std::unique_ptr<keel::overload::LimitAlgorithm> algorithm,
                                         keel::ManualClock& clock) {
  return AdaptiveLimiter::Create({.name = "sim"}, std::move(algorithm), clock).value();
}

std::unique_ptr<AdaptiveLimiter> Windowed(std::unique_ptr<keel::overload::LimitAlgorithm> algorithm,
                                          keel::ManualClock& clock, Duration window = 100ms) {
  // Netflix's window, by default here 100 ms long (Netflix's minimum; its default is 1 s): one
  // update per 100 ms, as Envoy's controller, so every algorithm adapts at the same pace.
  return Limiter(keel::overload::WindowedLimit::Create({.min_window = window, .max_window = window},
                                                       std::move(algorithm))
                     .value(),
                 clock);
}

void CheckSettles(const RampResult& r, int max_limit = kSlots * 3 / 2) {
  // The limit settles within [c, 1.5c]; admitted p99 stays within 2x the unloaded RTT; the
  // excess is rejected (from 1.25x, at least a fifth of what is offered) while the server stays
  // busy (goodput >= 95% of capacity).
  CHECK(r.limit_min >= kSlots);
  CHECK(r.limit_max <= max_limit);
  CHECK(r.admitted_p99 <= 2 * kService);
  CHECK(r.rejected_fraction >= 0.2);
  CHECK(r.goodput >= 0.95 * kCapacityPerSecond);
}

TEST_CASE("overload simulation: without a limiter latency grows without bound") {
  keel::ManualClock clock;
  const RampResult r = RunRamp("no limiter", clock, nullptr);
  // Every call is admitted and the server queue only grows past 1x: calls end up waiting
  // seconds, and the later, the longer.
  CHECK(r.rejected_fraction == 0);
  CHECK(r.admitted_max > 100 * kService);
  CHECK(r.admitted_p99 > 50 * kService);
}

TEST_CASE("overload simulation: vegas limit settles near capacity and sheds the excess") {
  keel::ManualClock clock;
  std::mt19937_64 rng(1), comparison_rng(1);  // one each: the comparison is optional
  if (kComparisons) {
    RunRamp("vegas, per call", clock,
            Limiter(keel::overload::VegasLimit::Create({}, comparison_rng).value(), clock).get());
  }
  CheckSettles(RunRamp("vegas (windowed)", clock,
                       Windowed(keel::overload::VegasLimit::Create({}, rng).value(), clock).get()));
}

TEST_CASE("overload simulation: gradient limit (Envoy) settles near capacity") {
  keel::ManualClock clock;
  std::mt19937_64 rng(1);
  auto algorithm = keel::overload::GradientLimit::Create({}, rng, clock).value();
  keel::overload::GradientLimit* gradient = algorithm.get();
  auto limiter = Limiter(std::move(algorithm), clock);
  // Settled until the next minRTT measurement (60 s + jitter after the first): that one runs
  // under 1.9x load, pins the limit to 3 for its 50 samples and measures a minRTT inflated by
  // what is still queued at the server, after which the limit settles a little higher (printed;
  // docs/overload.md). The latency bound is checked over the whole ramp.
  const RampResult r = RunRamp("gradient (envoy)", clock, limiter.get(), 30s, 60s,
                               [gradient] { return gradient->next_min_rtt_at(); });
  CheckSettles(r);
  CHECK(r.ramp_p99 <= 2 * kService);
}

TEST_CASE("overload simulation: gradient2 limit holds latency but settles above 1.5c") {
  keel::ManualClock clock;
  if (kComparisons) {
    RunRamp("gradient2, per call", clock,
            Limiter(keel::overload::Gradient2Limit::Create({}).value(), clock).get());
  }
  if (kComparisons) {
    RunRamp("gradient2 (windowed 100ms)", clock,
            Windowed(keel::overload::Gradient2Limit::Create({}).value(), clock).get());
  }
  // Gradient2 lets the short RTT reach rtt_tolerance (1.5) x the long-term RTT before the limit
  // shrinks, and grows by queue_size per update until then: at a 10 ms long RTT it balances
  // where L / 5 ms = 15 ms / (1 - 4 / L), L = 79 (1.58c), and drifts up as the long-term
  // average follows the queueing it allows (faster with shorter windows, printed above). With
  // Netflix's default 1 s windows over this ramp: latency within 2x, the limit within 1.75c,
  // not the 1.5c the other algorithms meet (docs/overload.md).
  const RampResult r =
      RunRamp("gradient2 (windowed 1s, Netflix's default)", clock,
              Windowed(keel::overload::Gradient2Limit::Create({}).value(), clock, 1s).get());
  CheckSettles(r, kSlots * 7 / 4);
}

TEST_CASE("overload simulation: aimd limit settles near capacity when slow calls count as drops") {
  keel::ManualClock clock;
  if (kComparisons) {
    RunRamp("aimd (timeout 12.5ms), per call", clock,
            Limiter(keel::overload::AimdLimit::Create({.timeout = 12500us}).value(), clock).get());
  }
  CheckSettles(RunRamp(
      "aimd (timeout 12.5ms, windowed)", clock,
      Windowed(keel::overload::AimdLimit::Create({.timeout = 12500us}).value(), clock).get()));
}

}  // namespace
