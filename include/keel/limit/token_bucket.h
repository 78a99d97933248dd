// keel/limit/token_bucket.h: a lock-free token bucket: bursts up to `burst`, `rate` per second on
// average, with reservations that borrow from the future.
//
// Defines `keel::limit::TokenBucket`.
//
// Semantics (exact): the bucket holds up to `burst` tokens and gains one every T = 1s / rate
// (T rounded to the nanosecond). It starts full. TryAcquire(n) takes n tokens if n are there,
// else changes nothing. Reserve(n) always takes n tokens, letting the balance go negative, and
// says how long the caller must wait before acting: reservations are served strictly in the
// order they were made (each one queues behind the debt of the ones before), and TryAcquire never
// barges ahead of them. Over any interval of length D the bucket admits at most
// burst + D / T tokens. Quantity 0 is a peek: it reports the state and changes nothing.
//
// Like folly's TokenBucket, the whole state is one atomic word (the time at which the bucket was
// or will be empty) updated by a relaxed CAS loop; see token_bucket.cc for the memory orders.
//
// Thread safety: thread-safe; lock-free. Moving is not: move only before sharing.
//
//   auto bucket = keel::limit::TokenBucket::Create({.rate = 100, .burst = 20}).value();
//   keel::limit::Decision d = bucket.TryAcquire().value();   // 1 token, now
//   if (!d.allowed) return Reject(d.retry_after);
//
//   // Pacing outgoing work instead of dropping it:
//   keel::Duration wait = bucket.Reserve(5).value();
//   clock.SleepFor(wait);
//   Send();
#pragma once

#include <atomic>
#include <cstdint>
#include <limits>

#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/limit/decision.h"

namespace keel::limit {

class TokenBucket {
 public:
  struct Options {
    // Tokens added per second, on average; fractional rates are fine (0.5 = one every 2 s).
    // Required: must be > 0 and at most 1e9 (one token per nanosecond).
    double rate = 0;
    // The bucket's capacity: the largest burst admitted at once and the most a single request
    // may take. Must be >= 1. Default: 1 (no bursts, strictly paced). Tune to the burst your
    // backend absorbs; burst / rate is how long an idle client takes to earn a full burst back.
    int64_t burst = 1;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field) and returns a full bucket reading
  // time from `clock`.
  static absl::StatusOr<TokenBucket> Create(Options options, Clock& clock = SteadyClock());

  TokenBucket(TokenBucket&& other) noexcept;
  TokenBucket& operator=(TokenBucket&&) = delete;

  // Takes `n` tokens if available. Denied decisions change nothing; retry_after is when `n`
  // tokens will be there, or kNever if n > burst. n == 0 peeks.
  // Errors: INVALID_ARGUMENT if n < 0.
  absl::StatusOr<Decision> TryAcquire(int64_t n = 1) { return TryAcquire(n, clock_->Now()); }
  absl::StatusOr<Decision> TryAcquire(int64_t n, TimePoint now);

  // What TryAcquire(n, now) would answer, changing nothing (lets keyed limiters check several
  // limits before consuming from any).
  absl::StatusOr<Decision> Check(int64_t n, TimePoint now) const;

  // Takes `n` tokens now, borrowing from the future if needed, and returns how long the caller
  // must wait before using them (zero if they were there). Later reservations wait behind earlier
  // ones (FIFO). A reservation cannot be cancelled: its tokens are spent.
  // Errors: INVALID_ARGUMENT if n < 0 or n > burst (it could never be honoured at the rate).
  absl::StatusOr<Duration> Reserve(int64_t n = 1) { return Reserve(n, clock_->Now()); }
  absl::StatusOr<Duration> Reserve(int64_t n, TimePoint now);

  // Whole tokens available now (0 while reservations are in debt).
  int64_t Available() const { return Available(clock_->Now()); }
  int64_t Available(TimePoint now) const;

  // A bucket's mutable part alone, for containers of many buckets with the same parameters
  // (Keyed<TokenBucket> keeps one State per key and one TokenBucket for all of them). A default
  // State is a full bucket. Not synchronised: the caller serialises calls on one State.
  struct State {
    // As empty_at_ below.
    int64_t empty_at = std::numeric_limits<int64_t>::min();
  };
  // TryAcquire and Check applied to `state` instead of this bucket's own; `n` as there.
  // REQUIRES: n >= 0 (validated by the caller).
  Decision Apply(State& state, int64_t n, TimePoint now) const;
  Decision Peek(const State& state, int64_t n, TimePoint now) const;

  // How long an untouched bucket takes to be full again from empty (burst * T): after this long
  // without use the bucket is indistinguishable from a new one.
  Duration Horizon() const { return Duration(burst_nanos_); }
  // The time between two tokens (1s / rate, rounded to the nanosecond).
  Duration interval() const { return Duration(interval_nanos_); }
  int64_t burst() const { return burst_; }

 private:
  TokenBucket(int64_t interval_nanos, int64_t burst, Clock& clock);
  Decision Evaluate(int64_t empty_at, int64_t n, int64_t now, int64_t* new_empty_at) const;

  int64_t interval_nanos_;
  int64_t burst_;
  int64_t burst_nanos_;  // burst_ * interval_nanos_
  Clock* clock_;
  // The time (nanoseconds) at which the bucket was, or with reservations will be, empty; tokens
  // available at `now` = min(burst, (now - empty_at) / T). Deliberately not padded to a cache
  // line: Keyed holds millions of buckets, where 40 bytes instead of 128 is what keeps a lookup
  // to few cache misses. A bucket hammered by many cores next to other hot data can be wrapped
  // in an alignas(64) struct by its owner.
  std::atomic<int64_t> empty_at_;
};

}  // namespace keel::limit
