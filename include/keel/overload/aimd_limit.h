// keel/overload/aimd_limit.h: additive increase, multiplicative decrease on drops.
//
// Defines `keel::overload::AimdLimit`, the algorithm of Netflix concurrency-limits' `AIMDLimit`,
// with its defaults. Per sample (Netflix's `_update`, step for step, on the integer limit L):
//
//   if dropped or rtt > timeout: L = floor(L * backoff_ratio)
//   elif in_flight * 2 >= L:     L = L + 1          # grow only when the limit is being used
//   L = clamp(L, min_limit, max_limit)
//
// Defaults: min 20, initial 20, max 200, backoff ratio 0.9, timeout 5 s. AIMD ignores latency
// below the timeout: it finds capacity only through drops (rejections or timeouts reported by the
// dependency), so use it where the dependency sheds load itself.
//
// Where keel departs from the reference: options are validated at Create (Netflix checks the
// backoff ratio and timeout, and only logs when initial is outside [min, max]).
//
// Thread safety: not thread-safe (see limit_algorithm.h); an AdaptiveLimiter serialises it.
//
//   auto limit = keel::overload::AimdLimit::Create({.max_limit = 100}).value();
#pragma once

#include <chrono>
#include <memory>

#include "absl/status/statusor.h"
#include "keel/overload/limit_algorithm.h"

namespace keel::overload {

class AimdLimit final : public LimitAlgorithm {
 public:
  struct Options {
    // The limit before any sample. Must be in [min_limit, max_limit]. Default: 20.
    int initial_limit = 20;
    // The limit never drops below this. Must be >= 1. Default: 20.
    int min_limit = 20;
    // The limit never exceeds this. Must be >= min_limit. Default: 200.
    int max_limit = 200;
    // The factor applied on a drop. Must be in [0.5, 1). Default: 0.9.
    double backoff_ratio = 0.9;
    // A call slower than this counts as dropped. Must be > 0. Default: 5 s.
    Duration timeout = std::chrono::seconds(5);
  };

  // Validates `options` (INVALID_ARGUMENT naming the field: `aimd_limit.backoff_ratio must be in
  // [0.5, 1), got 1`).
  static absl::StatusOr<std::unique_ptr<AimdLimit>> Create(Options options);

  const char* name() const override { return "aimd"; }
  int limit() const override { return limit_; }
  int Update(const LimitSample& sample) override;
  // AIMD keeps no RTT estimate; sample: the last sample's RTT.
  RttEstimates Rtt() const override { return {Duration::zero(), last_rtt_}; }

 private:
  explicit AimdLimit(Options options) : options_(options), limit_(options.initial_limit) {}

  const Options options_;
  int limit_;
  Duration last_rtt_ = Duration::zero();
};

}  // namespace keel::overload
