// Multi-threaded load on a redis::Client that records every call, for failure tests. Test code.
#pragma once

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "keel/redis/client.h"

namespace keel::test {

using Clock = std::chrono::steady_clock;
using keel::redis::Client;
using namespace std::chrono_literals;

struct Call {
  Clock::time_point start;
  Clock::time_point end;
  absl::StatusCode code;
};

// Runs `threads` workers that INCR a key with `deadline` per call until stopped, recording every
// call (Catch2 assertions are not thread-safe: the main thread checks the records afterwards).
class Load {
 public:
  Load(Client& client, int threads, keel::Duration deadline) {
    calls_.resize(threads);
    for (int t = 0; t < threads; ++t) {
      workers_.emplace_back([this, &client, t, deadline] {
        while (!stop_.load(std::memory_order_relaxed)) {
          Call call;
          call.start = Clock::now();
          call.code =
              client.Command(keel::Deadline::After(deadline), "INCR", "keel:load").status().code();
          call.end = Clock::now();
          calls_[t].push_back(call);
          // Failing calls return at once; pace them so the records stay small.
          if (call.code != absl::StatusCode::kOk) std::this_thread::sleep_for(2ms);
        }
      });
    }
  }
  std::vector<Call> Stop() {
    stop_ = true;
    for (auto& w : workers_) w.join();
    std::vector<Call> all;
    for (auto& c : calls_) all.insert(all.end(), c.begin(), c.end());
    return all;
  }

 private:
  std::atomic<bool> stop_{false};
  std::vector<std::vector<Call>> calls_;
  std::vector<std::thread> workers_;
};

inline std::string Describe(const Call& c, Clock::time_point origin) {
  using std::chrono::duration_cast;
  using std::chrono::milliseconds;
  return "call at +" + std::to_string(duration_cast<milliseconds>(c.start - origin).count()) +
         "ms took " + std::to_string(duration_cast<milliseconds>(c.end - c.start).count()) +
         "ms: " + absl::StatusCodeToString(c.code);
}

}  // namespace keel::test
