#include "keel/overload/aimd_limit.h"

#include <algorithm>

#include "keel/internal/status_macros.h"
#include "keel/internal/validate.h"
#include "overload/limit_range.h"

namespace keel::overload {

absl::StatusOr<std::unique_ptr<AimdLimit>> AimdLimit::Create(Options o) {
  const keel::internal::OptionsOf of("aimd_limit");
  KEEL_RETURN_IF_ERROR(internal::ValidateLimitRange(of, o.min_limit, o.max_limit, o.initial_limit));
  if (!(o.backoff_ratio >= 0.5 && o.backoff_ratio < 1.0)) {
    return keel::internal::InvalidOption(of, "backoff_ratio", "in [0.5, 1)", o.backoff_ratio);
  }
  KEEL_RETURN_IF_ERROR(keel::internal::RequirePositive(of, "timeout", o.timeout));
  return std::unique_ptr<AimdLimit>(new AimdLimit(o));
}

int AimdLimit::Update(const LimitSample& s) {
  last_rtt_ = s.rtt;
  int next = limit_;
  if (s.dropped || s.rtt > options_.timeout) {
    next = static_cast<int>(next * options_.backoff_ratio);
  } else if (s.in_flight * 2 >= next) {
    next = next + 1;
  }
  limit_ = std::min(options_.max_limit, std::max(options_.min_limit, next));
  return limit_;
}

}  // namespace keel::overload
