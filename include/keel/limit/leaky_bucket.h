// keel/limit/leaky_bucket.h: a shaper: requests leave at a steady rate, excess waits in a bounded
// queue, and what does not fit in the queue is rejected.
//
// Defines `keel::limit::LeakyBucket`.
//
// Semantics (exact; the "leaky bucket as a queue" of traffic shaping): departures are spaced by
// T = 1s / rate. Admit() books the next free departure slot at or after `now` and returns the
// delay until it; the caller waits that long, then proceeds. A request is rejected, booking
// nothing, when `capacity` admitted requests are already waiting (a request waits from its
// admission to the end of its slot), so the longest delay handed out is (capacity - 1) * T.
// Unlike a token bucket, a leaky bucket never lets a burst through: output is smooth even when
// input is not.
//
// Thread safety: thread-safe; lock-free (one atomic word, relaxed CAS loop). Moving is not.
//
//   auto shaper = keel::limit::LeakyBucket::Create({.rate = 50, .capacity = 100}).value();
//   keel::limit::LeakyBucket::Admission a = shaper.Admit();
//   if (!a.admitted) return TooManyRequests(a.retry_after);
//   clock.SleepFor(a.delay);   // or schedule the work a.delay from now
//   Forward(request);
#pragma once

#include <atomic>
#include <cstdint>

#include "absl/status/statusor.h"
#include "keel/clock.h"

namespace keel::limit {

class LeakyBucket {
 public:
  struct Options {
    // Departures per second. Required: must be in (0, 1e9].
    double rate = 0;
    // How many admitted requests may wait at once (the queue length). Must be >= 1. Default: 1
    // (no queueing: a request is admitted only if its slot is now). Tune to the latency you
    // accept: the longest wait is (capacity - 1) / rate.
    int64_t capacity = 1;
  };

  struct Admission {
    // Whether a departure slot was booked.
    bool admitted = false;
    // When admitted: how long to wait before proceeding (zero if the slot is now).
    Duration delay = Duration::zero();
    // When rejected: how long until a request would be admitted, if no other arrives meanwhile.
    Duration retry_after = Duration::zero();
    // Admitted requests still waiting for their slot, including this one when admitted.
    int64_t queued = 0;
    friend bool operator==(const Admission&, const Admission&) = default;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field).
  static absl::StatusOr<LeakyBucket> Create(Options options, Clock& clock = SteadyClock());

  LeakyBucket(LeakyBucket&& other) noexcept;
  LeakyBucket& operator=(LeakyBucket&&) = delete;

  // Books a departure slot, or rejects when the queue is full. A booked slot cannot be returned.
  Admission Admit() { return Admit(clock_->Now()); }
  Admission Admit(TimePoint now);

  Duration interval() const { return Duration(interval_nanos_); }

 private:
  LeakyBucket(int64_t interval_nanos, int64_t capacity, Clock& clock);

  int64_t interval_nanos_;
  int64_t capacity_;
  Clock* clock_;
  // The earliest time (nanoseconds) the next departure may happen. INT64_MIN: idle forever.
  alignas(64) std::atomic<int64_t> next_free_;
};

}  // namespace keel::limit
