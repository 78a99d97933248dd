// Quickstart: keel's futures and coroutines from a service's own event loop, without keel
// depending on the loop's library. The loop here is a few lines (a queue drained by one thread),
// standing in for Asio's io_context, libuv or a framework's reactor: keel only needs an Executor
// adapter that posts to it.
//
// One coroutine per request: it waits for a CPU-heavy step on a ThreadPoolBulkhead and for a
// retry backoff on a keel::Timer, holding no thread while it waits, and always resumes on the
// loop thread, so its own state needs no lock.
#include <chrono>
#include <cstdio>
#include <deque>
#include <string>
#include <thread>

#include "absl/functional/any_invocable.h"
#include "keel/async/executor.h"
#include "keel/async/future.h"
#include "keel/async/task.h"
#include "keel/async/timer.h"
#include "keel/resilience/retry.h"
#include "keel/resilience/thread_pool_bulkhead.h"
#include "keel/sync.h"

using namespace std::chrono_literals;

namespace {

// The service's event loop: Post from any thread, Run on the loop thread until Stop.
class EventLoop {
 public:
  void Post(absl::AnyInvocable<void()> fn) {
    keel::MutexLock lock(mu_);
    queue_.push_back(std::move(fn));
    cv_.Signal();
  }
  void Run() {
    for (;;) {
      absl::AnyInvocable<void()> fn;
      {
        keel::MutexLock lock(mu_);
        while (queue_.empty() && !stop_) cv_.Wait(mu_);
        if (queue_.empty()) return;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }
  void Stop() {
    keel::MutexLock lock(mu_);
    stop_ = true;
    cv_.Signal();
  }

 private:
  keel::Mutex mu_;
  keel::CondVar cv_;
  std::deque<absl::AnyInvocable<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
};

// The whole coupling between keel and the loop.
class LoopExecutor final : public keel::Executor {
 public:
  explicit LoopExecutor(EventLoop& loop) : loop_(loop) {}
  void Post(absl::AnyInvocable<void()> task) override { loop_.Post(std::move(task)); }

 private:
  EventLoop& loop_;
};

// A flaky dependency: fails its first attempt, answers on the second.
keel::Future<std::string> FetchProfile(const keel::CallContext& ctx) {
  if (ctx.attempt == 1) {
    return keel::Future<std::string>::Ready(absl::UnavailableError("profile service: busy"));
  }
  return keel::Future<std::string>::Ready(std::string("{\"name\":\"ada\"}"));
}

keel::Task<std::string> HandleRequest(int id, keel::ThreadPoolBulkhead& cpu, keel::Timer& timer,
                                      const keel::Retry& retry, keel::Executor& loop) {
  // Heavy work on the bulkhead's threads; the coroutine comes back to the loop afterwards.
  absl::StatusOr<int> score =
      co_await cpu.Submit([id]() -> absl::StatusOr<int> { return id * 7; }).Via(loop);
  if (!score.ok()) co_return score.status();
  // A retried call whose backoff is a sleep on the timer, not a blocked thread.
  absl::StatusOr<std::string> profile =
      co_await retry.ExecuteAsync(timer, keel::Deadline::After(1s), FetchProfile).Via(loop);
  if (!profile.ok()) co_return profile.status();
  co_return "request " + std::to_string(id) + ": score " + std::to_string(*score) + ", profile " +
      *profile;
}

}  // namespace

int main() {
  EventLoop loop;
  LoopExecutor on_loop(loop);
  auto cpu = keel::ThreadPoolBulkhead::Create({.name = "cpu", .threads = 2}).value();
  auto timer = keel::Timer::Create({.name = "timers"}).value();
  auto retry =
      keel::Retry::Create({.name = "profile",
                           .max_attempts = 3,
                           .backoff = {.kind = keel::Backoff::Kind::kConstant, .base = 20ms}})
          .value();

  std::thread loop_thread([&] { loop.Run(); });
  constexpr int kRequests = 3;
  int done = 0;
  // Requests start on the loop thread; their results are handled there too.
  for (int id = 1; id <= kRequests; ++id) {
    loop.Post([&, id] {
      HandleRequest(id, *cpu, *timer, retry, on_loop).Start().Then(on_loop, [&](auto result) {
        std::printf("%s\n",
                    result.ok() ? result->c_str() : std::string(result.status().message()).c_str());
        if (++done == kRequests) loop.Stop();  // runs on the loop thread: no lock needed
      });
    });
  }
  loop_thread.join();
  std::printf("retries: %llu (one per request, each a 20 ms sleep on the timer)\n",
              static_cast<unsigned long long>(retry.Stats().retries_total));
  return 0;
}
