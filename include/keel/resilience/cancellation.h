// keel/resilience/cancellation.h: cooperative cancellation for work keel can no longer wait for.
//
// Defines `keel::CancellationSource` (the side that cancels) and `keel::CancellationToken` (the
// side that polls). C++ cannot stop a blocked thread: when a Timeout gives up on a call running on
// a ThreadPoolBulkhead, the call keeps running. Passing it a token lets it notice and stop early
// (between statements, before the next network round trip), which bounds the orphaned work.
//
// A token also ends waits: `token.SleepUntil(clock, t)` returns early when the token is cancelled,
// which is how a Retry's backoff stops as soon as nobody waits for the call any more.
//
// Thread safety: thread-safe. Tokens are cheap to copy (one shared_ptr).
//
//   keel::CancellationSource source;
//   pool.Submit([token = source.token()]() -> absl::StatusOr<int> {
//     for (int i = 0; i < 1000; ++i) {
//       if (token.cancelled()) return absl::CancelledError("report: cancelled");
//       DoChunk(i);
//     }
//     return 1000;
//   });
//   source.Cancel();   // e.g. the caller's deadline passed
#pragma once

#include <atomic>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "keel/clock.h"
#include "keel/sync.h"

namespace keel {

namespace internal {
// What a source and its tokens share. The flag is atomic so polling takes no lock; the mutex and
// condition variable let a waiter sleep until cancellation without missing it.
struct CancellationState {
  std::atomic<bool> cancelled{false};
  Mutex mu;
  CondVar cv;  // signalled (under mu) by Cancel
};
}  // namespace internal

class CancellationToken {
 public:
  // A token that is never cancelled.
  CancellationToken() = default;

  bool cancelled() const {
    // acquire pairs with Cancel()'s release: what the canceller wrote before cancelling is visible.
    return state_ != nullptr && state_->cancelled.load(std::memory_order_acquire);
  }

  // Sleeps on `clock` until `t`, or until the token is cancelled if that comes first. Returns
  // true when the sleep ran its course, false when cancellation ended it (or had already
  // happened). A default token just sleeps (clock.SleepUntil).
  bool SleepUntil(Clock& clock, TimePoint t) const;

 private:
  friend class CancellationSource;
  explicit CancellationToken(std::shared_ptr<internal::CancellationState> state)
      : state_(std::move(state)) {}
  std::shared_ptr<internal::CancellationState> state_;
};

class CancellationSource {
 public:
  CancellationSource() : state_(std::make_shared<internal::CancellationState>()) {}

  CancellationToken token() const { return CancellationToken(state_); }
  // Idempotent. Wakes every SleepUntil of its tokens.
  void Cancel() {
    {
      // Under the mutex, so a sleeper between its check and its wait cannot miss the signal.
      MutexLock lock(state_->mu);
      state_->cancelled.store(true, std::memory_order_release);
    }
    state_->cv.SignalAll();
  }
  bool cancelled() const { return state_->cancelled.load(std::memory_order_acquire); }

 private:
  std::shared_ptr<internal::CancellationState> state_;
};

inline bool CancellationToken::SleepUntil(Clock& clock, TimePoint t) const {
  if (state_ == nullptr) {
    clock.SleepUntil(t);
    return true;
  }
  internal::CancellationState& s = *state_;
  MutexLock lock(s.mu);
  return !clock.WaitUntil(s.mu, s.cv, t, [&] {
    s.mu.AssertHeld();  // WaitUntil calls pred with its `mu` (this s.mu) held
    return s.cancelled.load(std::memory_order_acquire);
  });
}

}  // namespace keel
