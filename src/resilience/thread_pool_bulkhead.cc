#include "keel/resilience/thread_pool_bulkhead.h"

#include <string>

#include "keel/internal/exception.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel {
namespace {

// Counters below are only written under the pool's mutex, so a relaxed load + store is a
// race-free increment; readers (Stats, metrics) need no ordering with anything else.
template <typename T>
void Set(std::atomic<T>& a, T v) {
  a.store(v, std::memory_order_relaxed);
}
void Add(std::atomic<uint64_t>& a, uint64_t n) { Set(a, a.load(std::memory_order_relaxed) + n); }

}  // namespace

absl::StatusOr<std::unique_ptr<ThreadPoolBulkhead>> ThreadPoolBulkhead::Create(
    Options options, Clock& clock, MetricsRegistry* metrics) {
  const internal::OptionsOf of("thread pool", options.name);
  if (options.name.empty()) return internal::InvalidOption(of, "name", "non-empty", "\"\"");
  KEEL_RETURN_IF_ERROR(internal::RequireAtLeast(of, "threads", options.threads, 1));
  KEEL_RETURN_IF_ERROR(internal::RequireAtLeast(of, "queue_capacity", options.queue_capacity, 0));
  std::unique_ptr<ThreadPoolBulkhead> pool(new ThreadPoolBulkhead(std::move(options), clock));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(pool->RegisterMetrics(*metrics));
  pool->workers_.reserve(static_cast<size_t>(pool->options_.threads));
  for (int i = 0; i < pool->options_.threads; ++i) {
    pool->workers_.emplace_back([p = pool.get()] { p->WorkerLoop(); });
  }
  return pool;
}

absl::Status ThreadPoolBulkhead::TaskThrewError(std::string_view pool_name,
                                                std::exception_ptr thrown) {
  return absl::InternalError(internal::StrCat("thread pool \"", pool_name, "\": the task threw ",
                                              internal::DescribeException(thrown)));
}

ThreadPoolBulkhead::~ThreadPoolBulkhead() { Shutdown(ShutdownMode::kDrain); }

absl::Status ThreadPoolBulkhead::RegisterMetrics(MetricsRegistry& metrics) {
  const Labels name = {{"name", options_.name}};
  auto keep = [&](absl::StatusOr<MetricsRegistry::Registration> r) -> absl::Status {
    if (!r.ok()) return r.status();
    registrations_.push_back(std::move(r).value());
    return absl::OkStatus();
  };
  auto read = [](const auto& a) {
    return [&a] { return static_cast<double>(a.load(std::memory_order_relaxed)); };
  };
  KEEL_RETURN_IF_ERROR(keep(metrics.AddGaugeCallback("keel_thread_pool_active", "Tasks running.",
                                                     name, read(active_view_))));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddGaugeCallback(
      "keel_thread_pool_queued", "Tasks waiting for a thread.", name, read(queued_view_))));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback("keel_thread_pool_submitted_total",
                                                       "Tasks accepted.", name, read(submitted_))));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_thread_pool_rejected_total", "Tasks rejected: queue full.", name, read(rejected_))));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_thread_pool_completed_total", "Tasks run to completion.", name, read(completed_))));
  KEEL_RETURN_IF_ERROR(
      keep(metrics.AddCounterCallback("keel_thread_pool_task_exceptions_total",
                                      "Tasks that threw (caught).", name, read(task_exceptions_))));
  return absl::OkStatus();
}

absl::Status ThreadPoolBulkhead::Enqueue(std::unique_ptr<Task>& task) {
  {
    MutexLock lock(mu_);
    if (shut_down_) {
      return absl::CancelledError(
          internal::StrCat("thread pool \"", options_.name, "\": shut down"));
    }
    // Idle threads take queued tasks at once, so they extend the capacity one for one.
    if (static_cast<int64_t>(queue_.size()) >= int64_t{options_.queue_capacity} + int64_t{idle_}) {
      Add(rejected_, 1);
      return absl::ResourceExhaustedError(internal::StrCat(
          "thread pool \"", options_.name, "\": full (", active_, "/", options_.threads,
          " threads busy, ", queue_.size(), "/", options_.queue_capacity, " queued)"));
    }
    queue_.push_back(std::move(task));
    Set(queued_view_, static_cast<int>(queue_.size()));
    Add(submitted_, 1);
  }
  work_cv_.Signal();
  return absl::OkStatus();
}

void ThreadPoolBulkhead::WorkerLoop() {
  for (;;) {
    std::unique_ptr<Task> task;
    {
      MutexLock lock(mu_);
      ++idle_;
      while (queue_.empty() && !shut_down_) work_cv_.Wait(mu_);
      --idle_;
      if (queue_.empty()) return;  // shut down, and nothing left to drain
      task = std::move(queue_.front());
      queue_.pop_front();
      ++active_;
      Set(queued_view_, static_cast<int>(queue_.size()));
      Set(active_view_, active_);
    }
    // Completes the future; a task that throws completes it with INTERNAL instead.
    const bool ran = task->Run(options_.name);
    // Destroys the callable's captures outside the lock. A throwing destructor is a bug the
    // caller cannot see through the future; it still must not take the worker down.
    try {
      task.reset();
    } catch (...) {  // NOLINT(bugprone-empty-catch): counted below
    }
    if (!ran) task_exceptions_.fetch_add(1, std::memory_order_relaxed);
    MutexLock lock(mu_);
    --active_;
    Set(active_view_, active_);
    Add(completed_, 1);
  }
}

void ThreadPoolBulkhead::Shutdown(ShutdownMode mode) {
  std::deque<std::unique_ptr<Task>> cancelled;
  {
    MutexLock lock(mu_);
    shut_down_ = true;
    if (mode == ShutdownMode::kCancelQueued) {
      cancelled.swap(queue_);
      Set(queued_view_, 0);
      Add(cancelled_, cancelled.size());
    }
  }
  work_cv_.SignalAll();
  // Futures are completed outside the lock: a waiter woken by them may call Stats() at once.
  for (auto& t : cancelled) {
    t->Cancel(absl::CancelledError(
        internal::StrCat("thread pool \"", options_.name, "\": shut down before the task ran")));
  }
  cancelled.clear();
  MutexLock join_lock(join_mu_);
  for (std::thread& w : workers_) {
    if (w.joinable()) w.join();
  }
}

ThreadPoolBulkheadStats ThreadPoolBulkhead::Stats() const {
  ThreadPoolBulkheadStats s;
  {
    MutexLock lock(mu_);
    s.active = active_;
    s.queued = static_cast<int>(queue_.size());
    s.shut_down = shut_down_;
  }
  s.threads = options_.threads;
  s.submitted_total = submitted_.load(std::memory_order_relaxed);
  s.rejected_total = rejected_.load(std::memory_order_relaxed);
  s.completed_total = completed_.load(std::memory_order_relaxed);
  s.cancelled_total = cancelled_.load(std::memory_order_relaxed);
  s.task_exceptions_total = task_exceptions_.load(std::memory_order_relaxed);
  return s;
}

}  // namespace keel
