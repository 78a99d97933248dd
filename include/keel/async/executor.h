// keel/async/executor.h: where a completion callback or a resumed coroutine runs.
//
// Defines `keel::Executor` (the interface: Post a task), `keel::InlineExecutor()` (runs it on
// the posting thread, at once) and `keel::ManualExecutor` (a queue a test, or a single-threaded
// event loop, drains by hand).
//
// keel completes futures on the thread that produced the result: a keel::ThreadPoolBulkhead
// worker, or keel's I/O thread for network calls. Work done there delays every other call that
// thread serves, so the rule is: never block in a callback or a coroutine resumed there (no
// waiting on a lock held across I/O, no blocking call, no sleep). Hand heavier work to an
// executor of your own, e.g. an adapter posting to your event loop:
//
//   class LoopExecutor final : public keel::Executor {
//    public:
//     explicit LoopExecutor(MyLoop& loop) : loop_(loop) {}
//     void Post(absl::AnyInvocable<void()> task) override { loop_.post(std::move(task)); }
//    private:
//     MyLoop& loop_;
//   };
//
// Thread safety: Executor implementations must accept Post from any thread. ManualExecutor is
// thread-safe; RunPending runs the tasks on the calling thread.
#pragma once

#include <cstddef>
#include <deque>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "keel/sync.h"

namespace keel {

class Executor {
 public:
  virtual ~Executor() = default;
  // Runs `task` once, on a thread of the executor's choosing. Must not throw. A task that throws
  // is the executor's to handle; keel's own tasks never throw.
  virtual void Post(absl::AnyInvocable<void()> task) = 0;
};

namespace internal {
class Inline final : public Executor {
 public:
  void Post(absl::AnyInvocable<void()> task) override { task(); }
};
}  // namespace internal

// Runs each task at once, on the thread that posts it. The default wherever keel accepts an
// executor: completions run where the result was produced.
inline Executor& InlineExecutor() {
  static internal::Inline executor;
  return executor;
}

// Queues tasks until RunPending() runs them on the calling thread: deterministic tests, or a
// single-threaded loop that drains it between its own events.
class ManualExecutor final : public Executor {
 public:
  void Post(absl::AnyInvocable<void()> task) override ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(mu_);
    queue_.push_back(std::move(task));
  }
  // Runs the tasks queued so far, and those they post, until none is left; returns how many ran.
  size_t RunPending() ABSL_LOCKS_EXCLUDED(mu_) {
    size_t ran = 0;
    for (;;) {
      absl::AnyInvocable<void()> task;
      {
        MutexLock lock(mu_);
        if (queue_.empty()) return ran;
        task = std::move(queue_.front());
        queue_.pop_front();
      }
      task();  // outside the lock: a task may Post again
      ++ran;
    }
  }
  size_t pending() const ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(mu_);
    return queue_.size();
  }

 private:
  mutable Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> queue_ ABSL_GUARDED_BY(mu_);
};

}  // namespace keel
