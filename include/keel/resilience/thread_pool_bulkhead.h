// keel/resilience/thread_pool_bulkhead.h: run calls on a fixed pool of threads with a bounded
// queue, so a slow dependency holds at most `threads` threads and callers can stop waiting.
//
// Defines `keel::ThreadPoolBulkhead`. Submit(fn) queues fn and returns a keel::Future; a full
// queue or a shut-down pool is reported through the future at once (no exception, no blocking).
// This is also what lets a Timeout give up on a call that does not honour its deadline: the caller
// stops waiting in Future::Get, while the call itself runs on to completion on its pool thread
// (orphaned work). Bound that work by passing the task a keel::CancellationToken and cancelling
// it when giving up.
//
// Thread safety: thread-safe.
//
//   auto pool = keel::ThreadPoolBulkhead::Create({.name = "reports", .threads = 4,
//                                                 .queue_capacity = 16}).value();
//   keel::CancellationSource cancel;
//   keel::Future<Report> f = pool->Submit([token = cancel.token()]() -> absl::StatusOr<Report> {
//     return BuildReport(token);               // checks token.cancelled() between steps
//   });
//   absl::StatusOr<Report> r = f.Get(keel::Deadline::After(2s));
//   if (absl::IsDeadlineExceeded(r.status())) cancel.Cancel();  // stop the orphan early
//   pool->Shutdown(keel::ThreadPoolBulkhead::ShutdownMode::kDrain);
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/async/future.h"
#include "keel/clock.h"
#include "keel/metrics.h"
#include "keel/sync.h"

namespace keel {

namespace internal {
template <typename R>
struct FutureValueOf {};
template <>
struct FutureValueOf<absl::Status> {
  using type = void;
};
template <typename T>
struct FutureValueOf<absl::StatusOr<T>> {
  using type = T;
};
}  // namespace internal

struct ThreadPoolBulkheadStats;

class ThreadPoolBulkhead {
 public:
  enum class ShutdownMode {
    kDrain,         // run everything already queued, then stop
    kCancelQueued,  // complete queued tasks' futures with CANCELLED without running them
  };

  struct Options {
    // Names the pool in errors and metrics labels. Default: "thread-pool".
    std::string name = "thread-pool";

    // Worker threads, started by Create. Must be >= 1. Default: the number of hardware threads
    // (at least 1). Size it like a semaphore bulkhead's max_concurrent.
    int threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));

    // Tasks that may wait for a busy pool; Submit beyond that is rejected. A task an idle thread
    // can take at once never counts against it, so 0 means "run now or reject". Must be >= 0.
    // Default: 100 (Resilience4j's default).
    int queue_capacity = 100;
  };

  // Validates `options` and starts the threads. `clock` (used by the futures' Get) and `metrics`
  // (optional) must outlive the pool. Metrics (label name=<name>): keel_thread_pool_active,
  // keel_thread_pool_queued (gauges), keel_thread_pool_submitted_total,
  // keel_thread_pool_rejected_total, keel_thread_pool_completed_total,
  // keel_thread_pool_task_exceptions_total.
  // Errors: INVALID_ARGUMENT naming the bad field (`thread_pool.threads must be >= 1, got 0`).
  static absl::StatusOr<std::unique_ptr<ThreadPoolBulkhead>> Create(
      Options options, Clock& clock = SteadyClock(), MetricsRegistry* metrics = nullptr);

  ThreadPoolBulkhead(const ThreadPoolBulkhead&) = delete;
  ThreadPoolBulkhead& operator=(const ThreadPoolBulkhead&) = delete;
  // Shutdown(kDrain) if not shut down yet: queued work is run, not lost.
  ~ThreadPoolBulkhead();

  // Queues `fn` (called once, with no arguments, on a pool thread) and returns its Future.
  // `fn()` returns absl::StatusOr<T> (giving Future<T>) or absl::Status (giving Future<void>).
  // The future completes with RESOURCE_EXHAUSTED at once when the queue is full (`thread pool
  // "name": full (100 queued)`), with CANCELLED when the pool is shut down, and with INTERNAL
  // when `fn` throws (`thread pool "name": the task threw an exception: ...`): the exception is
  // caught on the pool thread, counted (task_exceptions_total), and the thread goes on.
  template <typename F>
  auto Submit(F&& fn) {
    using R = std::invoke_result_t<std::decay_t<F>&>;
    using T = typename internal::FutureValueOf<R>::type;
    Promise<T> promise(clock_);
    Future<T> future = promise.future();
    auto task =
        std::make_unique<TaskImpl<std::decay_t<F>, T>>(std::forward<F>(fn), std::move(promise));
    std::unique_ptr<Task> erased = std::move(task);
    if (absl::Status s = Enqueue(erased); !s.ok()) erased->Cancel(std::move(s));
    return future;
  }

  // Stops accepting work, then either runs (kDrain) or cancels (kCancelQueued) what is queued,
  // and waits for the threads to finish their current tasks and exit. Tasks running now always
  // run to completion. Idempotent; a later call's mode only applies to what is still queued.
  // REQUIRES: not called from one of the pool's own tasks.
  void Shutdown(ShutdownMode mode) ABSL_LOCKS_EXCLUDED(mu_);

  ThreadPoolBulkheadStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);
  const std::string& name() const { return options_.name; }

 private:
  struct Task {
    virtual ~Task() = default;
    // Runs the task and completes its future. Returns false when the task threw: the future
    // then holds INTERNAL, and the worker thread carries on.
    virtual bool Run(std::string_view pool_name) = 0;
    virtual void Cancel(absl::Status why) = 0;
  };
  template <typename F, typename T>
  struct TaskImpl final : Task {
    TaskImpl(F f, Promise<T> p) : fn(std::move(f)), promise(std::move(p)) {}
    bool Run(std::string_view pool_name) override {
      try {
        promise.Set(fn());
        return true;
      } catch (...) {
        promise.Set(TaskThrewError(pool_name, std::current_exception()));
        return false;
      }
    }
    void Cancel(absl::Status why) override { promise.Set(std::move(why)); }
    F fn;
    Promise<T> promise;
  };

  ThreadPoolBulkhead(Options options, Clock& clock) : options_(std::move(options)), clock_(clock) {}
  // INTERNAL: `thread pool "name": the task threw an exception: <what()>`.
  static absl::Status TaskThrewError(std::string_view pool_name, std::exception_ptr thrown);
  absl::Status RegisterMetrics(MetricsRegistry& metrics);
  // Moves `task` into the queue, or leaves it with the caller and says why not.
  absl::Status Enqueue(std::unique_ptr<Task>& task) ABSL_LOCKS_EXCLUDED(mu_);
  void WorkerLoop() ABSL_LOCKS_EXCLUDED(mu_);

  const Options options_;
  Clock& clock_;

  mutable Mutex mu_;
  CondVar work_cv_;  // signalled when a task is queued or shutdown starts
  std::deque<std::unique_ptr<Task>> queue_ ABSL_GUARDED_BY(mu_);
  int active_ ABSL_GUARDED_BY(mu_) = 0;
  int idle_ ABSL_GUARDED_BY(mu_) = 0;  // threads waiting for work (they take queued tasks at once)
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> workers_;  // started in Create, joined by the first Shutdown
  Mutex join_mu_;                     // serializes joiners

  // Written under mu_ (load + store), read relaxed by Stats() and metrics callbacks.
  std::atomic<int> active_view_{0};
  std::atomic<int> queued_view_{0};
  std::atomic<uint64_t> submitted_{0};
  std::atomic<uint64_t> rejected_{0};
  std::atomic<uint64_t> completed_{0};
  std::atomic<uint64_t> cancelled_{0};
  std::atomic<uint64_t> task_exceptions_{0};

  std::vector<MetricsRegistry::Registration> registrations_;  // last: unregistered first
};

// A snapshot of a ThreadPoolBulkhead (its Stats()); counters (`*_total`) are cumulative since
// Create.
struct ThreadPoolBulkheadStats {
  int threads = 0;
  int active = 0;  // tasks running now
  int queued = 0;  // tasks waiting for a thread
  uint64_t submitted_total = 0;
  uint64_t rejected_total = 0;         // queue full
  uint64_t completed_total = 0;        // tasks run to completion (whatever they returned or threw)
  uint64_t task_exceptions_total = 0;  // tasks that threw (their futures hold INTERNAL)
  uint64_t cancelled_total = 0;        // queued tasks cancelled by Shutdown(kCancelQueued)
  bool shut_down = false;
};

}  // namespace keel
