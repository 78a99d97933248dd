// The in-process limiter keel::redis::RateLimiter decides with while Redis fails
// (Options::local_fallback): limit::Keyed over the same algorithm, each limit divided by the
// number of processes. Private.
//
// Thread safety: thread-safe (limit::Keyed is).
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <variant>

#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/limit/decision.h"
#include "keel/limit/keyed.h"
#include "keel/redis/rate_limiter.h"

namespace keel::redis::internal {

class LocalFallback {
 public:
  // INVALID_ARGUMENT naming the field for a bad `options.local_fallback`. REQUIRES: the rest of
  // `options` is valid (MakePlan accepted it) and `options.local_fallback` is set.
  static absl::StatusOr<std::unique_ptr<LocalFallback>> Create(const RateLimiter::Options& options,
                                                               Clock& clock);

  // limit::Keyed::TryAcquire (n > 0 consumes) or, with `dry_run`, its Check. REQUIRES: `key`
  // and `n` valid.
  limit::Decision Decide(std::string_view key, int64_t n, bool dry_run);

 private:
  using Any = std::variant<std::unique_ptr<limit::Keyed<limit::Gcra>>,
                           std::unique_ptr<limit::Keyed<limit::TokenBucket>>,
                           std::unique_ptr<limit::Keyed<limit::FixedWindow>>,
                           std::unique_ptr<limit::Keyed<limit::SlidingWindowLog>>,
                           std::unique_ptr<limit::Keyed<limit::SlidingWindowCounter>>>;
  explicit LocalFallback(Any keyed) : keyed_(std::move(keyed)) {}

  Any keyed_;
};

}  // namespace keel::redis::internal
