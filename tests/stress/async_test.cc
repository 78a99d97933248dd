// Futures completed on one thread while coroutines register on another: every coroutine resumes
// exactly once with its own value (run under TSan by scripts/test).
#include <atomic>
#include <catch2/catch.hpp>
#include <thread>
#include <vector>

#include "keel/async/future.h"
#include "keel/async/task.h"

namespace keel {
namespace {

Task<int> PlusOne(Future<int> f, std::atomic<int>* resumed) {
  absl::StatusOr<int> v = co_await std::move(f);
  resumed->fetch_add(1);
  if (!v.ok()) co_return v.status();
  co_return *v + 1;
}

TEST_CASE("coroutines awaiting futures set concurrently each resume once with their value",
          "[async][stress]") {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 5000;
  std::atomic<int> resumed{0};
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::vector<Promise<int>> promises(kPerThread);
      std::vector<Future<int>> futures;
      futures.reserve(kPerThread);
      for (auto& p : promises) futures.push_back(p.future());
      std::vector<Future<int>> outs;
      outs.reserve(kPerThread);
      // The setter races the coroutines' registration on each future.
      std::thread setter([&] {
        for (int i = 0; i < kPerThread; ++i) {
          if (i % 7 == 0) {
            promises[i] = Promise<int>();  // dropped: CANCELLED
          } else {
            promises[i].Set(t * kPerThread + i);
          }
        }
      });
      for (int i = 0; i < kPerThread; ++i) {
        outs.push_back(PlusOne(std::move(futures[i]), &resumed).Start());
      }
      setter.join();
      for (int i = 0; i < kPerThread; ++i) {
        absl::StatusOr<int> r = outs[i].Get();
        if (i % 7 == 0) {
          if (r.status().code() != absl::StatusCode::kCancelled) wrong.fetch_add(1);
        } else if (!r.ok() || *r != t * kPerThread + i + 1) {
          wrong.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(wrong.load() == 0);
  CHECK(resumed.load() == kThreads * kPerThread);
}

}  // namespace
}  // namespace keel
