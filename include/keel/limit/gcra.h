// keel/limit/gcra.h: the generic cell rate algorithm with redis-cell's exact semantics, lock-free.
//
// Defines `keel::limit::Gcra`.
//
// Semantics (those of redis-cell's CL.THROTTLE, so a service can move between the two): `count`
// requests per `period`, with bursts of up to `max_burst` extra.
//   emission interval  T   = period / count              (integer nanoseconds, truncated)
//   tolerance          tau = T * (max_burst + 1)
//   limit                  = max_burst + 1
// The state is the theoretical arrival time TAT (missing, or in the past, means "now"). A request
// of quantity n computes new_tat = max(TAT, now) + n*T and is admitted iff new_tat - tau <= now.
// The reply carries CL.THROTTLE's fields: limited (= !allowed), limit, remaining =
// trunc((tau - ttl) / T) (0 when that is negative), retry_after = new_tat - tau - now when denied
// (kNever where redis-cell says -1: n > limit), and reset_after = ttl = (TAT after the decision) -
// now. Quantity 0 peeks and changes nothing. Differences from redis-cell: durations are
// nanoseconds rather than whole seconds in the reply, and `retry_after` is 0 (not -1) when
// allowed.
//
// GCRA admits exactly what a token bucket of burst = limit and rate = 1/T admits; it is offered
// separately because its reply is the one Redis users know and because its state (one time) is
// what the Redis script stores.
//
// Thread safety: thread-safe; lock-free (one atomic word, relaxed CAS loop). Moving is not.
//
//   // 20 requests per minute, 5 of them at once.
//   auto gcra = keel::limit::Gcra::Create(
//       {.count = 20, .period = std::chrono::minutes(1), .max_burst = 4}).value();
//   keel::limit::Decision d = gcra.TryAcquire().value();
//   if (!d.allowed) return TooManyRequests(d.retry_after);
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <limits>

#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/limit/decision.h"

namespace keel::limit {

class Gcra {
 public:
  struct Options {
    // Requests admitted per `period` at the steady rate. Required: must be >= 1.
    int64_t count = 0;
    // The period `count` applies to. Must be > 0 and at least `count` nanoseconds.
    // Default: one second.
    Duration period = std::chrono::seconds(1);
    // Extra requests admitted at once above the steady rate; the limit is max_burst + 1.
    // Must be >= 0. Default: 0 (strictly paced).
    int64_t max_burst = 0;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field).
  static absl::StatusOr<Gcra> Create(Options options, Clock& clock = SteadyClock());

  Gcra(Gcra&& other) noexcept;
  Gcra& operator=(Gcra&&) = delete;

  // CL.THROTTLE: admits quantity `n` or not, as described above; n == 0 peeks.
  // Errors: INVALID_ARGUMENT if n < 0.
  absl::StatusOr<Decision> TryAcquire(int64_t n = 1) { return TryAcquire(n, clock_->Now()); }
  absl::StatusOr<Decision> TryAcquire(int64_t n, TimePoint now);

  // What TryAcquire(n, now) would answer, changing nothing.
  absl::StatusOr<Decision> Check(int64_t n, TimePoint now) const;

  // The limiter's mutable part alone, for containers of many limiters with the same parameters
  // (Keyed<Gcra> keeps one State per key and one Gcra for all of them). A default State is a
  // fresh limiter. Not synchronised: the caller serialises calls on one State.
  struct State {
    // The theoretical arrival time, as tat_ below.
    int64_t tat = std::numeric_limits<int64_t>::min();
  };
  // TryAcquire and Check applied to `state` instead of this limiter's own; `n` as there.
  // REQUIRES: n >= 0 (validated by the caller).
  Decision Apply(State& state, int64_t n, TimePoint now) const;
  Decision Peek(const State& state, int64_t n, TimePoint now) const;

  // tau: after this long untouched the limiter is indistinguishable from a new one.
  Duration Horizon() const { return Duration(tolerance_nanos_); }
  Duration emission_interval() const { return Duration(interval_nanos_); }
  int64_t limit() const { return limit_; }

 private:
  Gcra(int64_t interval_nanos, int64_t limit, Clock& clock);
  Decision Evaluate(int64_t stored_tat, int64_t n, int64_t now, int64_t* new_tat) const;

  int64_t interval_nanos_;   // T
  int64_t tolerance_nanos_;  // tau = T * limit_
  int64_t limit_;            // max_burst + 1
  Clock* clock_;
  // TAT in nanoseconds; INT64_MIN = never used. Not padded, for the reason TokenBucket gives.
  std::atomic<int64_t> tat_;
};

}  // namespace keel::limit
