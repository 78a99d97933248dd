// Helpers for the Redis lock integration tests. Test code only.
#pragma once

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>

#include "integration/redis_limits/helpers.h"
#include "keel/async/future.h"
#include "keel/redis/lock.h"

namespace keel::test {

inline std::unique_ptr<redis::Lock> MakeLock(redis::Client& client, redis::Lock::Options options,
                                             Clock& clock = SteadyClock(), Timer* timer = nullptr) {
  auto lock = redis::Lock::Create(std::move(options), client, clock, nullptr, timer);
  REQUIRE(lock.ok());
  return std::move(*lock);
}

inline redis::LockGuard MustAcquire(redis::Lock& lock) {
  auto guard = lock.TryAcquire(Deadline::After(std::chrono::seconds(2)));
  REQUIRE(guard.ok());
  REQUIRE(guard->has_value());
  return std::move(**guard);
}

// on_lost reports into a promise, so a test waits for it with a deadline instead of polling.
struct LostProbe {
  std::shared_ptr<Promise<void>> promise = std::make_shared<Promise<void>>();
  Future<void> future = promise->future();
  std::function<void(const redis::LockLost&)> callback() {
    // A fresh Status, not a copy: a Status shared across threads reads as a race under TSan.
    return [p = promise](const redis::LockLost& lost) {
      p->Set(absl::Status(lost.reason.code(), lost.reason.message()));
    };
  }
};

}  // namespace keel::test
