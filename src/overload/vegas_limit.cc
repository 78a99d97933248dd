#include "keel/overload/vegas_limit.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "absl/random/distributions.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/validate.h"

namespace keel::overload {

namespace internal {
int Log10Root(int x) {
  // floor(log10(x)) by comparison (Netflix uses a lookup table below 1000): on every sample, and
  // std::log10 costs more than the rest of the update.
  int log = 0;
  for (int64_t p = 10; p <= x; p *= 10) ++log;
  return std::max(1, log);
}
}  // namespace internal

absl::Status VegasLimit::Validate(const Options& o) {
  const keel::internal::OptionsOf of("vegas_limit");
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast(of, "max_limit", o.max_limit, 1));
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast(of, "initial_limit", o.initial_limit, 1));
  if (o.initial_limit > o.max_limit) {
    return keel::internal::InvalidOption(of, "initial_limit", "<= max_limit", o.initial_limit);
  }
  KEEL_RETURN_IF_ERROR(keel::internal::RequireFraction(of, "smoothing", o.smoothing));
  return keel::internal::RequireAtLeast(of, "probe_multiplier", o.probe_multiplier, 1);
}

absl::StatusOr<std::unique_ptr<VegasLimit>> VegasLimit::Create(Options options) {
  KEEL_RETURN_IF_ERROR(Validate(options));
  return std::unique_ptr<VegasLimit>(new VegasLimit(options, absl::BitGen(), nullptr));
}

absl::StatusOr<std::unique_ptr<VegasLimit>> VegasLimit::Create(Options options,
                                                               absl::BitGenRef random) {
  KEEL_RETURN_IF_ERROR(Validate(options));
  return std::unique_ptr<VegasLimit>(new VegasLimit(options, std::nullopt, &random));
}

VegasLimit::VegasLimit(Options options, std::optional<absl::BitGen> own, absl::BitGenRef* random)
    : options_(options),
      own_random_(std::move(own)),
      random_(random != nullptr ? *random : absl::BitGenRef(*own_random_)),
      estimated_limit_(options.initial_limit) {
  ResetProbeJitter();
}

void VegasLimit::ResetProbeJitter() { probe_jitter_ = absl::Uniform(random_, 0.5, 1.0); }

int VegasLimit::Update(const LimitSample& s) {
  const Duration rtt = std::max(s.rtt, Duration(1));
  last_rtt_ = rtt;
  ++probe_count_;
  if (probe_jitter_ * options_.probe_multiplier * estimated_limit_ <= probe_count_) {
    ResetProbeJitter();
    probe_count_ = 0;
    rtt_noload_ = rtt;
    return limit();
  }
  if (rtt_noload_ == Duration::zero() || rtt < rtt_noload_) {
    rtt_noload_ = rtt;
    return limit();
  }
  const double l = estimated_limit_;
  const int li = static_cast<int>(l);
  // The reference computes the queue and log10 up front; they are pure, so computing them only
  // on the paths that use them gives the same results for less work per sample.
  if (!s.dropped && s.in_flight * 2 < l) return li;  // app-limited: prevent upward drift
  const int log = internal::Log10Root(li);
  const int queue =
      static_cast<int>(std::ceil(l * (1 - static_cast<double>(rtt_noload_.count()) / rtt.count())));
  double next;
  if (s.dropped) {
    next = l - log;
  } else if (queue <= log) {
    next = l + 6 * log;  // threshold: no queueing, grow by beta
  } else if (queue < 3 * log) {
    next = l + log;  // below alpha
  } else if (queue > 6 * log) {
    next = l - log;  // above beta
  } else {
    return li;  // between alpha and beta
  }
  next = std::max(1.0, std::min(static_cast<double>(options_.max_limit), next));
  estimated_limit_ = (1 - options_.smoothing) * l + options_.smoothing * next;
  return limit();
}

}  // namespace keel::overload
