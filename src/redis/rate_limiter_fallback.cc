#include "redis/rate_limiter_fallback.h"

#include <algorithm>
#include <utility>
#include <vector>

#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::redis::internal {
namespace {

using keel::internal::StrCat;

// One process's share of a limit: counts divided by `n`, rounded down so that all processes
// together never admit more than the shared limit, but at least 1 so the fallback admits at all.
int64_t Share(int64_t total, size_t n) {
  return std::max<int64_t>(1, total / static_cast<int64_t>(n));
}

limit::Gcra::Options Scale(const limit::Gcra::Options& o, size_t n) {
  // The same period with 1/n of the count and of the burst (limit = max_burst + 1).
  return {
      .count = Share(o.count, n), .period = o.period, .max_burst = Share(o.max_burst + 1, n) - 1};
}
limit::TokenBucket::Options Scale(const limit::TokenBucket::Options& o, size_t n) {
  return {.rate = o.rate / static_cast<double>(n), .burst = Share(o.burst, n)};
}
limit::FixedWindow::Options Scale(const limit::FixedWindow::Options& o, size_t n) {
  limit::FixedWindow::Options out = o;
  out.limit = Share(o.limit, n);
  return out;
}
limit::SlidingWindowOptions Scale(const SlidingWindowLogOptions& o, size_t n) {
  return {.limit = Share(o.window.limit, n), .window = o.window.window};
}
limit::SlidingWindowOptions Scale(const SlidingWindowCounterOptions& o, size_t n) {
  return {.limit = Share(o.window.limit, n), .window = o.window.window};
}

template <typename Limiter, typename AlgorithmOptions>
absl::StatusOr<std::unique_ptr<limit::Keyed<Limiter>>> MakeKeyed(
    const RateLimiter::Options& options, Clock& clock) {
  const LocalFallbackOptions& f = *options.local_fallback;
  std::vector<typename Limiter::Options> limits;
  limits.push_back(Scale(std::get<AlgorithmOptions>(options.algorithm), f.processes));
  for (const RateLimiter::Algorithm& a : options.more_limits) {
    limits.push_back(Scale(std::get<AlgorithmOptions>(a), f.processes));
  }
  return limit::Keyed<Limiter>::Create({.name = StrCat(options.name, ".local_fallback"),
                                        .max_keys = f.max_keys,
                                        .block_for = options.block_for,
                                        .shards = std::min<size_t>(16, f.max_keys)},
                                       std::move(limits), clock);
}

}  // namespace

absl::StatusOr<std::unique_ptr<LocalFallback>> LocalFallback::Create(
    const RateLimiter::Options& options, Clock& clock) {
  const LocalFallbackOptions& f = *options.local_fallback;
  const keel::internal::OptionsOf of("redis rate limiter", options.name);
  KEEL_RETURN_IF_ERROR(
      keel::internal::RequireAtLeast(of, "local_fallback.processes", f.processes, 1));
  KEEL_RETURN_IF_ERROR(
      keel::internal::RequireAtLeast(of, "local_fallback.max_keys", f.max_keys, 1));
  const auto wrap = [](auto keyed) -> absl::StatusOr<std::unique_ptr<LocalFallback>> {
    if (!keyed.ok()) return keyed.status();
    return std::unique_ptr<LocalFallback>(new LocalFallback(Any(*std::move(keyed))));
  };
  switch (options.algorithm.index()) {
    case 0:
      return wrap(MakeKeyed<limit::Gcra, limit::Gcra::Options>(options, clock));
    case 1:
      return wrap(MakeKeyed<limit::TokenBucket, limit::TokenBucket::Options>(options, clock));
    case 2:
      return wrap(MakeKeyed<limit::FixedWindow, limit::FixedWindow::Options>(options, clock));
    case 3:
      return wrap(MakeKeyed<limit::SlidingWindowLog, SlidingWindowLogOptions>(options, clock));
    default:
      return wrap(
          MakeKeyed<limit::SlidingWindowCounter, SlidingWindowCounterOptions>(options, clock));
  }
}

limit::Decision LocalFallback::Decide(std::string_view key, int64_t n, bool dry_run) {
  absl::StatusOr<limit::Decision> d = std::visit(
      [&](auto& keyed) { return dry_run ? keyed->Check(key, n) : keyed->TryAcquire(key, n); },
      keyed_);
  // The key and quantity were validated by the caller with the same rules, so Keyed cannot
  // refuse them; should it ever, deny rather than admit on an unknown answer.
  limit::Decision out = d.ok() ? *d : limit::Decision{};
  out.degraded = true;
  return out;
}

}  // namespace keel::redis::internal
