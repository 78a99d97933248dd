// The CoDel queue in simulated time (docs/overload.md): a server with 50 slots and a fixed
// 10 ms service time takes callers from a keel::overload::CodelQueue when all slots are busy.
// Arrivals are Poisson (fixed seed). Each queued caller gives up at its queue timeout
// (TimeoutFor at arrival), as AdaptiveLimiter::Acquire and the bulkhead's queue do.
//
// Set KEEL_OVERLOAD_SIM_DIR to a directory to get each run's time series as CSV, per 250 ms of
// arrivals: the mean and longest wait of the callers served, the share that timed out in the
// queue (docs/overload-codel.png, drawn by docs/overload.gnuplot).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <queue>
#include <random>
#include <string>
#include <vector>

#include "keel/overload/codel_queue.h"

namespace {

using namespace std::chrono_literals;
using keel::Duration;
using keel::TimePoint;
using keel::overload::CodelQueue;

constexpr int kSlots = 50;
constexpr Duration kService = 10ms;

double Millis(Duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

struct Result {
  int64_t offered = 0, served = 0, timed_out = 0;
  Duration max_wait_standing{};  // of served callers that arrived while the queue was standing
  Duration max_wait{};
  bool ever_standing = false;
};

// `arrivals(t)`: the arrival times, in order.
Result Run(const std::string& label, const std::vector<TimePoint>& arrivals, TimePoint t0,
           CodelQueue::Options options = {}) {
  struct Event {
    TimePoint at;
    int kind;  // 0 arrival, 1 done, 2 queue timeout
    size_t id;
    bool operator>(const Event& o) const {
      return at != o.at ? at > o.at : (kind != o.kind ? kind < o.kind : id > o.id);
    }
  };
  std::priority_queue<Event, std::vector<Event>, std::greater<>> events;
  for (size_t i = 0; i < arrivals.size(); ++i) events.push({arrivals[i], 0, i});
  struct Caller {
    std::unique_ptr<CodelQueue::Waiter> w = std::make_unique<CodelQueue::Waiter>();
    bool standing_at_arrival = false;
    TimePoint arrived;
  };
  std::vector<Caller> callers(arrivals.size());
  CodelQueue q(options, t0);
  int busy = 0;
  Result r;
  // Per 250 ms of arrival time: callers, timed out, the waits of those served.
  constexpr Duration kWindow = 250ms;
  struct Window {
    int64_t offered = 0, timed_out = 0, served = 0;
    Duration total_wait{}, max_wait{};
  };
  std::vector<Window> windows;
  auto window = [&](size_t id) -> Window& {
    const size_t w = static_cast<size_t>((callers[id].arrived - t0) / kWindow);
    if (windows.size() <= w) windows.resize(w + 1);
    return windows[w];
  };
  auto serve = [&](size_t id, TimePoint now) {
    ++busy;
    ++r.served;
    const Duration wait = now - callers[id].arrived;
    Window& win = window(id);
    ++win.served;
    win.total_wait += wait;
    win.max_wait = std::max(win.max_wait, wait);
    r.max_wait = std::max(r.max_wait, wait);
    if (callers[id].standing_at_arrival) r.max_wait_standing = std::max(r.max_wait_standing, wait);
    events.push({now + kService, 1, id});
  };
  while (!events.empty()) {
    const Event ev = events.top();
    events.pop();
    Caller& c = callers[ev.id];
    if (ev.kind == 0) {
      ++r.offered;
      c.arrived = ev.at;
      ++window(ev.id).offered;
      if (busy < kSlots && q.empty()) {
        serve(ev.id, ev.at);
        continue;
      }
      c.standing_at_arrival = q.Standing(ev.at);
      r.ever_standing = r.ever_standing || c.standing_at_arrival;
      const Duration timeout = q.TimeoutFor(ev.at);
      c.w->grant_token = static_cast<int>(ev.id);  // the simulation's own use of the field
      if (!q.Push(*c.w, ev.at)) {
        ++r.timed_out;
        ++window(ev.id).timed_out;
        continue;
      }
      events.push({ev.at + timeout, 2, ev.id});
    } else if (ev.kind == 1) {
      --busy;
      if (CodelQueue::Waiter* next = q.Next(ev.at)) {
        q.Grant(*next, ev.at);
        serve(static_cast<size_t>(next->grant_token), ev.at);
      }
    } else if (c.w->queued) {
      q.Remove(*c.w, ev.at);
      ++r.timed_out;
      ++window(ev.id).timed_out;
    }
  }
  if (const char* dir = std::getenv("KEEL_OVERLOAD_SIM_DIR")) {
    std::string file = label;  // "codel at 1.5x" -> codel_at_1_5x.csv
    for (char& ch : file) {
      if (!std::isalnum(static_cast<unsigned char>(ch))) ch = '_';
    }
    if (std::FILE* csv = std::fopen((std::string(dir) + "/" + file + ".csv").c_str(), "w")) {
      std::fprintf(csv, "t_s,offered,timed_out_share,mean_wait_ms,max_wait_ms\n");
      for (size_t w = 0; w < windows.size(); ++w) {
        const Window& win = windows[w];
        std::fprintf(csv, "%.3f,%lld,%.4f,%.3f,%.3f\n",
                     std::chrono::duration<double>(kWindow).count() * static_cast<double>(w),
                     static_cast<long long>(win.offered),
                     win.offered ? double(win.timed_out) / double(win.offered) : 0.0,
                     win.served ? Millis(win.total_wait) / double(win.served) : 0.0,
                     Millis(win.max_wait));
      }
      std::fclose(csv);
    }
  }
  std::printf(
      "%s: offered %lld, served %lld, timed out in the queue %lld (%.1f%%), max wait %.1f ms, max "
      "wait of callers arriving at a standing queue %.1f ms\n",
      label.c_str(), static_cast<long long>(r.offered), static_cast<long long>(r.served),
      static_cast<long long>(r.timed_out), r.offered ? 100.0 * r.timed_out / r.offered : 0.0,
      Millis(r.max_wait), Millis(r.max_wait_standing));
  return r;
}

std::vector<TimePoint> Poisson(TimePoint from, Duration length, double per_second, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::exponential_distribution<double> gap(per_second);
  std::vector<TimePoint> out;
  for (TimePoint t = from;;) {
    t += std::chrono::duration_cast<Duration>(std::chrono::duration<double>(gap(rng)));
    if (t >= from + length) return out;
    out.push_back(t);
  }
}

TEST_CASE("codel simulation: under 1.5x and 2x load admitted callers wait <= target + service") {
  const TimePoint t0 = keel::ManualClock::kDefaultStart;
  for (double load : {1.5, 2.0}) {
    const Result r = Run("codel at " + std::to_string(load).substr(0, 3) + "x",
                         Poisson(t0, 5s, load * 5000, 11), t0);
    REQUIRE(r.ever_standing);
    CHECK(r.max_wait_standing <= keel::overload::CodelQueueOptions().target + kService);
    // The excess is refused rather than queued: what is served is about the capacity.
    CHECK(r.served <= static_cast<int64_t>(5 * 5000 * 1.02));
    CHECK(r.served >= static_cast<int64_t>(5 * 5000 * 0.95));
  }
}

TEST_CASE("codel simulation: plain FIFO with the interval timeout makes every caller wait it") {
  // The contrast: the same 1.5x load without the controlled-delay switch (target = interval)
  // and without LIFO keeps the queue full and every served caller waits about the whole 100 ms.
  const TimePoint t0 = keel::ManualClock::kDefaultStart;
  const Result r = Run("fifo at 1.5x, timeout 100ms", Poisson(t0, 5s, 1.5 * 5000, 11), t0,
                       {.target = 100ms, .interval = 100ms, .adaptive_lifo = false});
  CHECK(r.max_wait_standing > 90ms);
}

TEST_CASE("codel simulation: a short burst after idle is absorbed without drops") {
  const TimePoint t0 = keel::ManualClock::kDefaultStart;
  // Idle for a second, then 200 callers at once (4x the slots), then idle again.
  std::vector<TimePoint> burst(200, t0 + 1s);
  const Result r = Run("burst of 200 after idle", burst, t0);
  CHECK(r.timed_out == 0);
  CHECK(r.served == 200);
  CHECK_FALSE(r.ever_standing);
  CHECK(r.max_wait == 30ms);  // the last 50 start after three service times
}

}  // namespace
