// keel/overload/gradient2_limit.h: a concurrency limit that follows the ratio of long-term to
// short-term latency.
//
// Defines `keel::overload::Gradient2Limit`, the algorithm of Netflix concurrency-limits'
// `Gradient2Limit`, with its defaults. Per sample (Netflix's `_update`, step for step):
//
//   short = rtt
//   long  = exponential average of rtt over long_window samples (a plain mean for the first 10)
//   if long / short > 2: long *= 0.95          # recovering from a long overload: decay faster
//   if in_flight < L / 2: keep L               # app-limited: do not grow
//   gradient = clamp(rtt_tolerance * long / short, 0.5, 1.0)
//   L' = L * gradient + queue_size
//   L  = clamp(L * (1 - smoothing) + L' * smoothing, min_limit, max_limit)
//
// and the limit handed out is floor(L). Defaults: initial 20, min 20, max 200, smoothing 0.2,
// queue size 4, long window 600 (warm-up 10 samples), RTT tolerance 1.5.
//
// Known behaviour of the reference, kept: the long-term average follows the short-term RTT, so
// under a steady overload the gradient returns to 1 and the limit keeps growing by about
// queue_size * smoothing per sample until the short RTT outruns the lagging average by the
// tolerance; docs/overload.md shows where that settles in the simulation.
//
// Where keel departs from the reference, and why:
// - queue_size is a number, not a function of the limit (Netflix's default is the constant 4;
//   a std::function per sample buys nothing for it).
// - Options are validated at Create (Netflix only logs when initial is outside [min, max]).
//
// Thread safety: not thread-safe (see limit_algorithm.h); an AdaptiveLimiter serialises it.
//
//   auto limit = keel::overload::Gradient2Limit::Create({.max_limit = 500}).value();
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "keel/overload/limit_algorithm.h"

namespace keel::overload {

class Gradient2Limit final : public LimitAlgorithm {
 public:
  struct Options {
    // The limit before any sample. Must be in [min_limit, max_limit]. Default: 20.
    int initial_limit = 20;
    // The limit never drops below this. Must be >= 1. Default: 20.
    int min_limit = 20;
    // The limit never exceeds this. Must be >= min_limit. Default: 200.
    int max_limit = 200;
    // Weight of a new estimate against the current limit. Must be in (0, 1]. Default: 0.2.
    double smoothing = 0.2;
    // How much the limit may grow per sample while latency stays low. Must be >= 0. Default: 4.
    int queue_size = 4;
    // Samples in the long-term RTT's exponential average (factor 2 / (n + 1)). Must be >= 1.
    // Default: 600.
    int long_window = 600;
    // How much slower than the long-term RTT the short-term one may get before the limit
    // shrinks: 1.5 accepts 50%. Must be >= 1. Default: 1.5.
    double rtt_tolerance = 1.5;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field: `gradient2_limit.min_limit must be
  // >= 1, got 0`).
  static absl::StatusOr<std::unique_ptr<Gradient2Limit>> Create(Options options);

  const char* name() const override { return "gradient2"; }
  int limit() const override { return static_cast<int>(estimated_limit_); }
  int Update(const LimitSample& sample) override;
  // no_load: the long-term RTT; sample: the last (short-term) RTT.
  RttEstimates Rtt() const override;

 private:
  // Netflix's ExpAvgMeasurement(window, warmup 10).
  struct ExpAvg {
    static constexpr int kWarmup = 10;
    int window;
    double value = 0;
    double sum = 0;
    int count = 0;
    double Add(double sample);
  };

  explicit Gradient2Limit(Options options)
      : options_(options),
        estimated_limit_(options.initial_limit),
        long_rtt_{options.long_window} {}

  const Options options_;
  double estimated_limit_;
  ExpAvg long_rtt_;
  Duration last_rtt_ = Duration::zero();
};

}  // namespace keel::overload
