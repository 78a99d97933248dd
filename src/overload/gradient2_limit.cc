#include "keel/overload/gradient2_limit.h"

#include <algorithm>

#include "keel/internal/status_macros.h"
#include "keel/internal/validate.h"
#include "overload/limit_range.h"

namespace keel::overload {

absl::StatusOr<std::unique_ptr<Gradient2Limit>> Gradient2Limit::Create(Options o) {
  const keel::internal::OptionsOf of("gradient2_limit");
  KEEL_RETURN_IF_ERROR(internal::ValidateLimitRange(of, o.min_limit, o.max_limit, o.initial_limit));
  KEEL_RETURN_IF_ERROR(keel::internal::RequireFraction(of, "smoothing", o.smoothing));
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast(of, "queue_size", o.queue_size, 0));
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast(of, "long_window", o.long_window, 1));
  if (!(o.rtt_tolerance >= 1.0)) {
    return keel::internal::InvalidOption(of, "rtt_tolerance", ">= 1", o.rtt_tolerance);
  }
  return std::unique_ptr<Gradient2Limit>(new Gradient2Limit(o));
}

double Gradient2Limit::ExpAvg::Add(double sample) {
  if (count < kWarmup) {
    ++count;
    sum += sample;
    value = sum / count;
  } else {
    const double factor = 2.0 / (window + 1);
    value = value * (1 - factor) + sample * factor;
  }
  return value;
}

RttEstimates Gradient2Limit::Rtt() const {
  return {Duration(static_cast<Duration::rep>(long_rtt_.value)), last_rtt_};
}

int Gradient2Limit::Update(const LimitSample& s) {
  const double l = estimated_limit_;
  const Duration rtt = std::max(s.rtt, Duration(1));
  last_rtt_ = rtt;
  const double short_rtt = static_cast<double>(rtt.count());
  const double long_rtt = long_rtt_.Add(short_rtt);
  // After a long overload the average lags far above the present: pull it down faster.
  if (long_rtt / short_rtt > 2) long_rtt_.value *= 0.95;
  if (s.in_flight < l / 2) return static_cast<int>(l);  // app-limited: do not grow
  // The gradient uses the average before the decay, as the reference does.
  const double gradient =
      std::max(0.5, std::min(1.0, options_.rtt_tolerance * long_rtt / short_rtt));
  double next = l * gradient + options_.queue_size;
  next = l * (1 - options_.smoothing) + next * options_.smoothing;
  next = std::max<double>(options_.min_limit, std::min<double>(options_.max_limit, next));
  estimated_limit_ = next;
  return limit();
}

}  // namespace keel::overload
