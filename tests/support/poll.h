// Waiting for a condition another thread makes true, without a fixed sleep. Test code only.
#pragma once

#include <chrono>
#include <thread>

namespace keel::test {

// Yields until `done()` holds; false after `limit` of real time.
template <typename Pred>
bool PollUntil(Pred done, std::chrono::milliseconds limit = std::chrono::seconds(60)) {
  const auto give_up = std::chrono::steady_clock::now() + limit;
  while (!done()) {
    if (std::chrono::steady_clock::now() > give_up) return false;
    std::this_thread::yield();
  }
  return true;
}

}  // namespace keel::test
