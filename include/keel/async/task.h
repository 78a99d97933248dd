// keel/async/task.h: a coroutine type for code that awaits keel futures, without a thread per
// waiting call.
//
// Defines `keel::Task<T>` (a lazy coroutine yielding FutureResult<T>: absl::StatusOr<T>, or
// absl::Status for Task<void>) and `keel::ResumeOn(executor)` (an awaitable that moves the
// coroutine onto an executor).
//
//   keel::Task<std::string> Greeting(Client& redis, keel::Executor& workers) {
//     absl::StatusOr<int> n = co_await pool->Submit(CountVisitors);  // no thread blocks here
//     if (!n.ok()) co_return n.status();
//     co_await keel::ResumeOn(workers);        // leave the completing thread before heavy work
//     co_return Render(*n);
//   }
//   keel::Future<std::string> f = Greeting(redis, workers).Start();   // from ordinary code
//   absl::StatusOr<std::string> s = co_await Greeting(redis, workers); // from another Task
//
// Semantics:
//   - A Task does nothing until awaited (`co_await std::move(task)`, resuming the awaiting
//     coroutine when it finishes, by symmetric transfer) or started (`std::move(task).Start()`,
//     which runs it on the calling thread until its first suspension and returns a Future).
//   - `co_return` takes a FutureResult<T> (a T converts to it). An exception escaping the body
//     becomes an INTERNAL status naming it: nothing throws out of a Task.
//   - A Task destroyed without being awaited or started destroys its frame unrun. A started Task
//     owns itself and frees its frame when it finishes; a Task suspended on a keel future always
//     finishes, because the future is always completed (a dropped promise completes it with
//     CANCELLED), so a frame is never leaked nor resumed after it was freed.
//   - After a co_await the body runs on whatever thread completed the awaited future (keel's I/O
//     thread, a bulkhead worker) unless the await used `.Via(executor)` or the body moved with
//     `co_await ResumeOn(executor)`. Never block there (keel/async/executor.h).
//
// Thread safety: a Task is used by one thread; its body may move between threads at awaits.
#pragma once

#include <coroutine>
#include <exception>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "keel/async/executor.h"
#include "keel/async/future.h"
#include "keel/internal/exception.h"

namespace keel {

template <typename T>
class Task;

namespace internal {

// Runs a started Task to its end and hands the result to a Promise; frees its own frame.
struct Detached {
  struct promise_type {
    Detached get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept {}  // unreachable: awaiting a Task never throws
  };
};

template <typename T>
Detached RunDetached(Task<T> task, Promise<T> promise);

}  // namespace internal

template <typename T>
class [[nodiscard]] Task {
 public:
  struct promise_type {
    std::optional<FutureResult<T>> result;
    std::coroutine_handle<> continuation;

    Task get_return_object() noexcept {
      return Task(std::coroutine_handle<promise_type>::from_promise(*this));
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    auto final_suspend() noexcept {
      struct Final {
        bool await_ready() noexcept { return false; }
        std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) noexcept {
          std::coroutine_handle<> next = h.promise().continuation;
          return next ? next : std::noop_coroutine();
        }
        void await_resume() noexcept {}
      };
      return Final{};
    }
    void return_value(FutureResult<T> r) { result.emplace(std::move(r)); }
    void unhandled_exception() noexcept {
      result.emplace(absl::InternalError("task: the coroutine threw " +
                                         internal::DescribeException(std::current_exception())));
    }
  };

  Task(Task&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  Task& operator=(Task&& other) noexcept {
    if (this != &other) {
      if (handle_) handle_.destroy();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  ~Task() {
    if (handle_) handle_.destroy();
  }

  // `co_await std::move(task)`: runs the task and resumes the awaiting coroutine with its result.
  auto operator co_await() && noexcept {
    struct Awaiter {
      std::coroutine_handle<promise_type> handle;
      bool await_ready() noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
        handle.promise().continuation = awaiting;
        return handle;  // start the task; its final_suspend resumes `awaiting`
      }
      FutureResult<T> await_resume() { return std::move(*handle.promise().result); }
    };
    return Awaiter{handle_};  // the frame stays owned by this Task until it is destroyed
  }

  // Runs the task on this thread until its first suspension and returns its Future; the task
  // then owns itself. `clock` is the Future's clock for Get with an infinite deadline.
  Future<T> Start(Clock& clock = SteadyClock()) && {
    Promise<T> promise(clock);
    Future<T> future = promise.future();
    internal::RunDetached(std::move(*this), std::move(promise));
    return future;
  }

 private:
  explicit Task(std::coroutine_handle<promise_type> h) : handle_(h) {}
  std::coroutine_handle<promise_type> handle_;
};

namespace internal {
template <typename T>
Detached RunDetached(Task<T> task, Promise<T> promise) {
  FutureResult<T> result = co_await std::move(task);
  // The finished frame (and the parameters it still holds) goes before the result is delivered:
  // whoever it wakes may destroy what those parameters refer to.
  { Task<T> finished = std::move(task); }
  promise.Set(std::move(result));
}
}  // namespace internal

// `co_await keel::ResumeOn(executor)`: suspends and continues on `executor`.
inline auto ResumeOn(Executor& executor) {
  struct Awaiter {
    Executor& executor;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      executor.Post([h] { h.resume(); });
    }
    void await_resume() const noexcept {}
  };
  return Awaiter{executor};
}

}  // namespace keel
