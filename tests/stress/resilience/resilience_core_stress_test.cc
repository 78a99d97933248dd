// 8 threads hammer a circuit breaker through open / half-open / closed cycles and a semaphore
// bulkhead, checking the invariants that only show under contention. Catch2 assertions are not
// thread-safe: workers count into atomics and the main thread asserts.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "keel/resilience/bulkhead.h"
#include "keel/resilience/circuit_breaker.h"

namespace {

using namespace std::chrono_literals;
using keel::CircuitBreaker;
using State = CircuitBreaker::State;

constexpr int kThreads = 8;

// A reusable barrier on keel::Mutex (visible to TSan).
class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void Arrive() {
    keel::MutexLock lock(mu_);
    const int64_t gen = generation_;
    if (++arrived_ == n_) {
      arrived_ = 0;
      ++generation_;
      cv_.SignalAll();
      return;
    }
    while (gen == generation_) cv_.Wait(mu_);
  }

 private:
  keel::Mutex mu_;
  keel::CondVar cv_;
  const int n_;
  int arrived_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t generation_ ABSL_GUARDED_BY(mu_) = 0;
};

TEST_CASE("8 threads cycling a circuit breaker never exceed the half-open probe limit") {
  keel::ManualClock clock;
  constexpr int kPermits = 3;
  auto breaker = CircuitBreaker::Create({.name = "stress",
                                         .window_size = 20,
                                         .minimum_calls = 10,
                                         .half_open_permits = kPermits,
                                         .wait_in_open = 1s,
                                         .max_wait_in_half_open = CircuitBreaker::kNoHalfOpenLimit},
                                        clock)
                     .value();
  std::atomic<int> transitions_to_open{0};
  breaker->AddListener([&](State, State to) {
    if (to == State::kOpen) ++transitions_to_open;
  });

  constexpr int kCycles = 150;
  Barrier barrier(kThreads + 1);
  std::atomic<bool> stop_chaos{false};
  std::atomic<int> probes_admitted{0};
  std::atomic<int> over_limit_cycles{0};
  std::atomic<uint64_t> granted{0}, rejected{0};
  std::atomic<int> phase_fail_probes{0};  // 1: probes record failures this cycle

  auto worker = [&](int id) {
    std::mt19937 rng(static_cast<uint32_t>(id));
    std::vector<CircuitBreaker::Permit> held;
    for (int cycle = 0; cycle < kCycles; ++cycle) {
      // Phase A: chaos while CLOSED until the breaker opens; records race with the transition.
      while (!stop_chaos.load()) {
        auto p = breaker->TryAcquire();
        if (!p.ok()) {
          ++rejected;
          continue;
        }
        ++granted;
        const uint32_t r = rng() % 10;
        if (r == 0) continue;  // dropped: ignored
        p->Record(r < 7 ? absl::UnavailableError("x") : absl::OkStatus(), 1ms);
      }
      barrier.Arrive();  // A done; the driver advances the clock past wait_in_open
      barrier.Arrive();
      // Phase B: everyone races for probes at once (and to observe OPEN -> HALF_OPEN).
      for (int i = 0; i < 200; ++i) {
        auto p = breaker->TryAcquire();
        if (p.ok()) {
          ++granted;
          ++probes_admitted;
          held.push_back(std::move(*p));
        } else {
          ++rejected;
        }
      }
      barrier.Arrive();  // B done; the driver checks the probe count
      barrier.Arrive();
      // Phase C: the probes finish concurrently and decide CLOSED or OPEN.
      const bool fail = phase_fail_probes.load() == 1;
      for (auto& p : held) p.Record(fail ? absl::UnavailableError("x") : absl::OkStatus(), 1ms);
      held.clear();
      barrier.Arrive();  // C done
      barrier.Arrive();
    }
  };

  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) threads.emplace_back(worker, t);
  int wrong_end_state = 0;
  for (int cycle = 0; cycle < kCycles; ++cycle) {
    // Let phase A run until the breaker is open (if the previous cycle reopened it, it already
    // is; wait_in_open ends in the driver's Advance below).
    while (breaker->state() != State::kOpen) std::this_thread::yield();
    stop_chaos = true;
    barrier.Arrive();
    clock.Advance(1s);
    probes_admitted = 0;
    phase_fail_probes = cycle % 3 == 0 ? 1 : 0;
    barrier.Arrive();
    barrier.Arrive();
    if (probes_admitted.load() != kPermits) ++over_limit_cycles;
    barrier.Arrive();
    barrier.Arrive();
    const State expected = phase_fail_probes.load() == 1 ? State::kOpen : State::kClosed;
    if (breaker->state() != expected) ++wrong_end_state;
    if (expected == State::kOpen) {
      clock.Advance(1s);  // let it go half-open...
      breaker->Reset();   // ...and start the next cycle closed
    }
    stop_chaos = false;
    barrier.Arrive();
  }
  for (auto& t : threads) t.join();

  CHECK(over_limit_cycles == 0);
  CHECK(wrong_end_state == 0);
  CHECK(transitions_to_open >= kCycles);
  const auto stats = breaker->Stats();
  // Every granted permit was recorded or dropped exactly once; every rejection was counted.
  CHECK(stats.successful_total + stats.failed_total + stats.ignored_total == granted.load());
  CHECK(stats.not_permitted_total == rejected.load());
}

TEST_CASE("8 threads on a circuit breaker with a moving clock keep its counters consistent") {
  keel::ManualClock clock;
  auto breaker = CircuitBreaker::Create({.name = "chaos",
                                         .slow_call_duration = 50ms,
                                         .window_type = CircuitBreaker::WindowType::kTimeBased,
                                         .window_size = 2,
                                         .minimum_calls = 5,
                                         .half_open_permits = 2,
                                         .wait_in_open = 10ms,
                                         .max_wait_in_half_open = 5ms},
                                        clock)
                     .value();
  std::atomic<int> events{0};
  breaker->AddListener([&](State, State) { ++events; });
  std::atomic<bool> done{false};
  std::atomic<uint64_t> granted{0}, rejected{0};
  std::thread ticker([&] {
    while (!done.load()) {
      clock.Advance(1ms);
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<uint32_t>(t + 100));
      for (int i = 0; i < 20000; ++i) {
        if (i % 1000 == 999 && t == 0) breaker->TransitionTo(State::kClosed);
        auto p = breaker->TryAcquire();
        if (!p.ok()) {
          ++rejected;
          continue;
        }
        ++granted;
        const uint32_t r = rng() % 8;
        if (r == 0) continue;
        p->Record(r < 4 ? absl::UnavailableError("x") : absl::OkStatus(), r == 5 ? 60ms : 1ms);
        if (i % 97 == 0) (void)breaker->Stats();
      }
    });
  }
  for (auto& t : threads) t.join();
  done = true;
  ticker.join();
  const auto stats = breaker->Stats();
  CHECK(stats.successful_total + stats.failed_total + stats.ignored_total == granted.load());
  CHECK(stats.not_permitted_total == rejected.load());
  CHECK(events > 0);
  CHECK(stats.buffered_calls >= 0);
  CHECK(stats.failed_calls <= stats.buffered_calls);
}

TEST_CASE("8 threads never hold more than max_concurrent semaphore bulkhead permits") {
  constexpr int kMax = 3;
  auto bulkhead =
      keel::SemaphoreBulkhead::Create({.name = "stress", .max_concurrent = kMax, .max_wait = 1s})
          .value();
  std::atomic<int> holding{0}, peak{0};
  std::atomic<uint64_t> acquired{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 3000; ++i) {
        auto p = (i + t) % 2 == 0 ? bulkhead->TryAcquire()
                                  : bulkhead->Acquire(keel::Deadline::After(1s));
        if (!p.ok()) {
          ++failed;
          continue;
        }
        ++acquired;
        const int now = ++holding;
        int seen = peak.load();
        while (now > seen && !peak.compare_exchange_weak(seen, now)) {
        }
        if (i % 3 == 0) std::this_thread::yield();
        --holding;
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(peak <= kMax);
  CHECK(peak >= 1);
  const auto stats = bulkhead->Stats();
  CHECK(stats.in_use == 0);
  CHECK(stats.waiting == 0);
  CHECK(stats.acquired_total == acquired.load());
  CHECK(stats.rejected_total + stats.timed_out_total == failed.load());
}

}  // namespace
