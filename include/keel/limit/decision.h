// keel/limit/decision.h: the answer every keel rate limiter gives.
//
// Defines `keel::limit::Decision` (allowed or not, with the figures a client needs to pace itself)
// and the constants shared by the limiters (`kNever`, `kMaxKeyBytes`).
//
// A rejection is a value (`allowed == false`), not an error: absl::Status is kept for real
// failures (bad arguments, a backend that is down). The fields follow redis-cell's CL.THROTTLE
// reply so that an in-process limiter and a Redis-shared one answer in the same terms.
//
// Thread safety: plain values.
//
//   absl::StatusOr<keel::limit::Decision> d = bucket.TryAcquire();
//   if (!d.ok()) return d.status();             // INVALID_ARGUMENT: a negative quantity
//   if (!d->allowed) {
//     for (const auto& h : keel::limit::HttpHeaders(*d, {.name = "api", .window = 1min})) {
//       response.set_header(h.name, h.value);   // 429 with Retry-After
//     }
//     return TooManyRequests();
//   }
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <ostream>
#include <string>

#include "keel/clock.h"

namespace keel::limit {

// `Decision::retry_after` of a request that can never be admitted because its quantity exceeds
// the limiter's capacity (redis-cell answers -1 here). Waiting does not help such a request.
inline constexpr Duration kNever = Duration::max();

// Keys longer than this are rejected with INVALID_ARGUMENT by keyed limiters: a key is an
// identifier (an IP, a user id, a route), and an unbounded key is a memory attack.
inline constexpr size_t kMaxKeyBytes = 1024;

struct Decision {
  // Whether the request was admitted (and its quantity consumed).
  bool allowed = false;
  // The largest quantity the limiter can ever admit at once: the burst of a bucket, the limit of
  // a window (redis-cell: max_burst + 1).
  int64_t limit = 0;
  // The quantity that could still be admitted right now, after this decision. Never negative.
  int64_t remaining = 0;
  // Time until the limiter is back to its initial, fully replenished state if nothing else is
  // admitted (redis-cell's reset_after; for windows, until the counted requests have expired).
  Duration reset_after = Duration::zero();
  // Zero when allowed. When denied: the earliest time after which the same request would be
  // admitted if nothing else is admitted meanwhile, or `kNever` when it never can be.
  Duration retry_after = Duration::zero();
  // True when the limiter's own backend did not decide: a Redis-backed limiter that failed open
  // or fell back to a local limiter while Redis was unavailable. The figures above are then not
  // the shared limit's (a fail-open decision knows none; a fallback's are its local share), so
  // HttpHeaders sends none of them. Always false from the in-process limiters.
  bool degraded = false;
  // The sliding window counter's estimate of what its sliding window holds, the figure the
  // decision was made on: previous window's count x the share of the previous window still
  // inside the sliding window + the current window's count, before this request (the request is
  // admitted iff estimate + quantity <= limit). Set only by the sliding window counter: in
  // process (SlidingWindowCounter, Keyed<SlidingWindowCounter>) and in Redis
  // (redis::SlidingWindowCounterOptions), which compute the same value bit for bit; nullopt for
  // every other algorithm and for a fail-open decision (a local fallback's decision carries the
  // fallback's own). With several limits (Keyed,
  // `more_limits`): the estimate of the limit whose `remaining` is reported.
  std::optional<double> estimate = std::nullopt;

  friend bool operator==(const Decision&, const Decision&) = default;
};

// "allowed limit=10 remaining=3 reset_after=1.5s retry_after=0s", for logs and test failures;
// " estimate=48.5" and " degraded" follow when they apply.
std::string DebugString(const Decision& d);
inline std::ostream& operator<<(std::ostream& os, const Decision& d) {
  return os << DebugString(d);
}

namespace internal {
// The metric family every keel rate limiter counts its decisions in, in-process (Keyed,
// backend="local") and Redis-backed (backend="redis") alike, labelled {name, decision, backend};
// one help text, since a family has one.
inline constexpr char kDecisionsFamily[] = "keel_rate_limit_decisions_total";
inline constexpr char kDecisionsHelp[] =
    "Rate-limit decisions by limiter (name), outcome (decision) and where they were made "
    "(backend: local or redis).";

// The decision of several limits checked together (Keyed's and redis::RateLimiter's
// multi-limits): allowed only if all allow; the smallest `remaining` with its `limit` and
// `estimate`; the
// longest `reset_after`; when denied the longest `retry_after`. REQUIRES: count >= 1.
Decision Combine(const Decision* decisions, size_t count);
}  // namespace internal

}  // namespace keel::limit
