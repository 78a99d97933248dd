// keel/async/future.h: the result of work finishing on another thread: waited for with a
// deadline, handed to a callback, or awaited by a C++20 coroutine.
//
// Defines `keel::Future<T>` (the reader), `keel::Promise<T>` (the writer) and
// `keel::FutureResult<T>`. Unlike std::future, waiting is bounded by a keel::Deadline on an
// injected clock (so tests advance a ManualClock instead of sleeping), and the result is an
// absl::StatusOr<T> (absl::Status for Future<void>): failures never throw.
//
// A Future is consumed exactly once, by one of:
//   - Get(deadline): blocks until the result is ready or the deadline passes;
//   - Then(fn) / Then(executor, fn): `fn(FutureResult<T>)` runs once the result is ready, on the
//     thread that completed the promise (or at once on the caller's, when already ready), or
//     posted to `executor`;
//   - `co_await std::move(future)` in a coroutine (keel::Task, keel/async/task.h, or any other
//     coroutine type): the coroutine resumes with the FutureResult<T> on the completing thread,
//     or, with `co_await std::move(future).Via(executor)`, on `executor`.
// The completing thread is a keel::ThreadPoolBulkhead worker or keel's I/O thread: never block in
// a callback or coroutine resumed there (see keel/async/executor.h).
//
// Thread safety: a Promise and its Future may be used from different threads. One Future must not
// be used by two threads at once without external synchronization (it is a single consumer).
//
//   keel::Future<int> f = pool->Submit([]() -> absl::StatusOr<int> { return Compute(); });
//   absl::StatusOr<int> r = f.Get(keel::Deadline::After(100ms));
//   if (absl::IsDeadlineExceeded(r.status())) { /* Compute() keeps running: see below */ }
//
//   pool->Submit(Compute).Then([](absl::StatusOr<int> r) { Log(r); });
//   absl::StatusOr<int> v = co_await pool->Submit(Compute);   // inside a coroutine
//
// A Get() that gives up does not stop the work: C++ cannot stop a running thread. Pass the task a
// keel::CancellationToken and cancel it when you give up, so the orphaned work stops at its next
// check (see keel/resilience/cancellation.h). A Promise destroyed without a result completes its
// Future with CANCELLED, so a waiter (a blocked Get, a callback, a suspended coroutine) is always
// completed exactly once.
#pragma once

#include <coroutine>
#include <memory>
#include <optional>
#include <type_traits>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/async/executor.h"
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
  // Set by Then (and co_await): the promise hands the result to it instead of storing it.
  absl::AnyInvocable<void(FutureResult<T>)> on_ready ABSL_GUARDED_BY(mu);
  bool retrieved ABSL_GUARDED_BY(mu) = false;  // consumed by Get, Then or co_await
};

inline absl::Status AlreadyConsumed() {
  return absl::FailedPreconditionError(
      "future: result already consumed by an earlier Get, Then or co_await");
}

}  // namespace internal

template <typename T>
class Promise;

template <typename T>
class Future {
 public:
  using value_type = T;

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
  // consumed (an earlier Get, Then or co_await); CANCELLED or RESOURCE_EXHAUSTED when the task
  // was never run (a pool shut down or full, a promise dropped).
  FutureResult<T> Get(Deadline deadline) {
    internal::FutureState<T>& s = *state_;
    MutexLock lock(s.mu);
    if (s.retrieved) return internal::AlreadyConsumed();
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

  // Consumes the future: `fn(FutureResult<T>)` runs exactly once, when the result is ready, on
  // `executor` (Post). With the InlineExecutor (the default) it runs on the thread that completes
  // the promise, or on this thread before Then returns when the result is already there. An
  // exception thrown by `fn` is caught and dropped (keel's threads must survive user code).
  // A future already consumed calls `fn` with FAILED_PRECONDITION.
  template <typename Fn>
  void Then(Executor& executor, Fn&& fn) {
    Deliver([&executor, fn = std::forward<Fn>(fn)](FutureResult<T> r) mutable {
      executor.Post([fn = std::move(fn), r = std::move(r)]() mutable {
        try {
          fn(std::move(r));
        } catch (...) {  // dropped: see above
        }
      });
    });
  }
  template <typename Fn>
  void Then(Fn&& fn) {
    // Then(InlineExecutor(), fn) without the task Post would wrap it in: one allocation fewer.
    Deliver([fn = std::forward<Fn>(fn)](FutureResult<T> r) mutable {
      try {
        fn(std::move(r));
      } catch (...) {  // dropped: see above
      }
    });
  }

  // Whether the result is ready (Get would not block).
  bool ready() const {
    MutexLock lock(state_->mu);
    return state_->result.has_value() || state_->retrieved;
  }

  // `co_await std::move(future)` yields the FutureResult<T>, resuming on the completing thread;
  // `co_await std::move(future).Via(executor)` resumes on `executor`. A future already complete
  // does not suspend at all.
  class Awaiter {
   public:
    bool await_ready() const noexcept { return false; }
    // Registers the resumption; false (resume at once, no suspension) when the result is
    // already there, so a coroutine never resumes itself from inside await_suspend.
    bool await_suspend(std::coroutine_handle<> h) {
      internal::FutureState<T>& s = *state_;
      Executor* executor = executor_;
      MutexLock lock(s.mu);
      if (s.retrieved) {
        result_.emplace(internal::AlreadyConsumed());
        return false;
      }
      if (s.result.has_value() && executor == &InlineExecutor()) {
        s.retrieved = true;
        result_.emplace(std::move(*s.result));
        s.result.reset();
        return false;
      }
      s.retrieved = true;
      if (s.result.has_value()) {  // ready, but the coroutine must resume on `executor`
        result_.emplace(std::move(*s.result));
        s.result.reset();
        executor->Post([h] { h.resume(); });
        return true;
      }
      // Once the promise can call this, `this` may resume and be gone at any moment: nothing
      // here touches the awaiter after the lock is released.
      s.on_ready = [this, h, executor](FutureResult<T> r) {
        result_.emplace(std::move(r));
        executor->Post([h] { h.resume(); });
      };
      return true;
    }
    FutureResult<T> await_resume() { return std::move(*result_); }

   private:
    friend class Future;
    explicit Awaiter(std::shared_ptr<internal::FutureState<T>> state) : state_(std::move(state)) {}
    std::shared_ptr<internal::FutureState<T>> state_;
    Executor* executor_ = &InlineExecutor();
    std::optional<FutureResult<T>> result_;
  };
  Awaiter operator co_await() && { return Awaiter(std::move(state_)); }
  // The awaiter of `co_await std::move(future).Via(executor)`: resumes on `executor`.
  Awaiter Via(Executor& executor) && {
    Awaiter a(std::move(state_));
    a.executor_ = &executor;
    return a;
  }

 private:
  friend class Promise<T>;
  explicit Future(std::shared_ptr<internal::FutureState<T>> state) : state_(std::move(state)) {}

  // Hands the result to `sink`: now, on this thread, when it is there; else from Promise::Set.
  void Deliver(absl::AnyInvocable<void(FutureResult<T>)> sink) {
    internal::FutureState<T>& s = *state_;
    std::optional<FutureResult<T>> now;
    {
      MutexLock lock(s.mu);
      if (s.retrieved) {
        now.emplace(internal::AlreadyConsumed());
      } else {
        s.retrieved = true;
        if (s.result.has_value()) {
          now.emplace(std::move(*s.result));
          s.result.reset();
        } else {
          s.on_ready = std::move(sink);
          return;
        }
      }
    }
    sink(std::move(*now));  // outside the lock
  }

  std::shared_ptr<internal::FutureState<T>> state_;
};

// The writing side: completes its Future exactly once. A Promise destroyed without Set() completes
// the Future with CANCELLED ("broken promise"), so no waiter waits for a result that cannot come.
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

  // Completes the future; later calls do nothing. A callback or coroutine waiting on the future
  // runs (or is posted to its executor) on this thread, after the future's lock is released.
  void Set(FutureResult<T> result) {
    if (state_ == nullptr) return;
    absl::AnyInvocable<void(FutureResult<T>)> on_ready;
    {
      MutexLock lock(state_->mu);
      if (state_->on_ready) {
        on_ready = std::move(state_->on_ready);
        state_->on_ready = nullptr;
      } else if (!state_->result.has_value() && !state_->retrieved) {
        state_->result.emplace(std::move(result));
      }
    }
    // Keep the state alive past the callback (it may destroy the awaiting frame, which holds the
    // last other reference).
    std::shared_ptr<internal::FutureState<T>> state = std::move(state_);
    if (on_ready) {
      on_ready(std::move(result));
    } else {
      state->cv.SignalAll();
    }
  }

 private:
  void Abandon() {
    if (state_ != nullptr)
      Set(absl::CancelledError("future: the task was dropped without running"));
  }
  std::shared_ptr<internal::FutureState<T>> state_;
};

}  // namespace keel
