// keel/resilience/backoff.h: how long to wait before the next attempt.
//
// Defines `keel::Backoff` (a validated description of a delay schedule) and
// `keel::BackoffSequence` (the per-call state that produces the delays). The five schedules are
// exactly those of Marc Brooker, "Exponential Backoff And Jitter" (AWS Architecture Blog, 2015),
// with n the retry number starting at 0:
//
//   constant       base
//   exponential    min(cap, base * 2^n)
//   full jitter    U(0, min(cap, base * 2^n))
//   equal jitter   v/2 + U(0, v/2)              where v = min(cap, base * 2^n)
//   decorrelated   min(cap, U(base, 3 * prev))  where prev starts at base and is the last delay
//
// U(a, b) is uniform over whole nanoseconds in [a, b]. Decorrelated jitter is stateful: its next
// delay depends on the previous one, so every call owns its own BackoffSequence (concurrent calls
// never share jitter state). Full jitter is the default elsewhere in keel: in Brooker's
// simulation it does the least work for a short completion time (see docs/retry.md).
//
// Thread safety: a Backoff is an immutable value. A BackoffSequence belongs to one call (one
// thread); the random generator passed to Next() must not be used concurrently.
//
//   absl::BitGen gen;
//   KEEL_ASSIGN_OR_RETURN(keel::Backoff backoff, keel::Backoff::FullJitter(100ms, 10s));
//   keel::BackoffSequence delays = backoff.Start();
//   for (int attempt = 1;; ++attempt) {
//     absl::Status s = Call();
//     if (s.ok() || attempt == 3) return s;
//     clock.SleepFor(delays.Next(gen));
//   }
#pragma once

#include <chrono>
#include <string_view>

#include "absl/random/bit_gen_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"

namespace keel {

class BackoffSequence;

class Backoff {
 public:
  enum class Kind { kConstant, kExponential, kFullJitter, kEqualJitter, kDecorrelatedJitter };

  // The schedule as options (what Retry::Options holds), validated by Create.
  struct Options {
    // Which schedule. Full jitter spreads retries best for the least work (docs/retry.md).
    // Default: kFullJitter.
    Kind kind = Kind::kFullJitter;
    // The first delay (constant: every delay). Shorter retries sooner; too short piles retries
    // onto a backend that has not recovered. Default: 100 ms. Must be > 0, except for kConstant,
    // where 0 is valid and means no backoff (retry at once).
    Duration base = std::chrono::milliseconds(100);
    // The longest delay. Ignored by kConstant. Default: 10 s. Must be >= base.
    Duration cap = std::chrono::seconds(10);
  };

  // Each factory returns INVALID_ARGUMENT naming the field when `base` is negative, zero for a
  // doubling schedule, or, for the capped schedules, above `cap`. `Constant(0s)` is valid: no
  // backoff.
  static absl::StatusOr<Backoff> Constant(Duration delay);
  static absl::StatusOr<Backoff> Exponential(Duration base, Duration cap);
  static absl::StatusOr<Backoff> FullJitter(Duration base, Duration cap);
  static absl::StatusOr<Backoff> EqualJitter(Duration base, Duration cap);
  static absl::StatusOr<Backoff> DecorrelatedJitter(Duration base, Duration cap);
  // The generic form; `field_prefix` names the options field in error messages
  // ("retry.backoff" gives "retry.backoff.base must be <= retry.backoff.cap, ...").
  static absl::StatusOr<Backoff> Create(Kind kind, Duration base, Duration cap,
                                        std::string_view field_prefix = "backoff");
  static absl::StatusOr<Backoff> Create(const Options& options,
                                        std::string_view field_prefix = "backoff") {
    return Create(options.kind, options.base, options.cap, field_prefix);
  }

  Kind kind() const { return kind_; }
  Duration base() const { return base_; }
  Duration cap() const { return cap_; }

  // A fresh per-call sequence: its first Next() is the delay before the first retry (n = 0:
  // base for the exponential kinds).
  BackoffSequence Start() const;
  // As Start(), numbering the first retry `first_n` instead of 0 (REQUIRES: first_n >= 0).
  // Brooker's "Exponential Backoff And Jitter" numbers its first retry 1, so its first delay is
  // already min(cap, 2 * base): StartAt(1) reproduces that. Decorrelated jitter ignores n.
  BackoffSequence StartAt(int first_n) const;

  // Printable name of a kind ("full_jitter"), for logs, tables and CSV headers.
  static std::string_view KindName(Kind kind);

 private:
  Backoff(Kind kind, Duration base, Duration cap) : kind_(kind), base_(base), cap_(cap) {}

  Kind kind_;
  Duration base_;
  Duration cap_;
};

// The delays of one call. Cheap to create (three words), no allocation.
class BackoffSequence {
 public:
  explicit BackoffSequence(const Backoff& backoff, int first_n = 0)
      : backoff_(backoff), retries_(first_n), prev_(backoff.base()) {}

  // The delay before the next retry; advances the sequence. Never negative, never above
  // max(base, cap). Draws from `gen` only for the jittered kinds.
  Duration Next(absl::BitGenRef gen);

  // The exponent the next Next() uses: how many delays it has returned, plus StartAt's first_n.
  int retries() const { return retries_; }

 private:
  // min(cap, base * 2^retries_) without overflowing.
  Duration CappedExponential() const;

  Backoff backoff_;
  int retries_;
  Duration prev_;  // decorrelated jitter's previous delay
};

inline BackoffSequence Backoff::Start() const { return BackoffSequence(*this); }
inline BackoffSequence Backoff::StartAt(int first_n) const {
  return BackoffSequence(*this, first_n < 0 ? 0 : first_n);
}

}  // namespace keel
