#include "keel/resilience/thread_pool_bulkhead.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "keel/resilience/cancellation.h"

namespace {

using namespace std::chrono_literals;
using keel::ThreadPoolBulkhead;

// A gate the test opens to let blocked tasks finish (no sleeps).
class Gate {
 public:
  void Wait() {
    keel::MutexLock lock(mu_);
    while (!open_) cv_.Wait(mu_);
  }
  void Open() {
    {
      keel::MutexLock lock(mu_);
      open_ = true;
    }
    cv_.SignalAll();
  }

 private:
  keel::Mutex mu_;
  keel::CondVar cv_;
  bool open_ = false;
};

std::unique_ptr<ThreadPoolBulkhead> Make(keel::Clock& clock, int threads, int queue) {
  auto p = ThreadPoolBulkhead::Create(
      {.name = "reports", .threads = threads, .queue_capacity = queue}, clock);
  REQUIRE(p.ok());
  return std::move(p).value();
}

// Blocks until `n` tasks are running on `pool`.
void AwaitActive(const ThreadPoolBulkhead& pool, int n) {
  while (pool.Stats().active < n) std::this_thread::yield();
}

TEST_CASE("thread pool bulkhead runs a task and returns its value through the future") {
  keel::ManualClock clock;
  auto pool = Make(clock, 2, 4);
  keel::Future<int> f = pool->Submit([]() -> absl::StatusOr<int> { return 42; });
  absl::StatusOr<int> r = f.Get();
  REQUIRE(r.ok());
  CHECK(*r == 42);
  CHECK(absl::IsFailedPrecondition(f.Get().status()));  // one-shot
}

TEST_CASE("thread pool bulkhead passes a task's error and supports absl::Status tasks") {
  keel::ManualClock clock;
  auto pool = Make(clock, 1, 4);
  keel::Future<void> ok = pool->Submit([] { return absl::OkStatus(); });
  keel::Future<void> bad = pool->Submit([] { return absl::InternalError("boom"); });
  keel::Future<std::string> err =
      pool->Submit([]() -> absl::StatusOr<std::string> { return absl::NotFoundError("x"); });
  CHECK(ok.Get().ok());
  CHECK(absl::IsInternal(bad.Get()));
  CHECK(absl::IsNotFound(err.Get().status()));
}

TEST_CASE("thread pool bulkhead Get returns DEADLINE_EXCEEDED while the task keeps running") {
  keel::ManualClock clock;
  auto pool = Make(clock, 1, 4);
  Gate gate;
  keel::CancellationSource cancel;
  std::atomic<bool> saw_cancel{false};
  keel::Future<int> f = pool->Submit([&, token = cancel.token()]() -> absl::StatusOr<int> {
    gate.Wait();
    saw_cancel = token.cancelled();
    return 7;
  });
  absl::StatusOr<int> r = absl::UnknownError("unset");
  std::thread getter([&] { r = f.Get(keel::Deadline::After(1s, clock)); });
  clock.AwaitSleepers(1);
  clock.Advance(1s);
  getter.join();
  CHECK(absl::IsDeadlineExceeded(r.status()));
  CHECK_FALSE(f.ready());
  cancel.Cancel();  // the orphaned task can notice it was given up on
  gate.Open();
  absl::StatusOr<int> late = f.Get();  // the result is still there for a later Get
  REQUIRE(late.ok());
  CHECK(*late == 7);
  CHECK(saw_cancel);
}

TEST_CASE("thread pool bulkhead rejects with RESOURCE_EXHAUSTED when the queue is full") {
  keel::ManualClock clock;
  auto pool = Make(clock, 1, 1);
  Gate gate;
  auto blocker = pool->Submit([&] {
    gate.Wait();
    return absl::OkStatus();
  });
  AwaitActive(*pool, 1);
  auto queued = pool->Submit([] { return absl::OkStatus(); });
  auto rejected = pool->Submit([] { return absl::OkStatus(); });
  CHECK(rejected.ready());  // reported at once, no waiting
  absl::Status s = rejected.Get(keel::Deadline::After(0s, clock));
  CHECK(absl::IsResourceExhausted(s));
  CHECK(std::string(s.message()).find("thread pool \"reports\": full") != std::string::npos);
  gate.Open();
  CHECK(blocker.Get().ok());
  CHECK(queued.Get().ok());
  CHECK(pool->Stats().rejected_total == 1);
}

TEST_CASE("thread pool bulkhead with queue_capacity 0 runs on an idle thread or rejects") {
  keel::ManualClock clock;
  auto pool = Make(clock, 1, 0);
  Gate gate;
  // The worker may not have reached its idle wait yet: retry until it takes the task.
  keel::Future<void> first = pool->Submit([&] {
    gate.Wait();
    return absl::OkStatus();
  });
  while (first.ready()) {
    first = pool->Submit([&] {
      gate.Wait();
      return absl::OkStatus();
    });
  }
  AwaitActive(*pool, 1);
  CHECK(absl::IsResourceExhausted(pool->Submit([] { return absl::OkStatus(); }).Get()));
  gate.Open();
  CHECK(first.Get().ok());
}

TEST_CASE("thread pool bulkhead never runs more than `threads` tasks at once") {
  auto pool = Make(keel::SteadyClock(), 3, 100);
  std::atomic<int> running{0}, peak{0};
  std::vector<keel::Future<void>> futures;
  for (int i = 0; i < 60; ++i) {
    futures.push_back(pool->Submit([&] {
      const int now = ++running;
      int p = peak.load();
      while (now > p && !peak.compare_exchange_weak(p, now)) {
      }
      std::this_thread::yield();
      --running;
      return absl::OkStatus();
    }));
  }
  for (auto& f : futures) CHECK(f.Get().ok());
  CHECK(peak <= 3);
  CHECK(peak >= 1);
}

TEST_CASE("thread pool bulkhead Shutdown(kDrain) runs every queued task") {
  keel::ManualClock clock;
  auto pool = Make(clock, 1, 10);
  Gate gate;
  std::atomic<int> ran{0};
  auto blocker = pool->Submit([&] {
    gate.Wait();
    return absl::OkStatus();
  });
  std::vector<keel::Future<void>> queued;
  for (int i = 0; i < 5; ++i) {
    queued.push_back(pool->Submit([&] {
      ++ran;
      return absl::OkStatus();
    }));
  }
  std::thread shutdown([&] { pool->Shutdown(ThreadPoolBulkhead::ShutdownMode::kDrain); });
  while (!pool->Stats().shut_down) std::this_thread::yield();
  CHECK(absl::IsCancelled(pool->Submit([] { return absl::OkStatus(); }).Get()));
  gate.Open();
  shutdown.join();
  CHECK(ran == 5);
  for (auto& f : queued) CHECK(f.Get().ok());
  CHECK(pool->Stats().completed_total == 6);
}

TEST_CASE("thread pool bulkhead Shutdown(kCancelQueued) cancels queued tasks' futures") {
  keel::ManualClock clock;
  auto pool = Make(clock, 1, 10);
  Gate gate;
  std::atomic<int> ran{0};
  auto blocker = pool->Submit([&] {
    gate.Wait();
    return absl::OkStatus();
  });
  AwaitActive(*pool, 1);
  std::vector<keel::Future<int>> queued;
  for (int i = 0; i < 3; ++i) {
    queued.push_back(pool->Submit([&]() -> absl::StatusOr<int> { return ++ran; }));
  }
  std::thread shutdown([&] { pool->Shutdown(ThreadPoolBulkhead::ShutdownMode::kCancelQueued); });
  for (auto& f : queued) CHECK(absl::IsCancelled(f.Get().status()));
  gate.Open();  // the running task finishes normally
  shutdown.join();
  CHECK(blocker.Get().ok());
  CHECK(ran == 0);
  CHECK(pool->Stats().cancelled_total == 3);
}

TEST_CASE("a promise dropped without a value completes its future with CANCELLED") {
  keel::Future<int> f = [] {
    keel::Promise<int> p;
    return p.future();
  }();
  CHECK(f.ready());
  CHECK(absl::IsCancelled(f.Get().status()));
}

TEST_CASE("thread pool bulkhead rejects bad options with INVALID_ARGUMENT naming the field") {
  auto threads = ThreadPoolBulkhead::Create({.threads = 0});
  CHECK(std::string(threads.status().message()) ==
        "thread pool \"thread-pool\": threads must be >= 1, got 0");
  auto queue = ThreadPoolBulkhead::Create({.threads = 1, .queue_capacity = -1});
  CHECK(absl::IsInvalidArgument(queue.status()));
  CHECK(std::string(queue.status().message()) ==
        "thread pool \"thread-pool\": queue_capacity must be >= 0, got -1");
}

TEST_CASE("thread pool bulkhead exports metrics") {
  keel::MetricsRegistry registry;
  auto pool =
      ThreadPoolBulkhead::Create({.name = "m", .threads = 1}, keel::SteadyClock(), &registry);
  REQUIRE(pool.ok());
  CHECK((*pool)->Submit([] { return absl::OkStatus(); }).Get().ok());
  (*pool)->Shutdown(ThreadPoolBulkhead::ShutdownMode::kDrain);
  const std::string text = registry.RenderPrometheus();
  CHECK(text.find("keel_thread_pool_submitted_total{name=\"m\"} 1") != std::string::npos);
  CHECK(text.find("keel_thread_pool_completed_total{name=\"m\"} 1") != std::string::npos);
}

}  // namespace

namespace {

TEST_CASE("thread pool bulkhead accepts move-only tasks and move-only results") {
  auto pool = Make(keel::SteadyClock(), 1, 4);
  auto owned = std::make_unique<int>(5);
  keel::Future<std::unique_ptr<int>> f =
      pool->Submit([p = std::move(owned)]() mutable -> absl::StatusOr<std::unique_ptr<int>> {
        return std::move(p);
      });
  absl::StatusOr<std::unique_ptr<int>> r = f.Get();
  REQUIRE(r.ok());
  CHECK(**r == 5);
}

}  // namespace

TEST_CASE("thread pool bulkhead task that throws completes its future with INTERNAL") {
  keel::ManualClock clock;
  auto pool = Make(clock, 1, 4);
  keel::Future<int> threw = pool->Submit(
      []() -> absl::StatusOr<int> { throw std::runtime_error("report generator crashed"); });
  keel::Future<void> odd = pool->Submit([]() -> absl::Status { throw 7; });
  absl::StatusOr<int> r = threw.Get();
  CHECK(absl::IsInternal(r.status()));
  CHECK(std::string(r.status().message()) ==
        "thread pool \"reports\": the task threw an exception: report generator crashed");
  absl::Status o = odd.Get();
  CHECK(std::string(o.message()) ==
        "thread pool \"reports\": the task threw a non-standard exception");
  // The single worker survived both: it still runs tasks.
  CHECK(pool->Submit([]() -> absl::StatusOr<int> { return 5; }).Get().value() == 5);
  pool->Shutdown(ThreadPoolBulkhead::ShutdownMode::kDrain);  // the worker has counted all three
  const auto s = pool->Stats();
  CHECK(s.task_exceptions_total == 2);
  CHECK(s.completed_total == 3);
}

TEST_CASE("thread pool bulkhead future Get waits on the deadline's own clock") {
  // The pool's futures keep real time; the caller's deadline is on a manual clock.
  keel::ManualClock caller_clock;
  auto pool = Make(keel::SteadyClock(), 1, 1);
  Gate gate;
  keel::Future<int> f = pool->Submit([&]() -> absl::StatusOr<int> {
    gate.Wait();
    return 1;
  });
  absl::StatusOr<int> r;
  std::thread waiter([&] { r = f.Get(keel::Deadline::After(2s, caller_clock)); });
  caller_clock.AwaitSleepers(1);
  caller_clock.Advance(2s);
  waiter.join();
  CHECK(absl::IsDeadlineExceeded(r.status()));
  gate.Open();
  CHECK(f.Get().value() == 1);
}
