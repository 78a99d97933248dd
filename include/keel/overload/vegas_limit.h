// keel/overload/vegas_limit.h: TCP Vegas's delay-based congestion control as a concurrency limit.
//
// Defines `keel::overload::VegasLimit`, the algorithm of Netflix concurrency-limits'
// `VegasLimit`, with its defaults. Per sample (Netflix's `_update`, step for step):
//
//   probe_count += 1
//   if probe_jitter * probe_multiplier * L <= probe_count:     # refresh the no-load RTT
//       probe_jitter = uniform[0.5, 1); probe_count = 0; rtt_noload = rtt; keep L
//   elif rtt_noload unset or rtt < rtt_noload: rtt_noload = rtt; keep L
//   else:
//       queue = ceil(L * (1 - rtt_noload / rtt))               # requests queued at the dependency
//       if dropped:           L' = L - log10(L)
//       elif in_flight * 2 < L: keep L                         # app-limited: no upward drift
//       elif queue <= log10(L):      L' = L + 6 * log10(L)     # threshold: no queueing
//       elif queue <  3 * log10(L):  L' = L + log10(L)         # alpha
//       elif queue >  6 * log10(L):  L' = L - log10(L)         # beta
//       else keep L
//       L = (1 - smoothing) * L + smoothing * clamp(L', 1, max_limit)
//
// where log10(x) is max(1, floor(log10(x))) of the integer part of L (Netflix's
// Log10RootIntFunction) and the limit handed out is floor(L). Defaults: initial 20, max 1000,
// smoothing 1.0, probe multiplier 30.
//
// Where keel departs from the reference, and why:
// - The probe jitter comes from an injected absl::BitGenRef (Netflix: ThreadLocalRandom), so tests
//   can fix it.
// - alpha, beta, threshold and the increase/decrease functions are the reference's defaults,
//   not pluggable functions: keel offers the defaults only, since no known user tunes them and
//   each would be a std::function call per sample.
// - Options are validated at Create (Netflix only logs when initial > max).
//
// Thread safety: not thread-safe (see limit_algorithm.h); an AdaptiveLimiter serialises it.
//
//   auto vegas = keel::overload::VegasLimit::Create({.max_limit = 500}).value();
//   auto limiter = keel::overload::AdaptiveLimiter::Create({.name = "db"},
//                                                          std::move(vegas)).value();
#pragma once

#include <memory>
#include <optional>

#include "absl/random/bit_gen_ref.h"
#include "absl/random/random.h"
#include "absl/status/statusor.h"
#include "keel/overload/limit_algorithm.h"

namespace keel::overload {

class VegasLimit final : public LimitAlgorithm {
 public:
  struct Options {
    // The limit before any sample. Must be in [1, max_limit]. Default: 20.
    int initial_limit = 20;
    // The limit never exceeds this. Must be >= 1. Default: 1000.
    int max_limit = 1000;
    // Weight of a new estimate against the current limit: 1.0 jumps to it. Must be in (0, 1].
    // Default: 1.0.
    double smoothing = 1.0;
    // Every probe_multiplier * limit samples (times a jitter in [0.5, 1)), the next RTT becomes
    // the no-load RTT, so a dependency that got permanently slower is re-measured. Must be >= 1.
    // Default: 30.
    int probe_multiplier = 30;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field: `vegas_limit.max_limit must be >= 1,
  // got 0`). The probe jitter is drawn from a generator the limit owns (seeded at random), or from
  // `random`, which must then outlive the limit.
  static absl::StatusOr<std::unique_ptr<VegasLimit>> Create(Options options);
  static absl::StatusOr<std::unique_ptr<VegasLimit>> Create(Options options,
                                                            absl::BitGenRef random);

  const char* name() const override { return "vegas"; }
  int limit() const override { return static_cast<int>(estimated_limit_); }
  int Update(const LimitSample& sample) override;
  // no_load: rtt_noload; sample: the last sample's RTT.
  RttEstimates Rtt() const override { return {rtt_noload_, last_rtt_}; }

  // The probe's current jitter factor and sample count (for tests of the probing rule).
  double probe_jitter() const { return probe_jitter_; }
  int probe_count() const { return probe_count_; }

 private:
  VegasLimit(Options options, std::optional<absl::BitGen> own, absl::BitGenRef* random);
  static absl::Status Validate(const Options& options);
  void ResetProbeJitter();

  const Options options_;
  std::optional<absl::BitGen> own_random_;  // set when no generator was given
  absl::BitGenRef random_;
  double estimated_limit_;
  Duration rtt_noload_ = Duration::zero();
  Duration last_rtt_ = Duration::zero();
  int probe_count_ = 0;
  double probe_jitter_ = 1.0;
};

namespace internal {
// Netflix's Log10RootIntFunction with baseline 0: max(1, floor(log10(x))).
int Log10Root(int x);
}  // namespace internal

}  // namespace keel::overload
