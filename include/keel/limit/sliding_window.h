// keel/limit/sliding_window.h: at most `limit` in any window of length `window`, exactly (a log
// of admissions) or approximately in constant memory (two counters, Cloudflare's method).
//
// Defines `keel::limit::SlidingWindowLog` and `keel::limit::SlidingWindowCounter`.
//
// SlidingWindowLog (exact): an admission of quantity q at time t counts during [t, t + window).
// A request is admitted iff what is counted at `now` plus its quantity is at most `limit`.
// Memory: one log entry per distinct admission time still in the window, so at most `limit`
// entries. retry_after is exact: when enough of the oldest admissions expire. reset_after is when
// the newest admission expires.
//
// SlidingWindowCounter (approximate): windows are aligned to the clock's epoch; the limiter keeps
// the count of the current window and of the previous one, and estimates the sliding count as
//   estimate = previous * (window - elapsed) / window + current
// (elapsed = time since the current window began), i.e. it assumes the previous window's requests
// were spread evenly. A request is admitted iff estimate + quantity <= limit, computed exactly in
// integers. Error bound: each aligned window admits at most `limit` (the estimate is never below
// `current`), so any span of one window length admits at most 2 * limit; that worst case needs
// the previous window's admissions packed at its very end. The estimate can also be too high
// (previous admissions packed at the start) and deny what the exact log would admit. Under
// Poisson traffic (limit 100/s, 600 s, measured by the unit test "sliding window counter stays
// within its measured bounds of the exact log under Poisson traffic"; see docs/rate-limiting.md):
// at half the limit no decision differs; at 90% load 3.4% differ; at and above the limit
// individual decisions differ often (9% at 1x, 34% at 3x) because both sit at the margin, yet the
// counter admits within 1% of the log's total and at most 1.18x the limit in any one-second span.
// Memory: three integers. Every Decision carries the estimate it was made on
// (Decision::estimate), so a caller can log or export how close a key is to its limit.
//
// Both: quantity 0 peeks; a quantity above `limit` is denied with retry_after kNever.
//
// Thread safety: thread-safe (a mutex; the log's work is amortised O(1) per call). Moving is not.
//
//   auto exact = keel::limit::SlidingWindowLog::Create(
//       {.limit = 5, .window = std::chrono::minutes(1)}).value();
//   auto cheap = keel::limit::SlidingWindowCounter::Create(
//       {.limit = 1000, .window = std::chrono::minutes(1)}).value();
//   if (!cheap.TryAcquire().value().allowed) return TooManyRequests();
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/limit/decision.h"
#include "keel/sync.h"

namespace keel::limit {

// Options shared by both sliding-window limiters.
struct SlidingWindowOptions {
  // The most admitted in any window (sum of quantities). Required: must be >= 1.
  int64_t limit = 0;
  // The window length. Must be > 0. Default: one second.
  Duration window = std::chrono::seconds(1);
};

class SlidingWindowLog {
 public:
  using Options = SlidingWindowOptions;

  // Validates `options` (INVALID_ARGUMENT naming the field).
  static absl::StatusOr<SlidingWindowLog> Create(Options options, Clock& clock = SteadyClock());

  SlidingWindowLog(SlidingWindowLog&& other) noexcept;
  SlidingWindowLog& operator=(SlidingWindowLog&&) = delete;

  // Admits quantity `n` if the window has room; n == 0 peeks.
  // Errors: INVALID_ARGUMENT if n < 0.
  absl::StatusOr<Decision> TryAcquire(int64_t n = 1) ABSL_LOCKS_EXCLUDED(mu_) {
    return TryAcquire(n, clock_->Now());
  }
  absl::StatusOr<Decision> TryAcquire(int64_t n, TimePoint now) ABSL_LOCKS_EXCLUDED(mu_);
  // What TryAcquire(n, now) would answer, changing nothing observable.
  absl::StatusOr<Decision> Check(int64_t n, TimePoint now) const ABSL_LOCKS_EXCLUDED(mu_);

  // The limiter's mutable part alone, for containers of many limiters with the same parameters
  // (Keyed<SlidingWindowLog> keeps one State per key and one SlidingWindowLog for all of them).
  // A default State is a fresh limiter and allocates nothing. Not synchronised: the caller
  // serialises calls on one State.
  struct State {
    struct Entry {
      int64_t at;
      int64_t quantity;
    };
    // Admissions in time order; entries before `head` have expired and are dropped in bulk once
    // they are the larger part (amortised O(1) per call, no allocation in steady state).
    std::vector<Entry> log;
    size_t head = 0;
    int64_t counted = 0;  // sum of the live entries' quantities
  };
  // TryAcquire and Check applied to `state` instead of this limiter's own; `n` as there. Peek
  // takes the state mutably because it drops expired entries, which changes no decision.
  // REQUIRES: n >= 0 (validated by the caller).
  Decision Apply(State& state, int64_t n, TimePoint now) const;
  Decision Peek(State& state, int64_t n, TimePoint now) const;

  Duration Horizon() const { return Duration(window_nanos_); }

 private:
  SlidingWindowLog(const Options& options, Clock& clock);
  Decision Evaluate(State& state, int64_t n, int64_t now, bool commit) const;

  int64_t limit_;
  int64_t window_nanos_;
  Clock* clock_;
  mutable Mutex mu_;
  mutable State state_ ABSL_GUARDED_BY(mu_);
};

class SlidingWindowCounter {
 public:
  using Options = SlidingWindowOptions;

  // Validates `options` (INVALID_ARGUMENT naming the field).
  static absl::StatusOr<SlidingWindowCounter> Create(Options options, Clock& clock = SteadyClock());

  SlidingWindowCounter(SlidingWindowCounter&& other) noexcept;
  SlidingWindowCounter& operator=(SlidingWindowCounter&&) = delete;

  // Admits quantity `n` if the estimate has room; n == 0 peeks.
  // Errors: INVALID_ARGUMENT if n < 0.
  absl::StatusOr<Decision> TryAcquire(int64_t n = 1) ABSL_LOCKS_EXCLUDED(mu_) {
    return TryAcquire(n, clock_->Now());
  }
  absl::StatusOr<Decision> TryAcquire(int64_t n, TimePoint now) ABSL_LOCKS_EXCLUDED(mu_);
  // What TryAcquire(n, now) would answer, changing nothing.
  absl::StatusOr<Decision> Check(int64_t n, TimePoint now) const ABSL_LOCKS_EXCLUDED(mu_);

  // Two windows: the current count still weighs on the next window.
  // The limiter's mutable part alone, for containers of many limiters with the same parameters
  // (Keyed<SlidingWindowCounter> keeps one State per key and one SlidingWindowCounter for all
  // of them). A default State is a fresh limiter. Not synchronised: the caller serialises calls
  // on one State.
  struct State {
    int64_t window_start = std::numeric_limits<int64_t>::min();  // INT64_MIN: never used
    int64_t current = 0;
    int64_t previous = 0;
  };
  // TryAcquire and Check applied to `state` instead of this limiter's own; `n` as there.
  // REQUIRES: n >= 0 (validated by the caller).
  Decision Apply(State& state, int64_t n, TimePoint now) const;
  Decision Peek(const State& state, int64_t n, TimePoint now) const;

  Duration Horizon() const { return Duration(2 * window_nanos_); }

 private:
  SlidingWindowCounter(const Options& options, Clock& clock);
  Decision Evaluate(State& state, int64_t n, int64_t now, bool commit) const;

  int64_t limit_;
  int64_t window_nanos_;
  Clock* clock_;
  mutable Mutex mu_;
  mutable State state_ ABSL_GUARDED_BY(mu_);
};

namespace internal {
// SlidingWindowCounter's Decision::estimate from its exact integer form, estimate * window =
// whole * window + remainder (0 <= remainder < window). Computed as whole + remainder / window,
// so any unit of time gives the same double as long as window is below 2^53 units: the
// in-process counter (nanoseconds) and the Redis script (microseconds) agree bit for bit.
inline double WindowEstimate(int64_t whole, int64_t remainder, int64_t window) {
  return static_cast<double>(whole) + static_cast<double>(remainder) / static_cast<double>(window);
}
}  // namespace internal

}  // namespace keel::limit
