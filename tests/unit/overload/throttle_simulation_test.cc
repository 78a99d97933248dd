// The adaptive throttle's simulation of docs/overload.md: deterministic, in simulated time.
//
// A backend that accepts at most 200 calls/s (10 per 50 ms slot) answers at once, accepting or
// refusing with RESOURCE_EXHAUSTED. Calls arrive as a Poisson process (fixed seed) at a constant
// multiple of that capacity for 10 minutes; the throttle (K 2, the defaults) decides each one on
// a fixed-seed random source, at the arrival's time. Printed per run: what reached the backend
// over the last 2 minutes, as a multiple of its capacity, and the share rejected locally. Under
// sustained overload the traffic reaching the backend converges to about K = 2x the capacity.
//
// Set KEEL_OVERLOAD_SIM_DIR to a directory to also get throttle.csv, the same measure over a
// denser sweep of offered loads (docs/overload-throttle.png, drawn by docs/overload.gnuplot).
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>

#include "keel/overload/adaptive_throttle.h"

namespace {

using namespace std::chrono_literals;
using keel::Criticality;
using keel::Duration;
using keel::overload::AdaptiveThrottle;

constexpr double kCapacityPerSecond = 200;
constexpr Duration kSlot = 50ms;
constexpr int kPerSlot = 10;
constexpr Duration kRun = 10min;
constexpr Duration kMeasured = 2min;  // the last two minutes

struct Traffic {
  double offered = 0;    // calls/s, as a multiple of the capacity
  double sheddable = 0;  // the share of them marked kSheddable (the rest kCritical)
};

struct Result {
  int64_t offered[2] = {0, 0};  // critical, sheddable; in the measured span
  int64_t sent[2] = {0, 0};
  int64_t accepted[2] = {0, 0};
  double Backend() const { return (sent[0] + sent[1]) / (kCapacityPerSecond * 120); }
  double Rejected(int i) const { return offered[i] ? 1.0 - double(sent[i]) / offered[i] : 0; }
  double Success(int i) const { return offered[i] ? double(accepted[i]) / offered[i] : 0; }
};

Result Simulate(Traffic traffic, uint64_t seed) {
  keel::ManualClock clock;
  std::mt19937_64 throttle_gen(seed);
  auto throttle = AdaptiveThrottle::Create({.name = "sim"}, clock, throttle_gen).value();
  std::mt19937_64 rng(seed + 1);
  std::exponential_distribution<double> gap(traffic.offered * kCapacityPerSecond);
  std::bernoulli_distribution sheddable(traffic.sheddable);
  const keel::TimePoint start = clock.Now();
  const keel::TimePoint measure_from = start + kRun - kMeasured;
  Result r;
  int64_t slot = -1;
  int used = 0;
  for (double t = gap(rng); t < std::chrono::duration<double>(kRun).count(); t += gap(rng)) {
    const keel::TimePoint now =
        start + std::chrono::duration_cast<Duration>(std::chrono::duration<double>(t));
    clock.Set(now);
    const int i = sheddable(rng) ? 1 : 0;
    const bool measured = now >= measure_from;
    if (measured) ++r.offered[i];
    auto ticket = throttle->TryAcquire(i ? Criticality::kSheddable : Criticality::kCritical, now);
    if (!ticket.ok()) continue;
    if (measured) ++r.sent[i];
    const int64_t s = (now - start) / kSlot;
    if (s != slot) {
      slot = s;
      used = 0;
    }
    if (used < kPerSlot) {
      ++used;
      if (measured) ++r.accepted[i];
      ticket->Record(absl::OkStatus());
    } else {
      ticket->Record(absl::ResourceExhaustedError("backend: over capacity"));
    }
  }
  return r;
}

// offered, reaching the backend, accepted by it (multiples of its capacity), rejected locally.
void WriteSweep(const char* dir) {
  std::FILE* csv = std::fopen((std::string(dir) + "/throttle.csv").c_str(), "w");
  if (!csv) return;
  std::fprintf(csv, "offered,backend,accepted,rejected\n");
  for (int i = 1; i <= 40; ++i) {
    const double offered = 0.25 * i;
    const Result r = Simulate({.offered = offered}, 42);
    std::fprintf(csv, "%.2f,%.4f,%.4f,%.4f\n", offered, r.Backend(),
                 r.accepted[0] / (kCapacityPerSecond * 120), r.Rejected(0));
  }
  std::fclose(csv);
}

TEST_CASE("throttle simulation: under sustained overload the backend gets about 2x capacity") {
  if (const char* dir = std::getenv("KEEL_OVERLOAD_SIM_DIR")) WriteSweep(dir);
  std::printf("\nadaptive throttle, K 2, backend capacity 200/s, last 2 of 10 min:\n");
  std::printf("%8s %18s %16s\n", "offered", "reaching backend", "rejected locally");
  for (double offered : {0.5, 1.5, 2.5, 3.0, 5.0, 10.0}) {
    const Result r = Simulate({.offered = offered}, 42);
    std::printf("%7.1fx %17.2fx %15.1f%%\n", offered, r.Backend(), 100 * r.Rejected(0));
    if (offered <= 1.5) {
      // Below K times what it accepts, nothing is throttled.
      CHECK(r.Rejected(0) == 0.0);
      CHECK(r.Backend() == Approx(offered).epsilon(0.03));
    } else {
      CHECK(r.Backend() > 1.9);
      CHECK(r.Backend() < 2.1);
    }
  }
}

TEST_CASE("throttle simulation: sheddable calls are shed before critical ones") {
  // 0.8x of critical calls and 3.2x of sheddable ones (4x in all).
  const Result r = Simulate({.offered = 4.0, .sheddable = 0.8}, 7);
  std::printf("\nadaptive throttle, 0.8x critical + 3.2x sheddable, last 2 of 10 min:\n");
  std::printf("%12s %16s %20s\n", "criticality", "rejected locally", "accepted by backend");
  std::printf("%12s %15.1f%% %19.1f%%\n", "critical", 100 * r.Rejected(0), 100 * r.Success(0));
  std::printf("%12s %15.1f%% %19.1f%%\n", "sheddable", 100 * r.Rejected(1), 100 * r.Success(1));
  std::printf("%12s %16s %19.2fx capacity\n", "backend", "", r.Backend());
  // Sheddable calls (K 1.2) keep the backend's acceptance above 1/2, where critical calls (K 2)
  // would start being shed: critical calls are not throttled at all.
  CHECK(r.Rejected(0) < 0.01);
  CHECK(r.Rejected(1) > 0.6);
  CHECK(r.Backend() < 2.0);
}

}  // namespace
