// Helpers for the job queue integration tests. Test code only.
#pragma once

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "integration/redis_limits/helpers.h"
#include "keel/redis/queue.h"
#include "keel/sync.h"

namespace keel::test {

inline std::unique_ptr<redis::JobQueue> MakeQueue(redis::Client& client,
                                                  redis::JobQueue::Options options,
                                                  MetricsRegistry* metrics = nullptr) {
  auto queue = redis::JobQueue::Create(std::move(options), client, SteadyClock(), metrics);
  REQUIRE(queue.ok());
  return std::move(*queue);
}

inline std::unique_ptr<redis::Worker> MakeWorker(redis::JobQueue& queue,
                                                 redis::Worker::Options options,
                                                 MetricsRegistry* metrics = nullptr) {
  auto worker = redis::Worker::Create(std::move(options), queue, SteadyClock(), metrics);
  REQUIRE(worker.ok());
  return std::move(*worker);
}

// Job ids seen by handlers, thread-safe, with a wait for a count.
class Seen {
 public:
  // Catch2's assertions are not thread-safe: handlers record here, the test checks after.
  void Add(const std::string& id, int attempt = 0) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(mu_);
    ids_.push_back(id);
    attempts_.insert(attempt);
    cv_.SignalAll();
  }
  // The distinct attempt numbers recorded.
  std::set<int> attempts() const ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(mu_);
    return attempts_;
  }
  // True when at least `n` were seen before `timeout`.
  bool WaitFor(size_t n, std::chrono::milliseconds timeout) ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(mu_);
    return SteadyClock().WaitUntil(mu_, cv_, SteadyClock().Now() + timeout, [&] {
      mu_.AssertHeld();
      return ids_.size() >= n;
    });
  }
  std::vector<std::string> ids() const ABSL_LOCKS_EXCLUDED(mu_) {
    MutexLock lock(mu_);
    return ids_;
  }

 private:
  mutable Mutex mu_;
  CondVar cv_;
  std::vector<std::string> ids_ ABSL_GUARDED_BY(mu_);
  std::set<int> attempts_ ABSL_GUARDED_BY(mu_);
};

}  // namespace keel::test
