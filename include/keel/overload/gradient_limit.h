// keel/overload/gradient_limit.h: Envoy's adaptive concurrency gradient controller as a limit.
//
// Defines `keel::overload::GradientLimit`, the algorithm of Envoy's adaptive concurrency filter
// (`GradientController`), with its defaults. Two alternating kinds of window:
//
// - minRTT window: the limit is pinned to min_concurrency (3) and the samples of calls started
//   inside the window are collected until there are min_rtt_request_count (50); their
//   sample_percentile (p50) becomes min_rtt, the limit returns to its value before the window, and
//   the next minRTT window starts min_rtt_interval later plus a jitter of up to
//   jitter * min_rtt_interval. The first window starts at Create. A limit set to min_concurrency
//   for 5 sample windows in a row starts a new minRTT window at once (the minRTT was probably
//   measured under load).
// - sample windows of update_interval: at each end, sample_rtt = the sample_percentile of the
//   window's samples (a window without samples changes nothing) and
//
//     gradient  = clamp(min_rtt * (1 + min_rtt_buffer) / sample_rtt, 0.5, 2.0)
//     limit'    = limit * gradient
//     limit     = clamp(floor(limit' + sqrt(limit')), min_concurrency, max_concurrency)
//
// Defaults: buffer 25%, percentile p50, min concurrency 3, max concurrency 1000, 50 requests per
// minRTT measurement, jitter 15%.
//
// Where keel departs from the reference, and why:
// - No timers: a limit algorithm has no thread. A window that ended is closed by the first sample
//   recorded after its end (that sample then belongs to the next window), and the next window is
//   measured from that moment; a minRTT window that is due starts at the first sample after it is
//   due (that sample, started before the window, is not counted in it). With traffic the
//   difference is at most one inter-arrival time; without traffic nothing would change anyway.
// - min_rtt_interval and update_interval are required in Envoy's configuration (no defaults);
//   keel defaults them to the values of Envoy's documented example configuration, 60 s and 100 ms.
// - Percentiles are exact nearest-rank percentiles of the window's samples (Envoy: circllhist's
//   approximation), over at most max_samples_per_window samples per window: beyond that, a
//   uniform reservoir sample of them (Algorithm R) with the injected generator. Latencies keep
//   nanosecond precision (Envoy truncates to microseconds).
// - The jitter comes from an injected absl::BitGenRef (Envoy: its random generator), as
//   uniform integer milliseconds in [0, ceil(interval_ms * jitter)), the reference's formula.
//
// Thread safety: not thread-safe (see limit_algorithm.h); an AdaptiveLimiter serialises it.
//
//   auto gradient = keel::overload::GradientLimit::Create({.max_concurrency = 500}, clock).value();
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/overload/limit_algorithm.h"

namespace keel::overload {

class GradientLimit final : public LimitAlgorithm {
 public:
  struct Options {
    // How often the minRTT is measured again. Must be > 0. Default: 60 s.
    Duration min_rtt_interval = std::chrono::seconds(60);
    // Samples aggregated into one minRTT measurement. Must be >= 1. Default: 50.
    int min_rtt_request_count = 50;
    // The next minRTT window starts up to this fraction of min_rtt_interval late, at random, so
    // that many instances do not measure at once. Must be in [0, 1]. Default: 0.15.
    double jitter = 0.15;
    // Added to the minRTT before the gradient is taken, as a hedge against natural variability:
    // 0.25 treats latency up to 1.25x minRTT as unloaded. Must be >= 0. Default: 0.25.
    double min_rtt_buffer = 0.25;
    // The limit while the minRTT is measured, and its floor. Must be >= 1. Default: 3.
    int min_concurrency = 3;
    // The limit never exceeds this. Must be >= min_concurrency. Default: 1000.
    int max_concurrency = 1000;
    // The percentile a window's samples are summarised by, in (0, 1]. Default: 0.5.
    double sample_percentile = 0.5;
    // Length of a sample window: how often the limit is recalculated. Must be > 0. Default:
    // 100 ms.
    Duration update_interval = std::chrono::milliseconds(100);
    // Memory bound on one window's samples (8 bytes each). Must be >= 1. Default: 1000.
    int max_samples_per_window = 1000;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field: `gradient_limit.min_concurrency must
  // be >= 1, got 0`) and starts the first minRTT window at clock.Now(). The jitter and the
  // reservoir draw from a generator the limit owns (seeded at random), or from `random`, which
  // must then outlive the limit.
  static absl::StatusOr<std::unique_ptr<GradientLimit>> Create(Options options,
                                                               Clock& clock = SteadyClock());
  static absl::StatusOr<std::unique_ptr<GradientLimit>> Create(Options options,
                                                               absl::BitGenRef random,
                                                               Clock& clock = SteadyClock());

  const char* name() const override { return "gradient"; }
  int limit() const override { return limit_; }
  int Update(const LimitSample& sample) override;
  // no_load: min_rtt (zero before the first measurement); sample: the last window's sample_rtt.
  RttEstimates Rtt() const override { return {min_rtt_, sample_rtt_}; }

  // Whether a minRTT measurement is under way (the limit is pinned to min_concurrency).
  bool in_min_rtt_window() const { return deferred_limit_ > 0; }
  // When the next minRTT window is due (meaningful outside one).
  TimePoint next_min_rtt_at() const { return next_min_rtt_at_; }

 private:
  GradientLimit(Options options, std::optional<absl::BitGen> own, absl::BitGenRef* random,
                TimePoint now);
  static absl::Status Validate(const Options& options);
  void EnterMinRttWindow(TimePoint now);
  void FinishMinRttWindow(TimePoint now);
  void CloseSampleWindow();
  void SetLimit(int limit);
  int CalculateNewLimit() const;
  void AddSample(Duration rtt);
  Duration Percentile();
  Duration Jittered(Duration interval);

  const Options options_;
  std::optional<absl::BitGen> own_random_;
  absl::BitGenRef random_;
  int limit_;
  int deferred_limit_ = 0;  // > 0: inside a minRTT window (Envoy's deferred_limit_value_)
  Duration min_rtt_ = Duration::zero();
  Duration sample_rtt_ = Duration::zero();
  std::vector<Duration> samples_;
  int64_t seen_in_window_ = 0;  // samples offered to the window (>= samples_.size())
  int consecutive_min_ = 0;
  TimePoint min_rtt_epoch_;
  TimePoint next_min_rtt_at_ = TimePoint::max();
  TimePoint next_sample_at_ = TimePoint::max();
};

}  // namespace keel::overload
