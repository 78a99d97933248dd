// keel/limit/fixed_window.h: at most `limit` per window, counted in fixed windows.
//
// Defines `keel::limit::FixedWindow`.
//
// Semantics (exact): time is cut into windows of length `window`; each window admits requests
// while their quantities sum to at most `limit`, and the count drops to zero when the next
// window begins. Windows are either aligned to the clock's epoch (kAligned: [k*w, (k+1)*w), the
// same boundaries for every key and every process reading the same clock) or start at the first
// request after the previous window ended (kFirstRequest: a key's window is [t0, t0 + w)).
//
// The known weakness, kept on purpose because it is what users of "N per minute" counters
// expect: a client can get `limit` at the end of one window and `limit` again at the start of the
// next, so up to 2 * limit pass within any span of one window length around a boundary (see the
// test "fixed window admits twice the limit across a window boundary"). Use SlidingWindowLog,
// Gcra or TokenBucket when that matters.
//
// Decision: remaining = limit - count; reset_after = time to the window's end (0 when nothing is
// counted); retry_after = time to the window's end, or kNever when the quantity exceeds `limit`.
// Quantity 0 peeks.
//
// Thread safety: thread-safe (a mutex around two integers; uncontended it costs about as much as
// a CAS). Moving is not.
//
//   auto per_minute = keel::limit::FixedWindow::Create(
//       {.limit = 100, .window = std::chrono::minutes(1)}).value();
//   if (!per_minute.TryAcquire().value().allowed) return TooManyRequests();
#pragma once

#include <chrono>
#include <cstdint>
#include <limits>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/limit/decision.h"
#include "keel/sync.h"

namespace keel::limit {

class FixedWindow {
 public:
  enum class Alignment {
    kAligned,       // windows are [k*window, (k+1)*window) on the clock's timeline
    kFirstRequest,  // a window opens at the first admitted request after the last one closed
  };

  struct Options {
    // The most admitted per window (sum of quantities). Required: must be >= 1.
    int64_t limit = 0;
    // The window length. Must be > 0. Default: one second.
    Duration window = std::chrono::seconds(1);
    // Where windows start. Default: kAligned (what a shared Redis counter keyed by window number
    // does, so the two agree).
    Alignment alignment = Alignment::kAligned;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field).
  static absl::StatusOr<FixedWindow> Create(Options options, Clock& clock = SteadyClock());

  FixedWindow(FixedWindow&& other) noexcept;
  FixedWindow& operator=(FixedWindow&&) = delete;

  // Admits quantity `n` if the current window has room; n == 0 peeks.
  // Errors: INVALID_ARGUMENT if n < 0.
  absl::StatusOr<Decision> TryAcquire(int64_t n = 1) ABSL_LOCKS_EXCLUDED(mu_) {
    return TryAcquire(n, clock_->Now());
  }
  absl::StatusOr<Decision> TryAcquire(int64_t n, TimePoint now) ABSL_LOCKS_EXCLUDED(mu_);
  // What TryAcquire(n, now) would answer, changing nothing.
  absl::StatusOr<Decision> Check(int64_t n, TimePoint now) const ABSL_LOCKS_EXCLUDED(mu_);

  // One window: after this long untouched the limiter is indistinguishable from a new one.
  // The limiter's mutable part alone, for containers of many limiters with the same parameters
  // (Keyed<FixedWindow> keeps one State per key and one FixedWindow for all of them). A default
  // State is a fresh limiter. Not synchronised: the caller serialises calls on one State.
  struct State {
    int64_t window_start = std::numeric_limits<int64_t>::min();  // INT64_MIN: no window yet
    int64_t count = 0;                                           // admitted in that window
  };
  // TryAcquire and Check applied to `state` instead of this limiter's own; `n` as there.
  // REQUIRES: n >= 0 (validated by the caller).
  Decision Apply(State& state, int64_t n, TimePoint now) const;
  Decision Peek(const State& state, int64_t n, TimePoint now) const;

  Duration Horizon() const { return Duration(window_nanos_); }

 private:
  FixedWindow(const Options& options, Clock& clock);
  Decision Evaluate(State& state, int64_t n, int64_t now, bool commit) const;

  int64_t limit_;
  int64_t window_nanos_;
  Alignment alignment_;
  Clock* clock_;
  mutable Mutex mu_;
  mutable State state_ ABSL_GUARDED_BY(mu_);
};

}  // namespace keel::limit
