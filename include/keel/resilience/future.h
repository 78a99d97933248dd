// keel/resilience/future.h: the result of work running on another thread, awaited with a deadline.
//
// Defines `keel::Future<T>` (the reader) and `keel::Promise<T>` (the writer), as used by
// keel::ThreadPoolBulkhead::Submit. Unlike std::future, waiting is bounded by a keel::Deadline on
// an injected clock (so tests advance a ManualClock instead of sleeping), and the result is an
// absl::StatusOr<T> (absl::Status for Future<void>): failures never throw.
//
// Thread safety: a Promise and its Future may be used from different threads. One Future must not
// be used by two threads at once without external synchronization (it is a single consumer).
//
//   keel::Future<int> f = pool->Submit([]() -> absl::StatusOr<int> { return Compute(); });
//   absl::StatusOr<int> r = f.Get(keel::Deadline::After(100ms));
//   if (absl::IsDeadlineExceeded(r.status())) { /* Compute() keeps running: see below */ }
//
// A Get() that gives up does not stop the work: C++ cannot stop a running thread. Pass the task a
// keel::CancellationToken and cancel it when you give up, so the orphaned work stops at its next
// check (see keel/resilience/cancellation.h).
#pragma once

#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/sync.h"

namespace keel {

// What a Future<T> yields: absl::StatusOr<T>, or absl::Status for T = void.
template <typename T>
using FutureResult = std::conditional_t<std::is_void_v<T>, absl::Status, absl::StatusOr<T>>;

namespace internal {

template <typename T>
struct FutureState {
  explicit FutureState(Clock& c) : clock(c) {}
  Clock& clock;
  Mutex mu;
  CondVar cv;
  std::optional<FutureResult<T>> result ABSL_GUARDED_BY(mu);
  bool retrieved ABSL_GUARDED_BY(mu) = false;
};

}  // namespace internal

template <typename T>
class Promise;

template <typename T>
class Future {
 public:
  // A future that is already complete with `result` (e.g. a rejection).
  static Future Ready(FutureResult<T> result, Clock& clock = SteadyClock()) {
    auto state = std::make_shared<internal::FutureState<T>>(clock);
    {
      MutexLock lock(state->mu);
      state->result.emplace(std::move(result));
    }
    return Future(std::move(state));
  }

  Future(Future&&) noexcept = default;
  Future& operator=(Future&&) noexcept = default;
  Future(const Future&) = delete;
  Future& operator=(const Future&) = delete;

  // Waits until the result is ready or `deadline` passes (measured on the deadline's own clock;
  // an infinite deadline waits on the future's), then moves the result out.
  // Errors: the task's own error; DEADLINE_EXCEEDED when the deadline passed first (the task
  // keeps running; Get may be called again); FAILED_PRECONDITION when the result was already
  // retrieved by an earlier Get; CANCELLED or RESOURCE_EXHAUSTED when the task was never run (a
  // pool shut down or full).
  FutureResult<T> Get(Deadline deadline) {
    internal::FutureState<T>& s = *state_;
    MutexLock lock(s.mu);
    if (s.retrieved) {
      return absl::FailedPreconditionError("future: result already retrieved by an earlier Get");
    }
    const Clock& clock = deadline.IsInfinite() ? s.clock : deadline.clock();
    const bool done = clock.WaitUntil(s.mu, s.cv, deadline.time(), [&] {
      s.mu.AssertHeld();  // WaitUntil calls the predicate with the mutex held
      return s.result.has_value();
    });
    if (!done) {
      return absl::DeadlineExceededError(
          "future: deadline passed before the task finished (the task keeps running)");
    }
    s.retrieved = true;
    FutureResult<T> r = std::move(*s.result);
    s.result.reset();
    return r;
  }

  // Waits without a time limit.
  FutureResult<T> Get() { return Get(Deadline::Infinite()); }

  // Whether the result is ready (Get would not block).
  bool ready() const {
    MutexLock lock(state_->mu);
    return state_->result.has_value() || state_->retrieved;
  }

 private:
  friend class Promise<T>;
  explicit Future(std::shared_ptr<internal::FutureState<T>> state) : state_(std::move(state)) {}
  std::shared_ptr<internal::FutureState<T>> state_;
};

// The writing side: completes its Future exactly once. A Promise destroyed without Set() completes
// the Future with CANCELLED ("broken promise"), so a Get never waits for a result that cannot come.
template <typename T>
class Promise {
 public:
  explicit Promise(Clock& clock = SteadyClock())
      : state_(std::make_shared<internal::FutureState<T>>(clock)) {}
  Promise(Promise&&) noexcept = default;
  Promise& operator=(Promise&& other) noexcept {
    if (this != &other) {
      Abandon();
      state_ = std::move(other.state_);
    }
    return *this;
  }
  ~Promise() { Abandon(); }

  // The future reading this promise. Call once.
  Future<T> future() { return Future<T>(state_); }

  // Completes the future; later calls do nothing.
  void Set(FutureResult<T> result) {
    if (state_ == nullptr) return;
    {
      MutexLock lock(state_->mu);
      if (!state_->result.has_value() && !state_->retrieved)
        state_->result.emplace(std::move(result));
    }
    state_->cv.SignalAll();
    state_.reset();
  }

 private:
  void Abandon() {
    if (state_ != nullptr)
      Set(absl::CancelledError("future: the task was dropped without running"));
  }
  std::shared_ptr<internal::FutureState<T>> state_;
};

}  // namespace keel
