#include "keel/limit/sliding_window.h"

#include <algorithm>
#include <limits>

#include "common.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::limit {

using internal::Nanos;

namespace {

absl::Status Validate(const char* component, const SlidingWindowOptions& options) {
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast(component, "limit", options.limit, 1));
  if (options.window <= Duration::zero() ||
      options.window.count() >= internal::kMaxHorizonNanos / 2) {
    return keel::internal::InvalidOption(component, "window", "> 0 and under 35 years",
                                         options.window);
  }
  // The counter compares limit * window in 128 bits, so no bound on limit is needed for it.
  return absl::OkStatus();
}

constexpr int64_t kNone = std::numeric_limits<int64_t>::min();

}  // namespace

// ---------------------------------------------------------------------------------------------
// SlidingWindowLog

absl::StatusOr<SlidingWindowLog> SlidingWindowLog::Create(Options options, Clock& clock) {
  if (auto s = Validate("sliding_window_log", options); !s.ok()) return s;
  return SlidingWindowLog(options, clock);
}

SlidingWindowLog::SlidingWindowLog(const Options& options, Clock& clock)
    : limit_(options.limit), window_nanos_(options.window.count()), clock_(&clock) {}

SlidingWindowLog::SlidingWindowLog(SlidingWindowLog&& other) noexcept
    : limit_(other.limit_), window_nanos_(other.window_nanos_), clock_(other.clock_) {
  MutexLock lock(other.mu_);
  MutexLock own(mu_);
  state_ = std::move(other.state_);
}

Decision SlidingWindowLog::Evaluate(State& s, int64_t n, int64_t now, bool commit) const {
  // An admission at t counts during [t, t + window).
  std::vector<State::Entry>& log = s.log;
  while (s.head < log.size() && log[s.head].at + window_nanos_ <= now) {
    s.counted -= log[s.head].quantity;
    ++s.head;
  }
  if (s.head == log.size()) {
    log.clear();
    s.head = 0;
  } else if (s.head * 2 > log.size()) {
    // Expired entries are the larger part: drop them in one move, amortised O(1) per entry.
    log.erase(log.begin(), log.begin() + static_cast<std::ptrdiff_t>(s.head));
    s.head = 0;
  }
  Decision d;
  d.limit = limit_;
  const auto reset = [&] {
    return log.empty() ? Duration::zero() : Duration(log.back().at + window_nanos_ - now);
  };
  if (n > limit_) {
    d.remaining = limit_ - s.counted;
    d.reset_after = reset();
    d.retry_after = kNever;
    return d;
  }
  if (s.counted + n > limit_) {
    // Exact: the earliest moment enough of the oldest admissions have expired.
    int64_t to_free = s.counted + n - limit_;
    int64_t at = now;
    for (size_t i = s.head; i < log.size(); ++i) {
      to_free -= log[i].quantity;
      at = log[i].at + window_nanos_;
      if (to_free <= 0) break;
    }
    d.remaining = limit_ - s.counted;
    d.reset_after = reset();
    d.retry_after = Duration(at - now);
    return d;
  }
  d.allowed = true;
  d.remaining = limit_ - s.counted - n;
  if (commit && n > 0) {
    // Calls at the same instant share one entry, which bounds the log at `limit` entries.
    if (s.head < log.size() && log.back().at == now) {
      log.back().quantity += n;
    } else {
      log.push_back({now, n});
    }
    s.counted += n;
  }
  d.reset_after = commit || n == 0 ? reset() : Duration(window_nanos_);
  return d;
}

absl::StatusOr<Decision> SlidingWindowLog::TryAcquire(int64_t n, TimePoint now) {
  if (n < 0) return internal::QuantityError("sliding_window_log", n);
  MutexLock lock(mu_);
  return Evaluate(state_, n, Nanos(now), /*commit=*/true);
}

absl::StatusOr<Decision> SlidingWindowLog::Check(int64_t n, TimePoint now) const {
  if (n < 0) return internal::QuantityError("sliding_window_log", n);
  MutexLock lock(mu_);
  return Evaluate(state_, n, Nanos(now), /*commit=*/false);
}

Decision SlidingWindowLog::Apply(State& state, int64_t n, TimePoint now) const {
  return Evaluate(state, n, Nanos(now), /*commit=*/true);
}

Decision SlidingWindowLog::Peek(State& state, int64_t n, TimePoint now) const {
  return Evaluate(state, n, Nanos(now), /*commit=*/false);
}

// ---------------------------------------------------------------------------------------------
// SlidingWindowCounter

absl::StatusOr<SlidingWindowCounter> SlidingWindowCounter::Create(Options options, Clock& clock) {
  if (auto s = Validate("sliding_window_counter", options); !s.ok()) return s;
  return SlidingWindowCounter(options, clock);
}

SlidingWindowCounter::SlidingWindowCounter(const Options& options, Clock& clock)
    : limit_(options.limit), window_nanos_(options.window.count()), clock_(&clock) {}

SlidingWindowCounter::SlidingWindowCounter(SlidingWindowCounter&& other) noexcept
    : limit_(other.limit_), window_nanos_(other.window_nanos_), clock_(other.clock_) {
  MutexLock lock(other.mu_);
  MutexLock own(mu_);
  state_ = other.state_;
}

Decision SlidingWindowCounter::Evaluate(State& state, int64_t n, int64_t now, bool commit) const {
  __extension__ typedef __int128 i128;
  const int64_t w = window_nanos_;
  const int64_t start = now - ((now % w) + w) % w;
  int64_t current = 0;
  int64_t previous = 0;
  if (state.window_start == start) {
    current = state.current;
    previous = state.previous;
  } else if (state.window_start != kNone && state.window_start == start - w) {
    previous = state.current;
  }
  const int64_t left = start + w - now;  // (window - elapsed), in (0, w]
  // estimate * w, exactly: previous * (w - elapsed) + current * w.
  const auto scaled = [&](int64_t cur) { return i128{previous} * left + i128{cur} * w; };
  const i128 capacity = i128{limit_} * w;
  const auto remaining_after = [&](int64_t cur) {
    const i128 spare = capacity - scaled(cur);
    return spare <= 0 ? int64_t{0} : static_cast<int64_t>(spare / w);
  };
  const auto reset = [&](int64_t cur) {
    if (cur > 0) return Duration(start + 2 * w - now);
    if (previous > 0) return Duration(left);
    return Duration::zero();
  };
  Decision d;
  d.limit = limit_;
  const i128 before = scaled(current);  // estimate * w, before this request
  d.estimate = internal::WindowEstimate(static_cast<int64_t>(before / w),
                                        static_cast<int64_t>(before % w), w);
  if (n > limit_ || scaled(current + n) > capacity) {
    d.remaining = remaining_after(current);
    d.reset_after = reset(current);
    if (n > limit_) {
      d.retry_after = kNever;
    } else if (limit_ - current - n >= 0) {
      // Later in this window: the smallest left' with previous * left' <= (limit-current-n) * w.
      // previous > 0 here, else the request would fit.
      const i128 room = i128{limit_ - current - n} * w;
      const int64_t max_left = static_cast<int64_t>(room / previous);
      d.retry_after = Duration(left - max_left);
    } else {
      // In the next window, where `current` becomes the weighted previous count (> 0 here).
      const i128 room = i128{limit_ - n} * w;
      const int64_t max_left = static_cast<int64_t>(std::min<i128>(room / current, w));
      d.retry_after = Duration(left + (w - max_left));
    }
    return d;
  }
  d.allowed = true;
  current += n;
  d.remaining = remaining_after(current);
  d.reset_after = reset(current);
  if (commit && n > 0) {
    state.window_start = start;
    state.current = current;
    state.previous = previous;
  }
  return d;
}

absl::StatusOr<Decision> SlidingWindowCounter::TryAcquire(int64_t n, TimePoint now) {
  if (n < 0) return internal::QuantityError("sliding_window_counter", n);
  MutexLock lock(mu_);
  return Evaluate(state_, n, Nanos(now), /*commit=*/true);
}

absl::StatusOr<Decision> SlidingWindowCounter::Check(int64_t n, TimePoint now) const {
  if (n < 0) return internal::QuantityError("sliding_window_counter", n);
  MutexLock lock(mu_);
  return Evaluate(state_, n, Nanos(now), /*commit=*/false);
}

Decision SlidingWindowCounter::Apply(State& state, int64_t n, TimePoint now) const {
  return Evaluate(state, n, Nanos(now), /*commit=*/true);
}

Decision SlidingWindowCounter::Peek(const State& state, int64_t n, TimePoint now) const {
  State copy = state;  // Evaluate writes only when committing; three words
  return Evaluate(copy, n, Nanos(now), /*commit=*/false);
}

}  // namespace keel::limit
