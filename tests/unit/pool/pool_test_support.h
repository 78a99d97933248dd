// Shared by the pool unit tests: a fake resource, hooks a test steers, and small helpers.
#pragma once

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <thread>
#include <utility>

#include "keel/clock.h"
#include "keel/pool/pool.h"

namespace keel::pool_test {

using namespace std::chrono_literals;

// A resource that counts how many of its kind are alive.
struct Fake {
  Fake(int id, std::atomic<int>* alive) : id(id), alive(alive) { alive->fetch_add(1); }
  ~Fake() { alive->fetch_sub(1); }
  int id;
  std::atomic<int>* alive;
  bool healthy = true;  // what validate finds (a round trip)
  bool closed = false;  // what is_broken finds (a local check)
  int resets = 0;
};

// Hooks whose behaviour a test steers; counts calls.
struct Backend {
  std::atomic<int> alive{0};
  std::atomic<int> next_id{0};
  std::atomic<int> creates{0};
  std::atomic<int> validations{0};
  std::atomic<bool> refuse{false};

  PoolHooks<Fake> Hooks(bool with_validate = true) {
    PoolHooks<Fake> h;
    h.create = [this](Deadline) -> absl::StatusOr<std::unique_ptr<Fake>> {
      creates.fetch_add(1);
      if (refuse.load()) return absl::UnavailableError("connection refused");
      return std::make_unique<Fake>(next_id.fetch_add(1), &alive);
    };
    if (with_validate) {
      h.validate = [this](Fake& f, Deadline) {
        validations.fetch_add(1);
        return f.healthy ? absl::OkStatus() : absl::UnavailableError("ping failed");
      };
    }
    h.on_return = [](Fake& f) { ++f.resets; };
    h.is_broken = [](const Fake& f) { return f.closed; };
    return h;
  }
};

inline PoolOptions TestOptions(int max_size = 2) {
  return PoolOptions{.name = "test", .max_size = max_size, .background_maintenance = false};
}

inline std::unique_ptr<Pool<Fake>> MakePool(PoolOptions o, Backend& b, ManualClock& clock,
                                            bool with_validate = true) {
  auto pool = Pool<Fake>::Create(std::move(o), b.Hooks(with_validate), clock);
  REQUIRE(pool.ok());
  return std::move(*pool);
}

// Blocks (in real time) until `pred` holds; fails the test after 10 s rather than hanging.
template <typename Pred>
void AwaitTrue(Pred pred) {
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > give_up) FAIL("condition not reached within 10 s");
    std::this_thread::yield();
  }
}

}  // namespace keel::pool_test
