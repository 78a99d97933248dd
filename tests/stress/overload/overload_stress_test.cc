// 8 threads through an AdaptiveLimiter with a CoDel queue (and through the pipeline stage), on
// the steady clock: the in-flight count never exceeds the limit, every permit is accounted for,
// waiters are granted or time out, and nothing races (run under TSan by scripts/test). The last
// case adds hedging (blocking on a thread pool and async on a timer), the adaptive throttle and
// fault injection to the limiter and its queue. Catch2 assertions are not thread-safe: workers
// count into atomics and the main thread asserts.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "keel/async/timer.h"
#include "keel/overload/adaptive_limit_stage.h"
#include "keel/overload/adaptive_limiter.h"
#include "keel/overload/adaptive_throttle_stage.h"
#include "keel/overload/fault_injection_stage.h"
#include "keel/overload/gradient_limit.h"
#include "keel/overload/hedge_stage.h"
#include "keel/overload/keyed_adaptive_limiter.h"
#include "keel/overload/vegas_limit.h"
#include "keel/overload/windowed_limit.h"
#include "keel/resilience/pipeline.h"
#include "keel/resilience/retry_budget.h"
#include "keel/resilience/thread_pool_bulkhead.h"

namespace {

using namespace std::chrono_literals;
using keel::overload::AdaptiveLimiter;

constexpr int kThreads = 8;

TEST_CASE("stress: 8 threads through an adaptive limiter with a CoDel queue") {
  std::mt19937_64 seed(5);
  std::atomic<int> limit_seen_max{0};
  AdaptiveLimiter::Options options{.name = "stress",
                                   .queue = keel::overload::CodelQueueOptions{
                                       .target = 1ms, .interval = 20ms, .max_waiting = 6}};
  options.on_limit_change = [&](int, int to) {
    int seen = limit_seen_max.load();
    while (to > seen && !limit_seen_max.compare_exchange_weak(seen, to)) {
    }
  };
  auto limiter =
      AdaptiveLimiter::Create(
          std::move(options),
          keel::overload::VegasLimit::Create({.initial_limit = 4, .max_limit = 6}, seed).value())
          .value();
  auto pipeline = keel::Pipeline<int>::Builder()
                      .Add(keel::overload::AdaptiveLimitStage<int>::Make(*limiter))
                      .Build();
  std::atomic<int> in_call{0};
  std::atomic<int> over_limit{0};
  std::atomic<int64_t> admitted{0}, refused{0}, unexpected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(static_cast<unsigned>(t));
      for (int i = 0; i < 2000; ++i) {
        const auto criticality = static_cast<keel::Criticality>(rng() % 4);
        auto body = [&] {
          // The limit is at most 6 (max_limit): never more calls inside at once.
          if (in_call.fetch_add(1) + 1 > 6) over_limit.fetch_add(1);
          if (rng() % 8 == 0) std::this_thread::sleep_for(50us);
          in_call.fetch_sub(1);
        };
        if (i % 2 == 0) {
          absl::StatusOr<AdaptiveLimiter::Permit> p =
              limiter->Acquire(keel::Deadline::After(5ms), criticality);
          if (!p.ok()) {
            const bool expected =
                absl::IsResourceExhausted(p.status()) || absl::IsDeadlineExceeded(p.status());
            (expected ? refused : unexpected).fetch_add(1);
            continue;
          }
          admitted.fetch_add(1);
          body();
          switch (rng() % 3) {
            case 0:
              p->OnSuccess();
              break;
            case 1:
              p->OnDropped();
              break;
            default:
              break;  // destroyed: ignored
          }
        } else {
          keel::CallContext ctx;
          ctx.deadline = keel::Deadline::After(5ms);
          ctx.criticality = criticality;
          absl::StatusOr<int> r = pipeline.Execute(ctx, [&](const keel::CallContext&) {
            body();
            return absl::StatusOr<int>(1);
          });
          if (r.ok()) {
            admitted.fetch_add(1);
          } else if (absl::IsResourceExhausted(r.status()) ||
                     absl::IsDeadlineExceeded(r.status())) {
            refused.fetch_add(1);
          } else {
            unexpected.fetch_add(1);
          }
        }
        if (i % 100 == 0) (void)limiter->Stats();
      }
    });
  }
  for (auto& th : threads) th.join();
  const auto s = limiter->Stats();
  CHECK(over_limit.load() == 0);
  CHECK(unexpected.load() == 0);
  CHECK(admitted.load() + refused.load() == kThreads * 2000);
  CHECK(admitted.load() > 0);
  CHECK(s.in_flight == 0);
  CHECK(s.waiting == 0);
  CHECK(static_cast<int64_t>(s.success_total + s.dropped_total + s.ignored_total) ==
        admitted.load());
  CHECK(limit_seen_max.load() <= 6);
}

TEST_CASE("stress: 8 threads through a keyed adaptive limiter with evictions") {
  auto keyed = keel::overload::KeyedAdaptiveLimiter::Create(
                   {.name = "tenants", .max_keys = 4, .shards = 2},
                   []() -> absl::StatusOr<std::unique_ptr<keel::overload::LimitAlgorithm>> {
                     return keel::overload::GradientLimit::Create({.min_rtt_request_count = 5});
                   })
                   .value();
  std::atomic<int64_t> ok{0}, refused{0}, unexpected{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2000; ++i) {
        const std::string key = "tenant-" + std::to_string((t * 7 + i) % 12);
        auto p = keyed->TryAcquire(key);
        if (p.ok()) {
          ok.fetch_add(1);
          p->OnSuccess();
        } else if (absl::IsResourceExhausted(p.status())) {
          refused.fetch_add(1);
        } else {
          unexpected.fetch_add(1);
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(unexpected.load() == 0);
  CHECK(ok.load() + refused.load() == kThreads * 2000);
  CHECK(keyed->Stats().keys <= 4);
  CHECK(keyed->Stats().evicted_capacity_total > 0);
}

TEST_CASE("stress: 8 threads through adaptive limiter + CoDel queue + hedge pipelines") {
  using keel::overload::FaultInjection;
  using keel::overload::Hedge;
  auto budget = keel::ConcurrentRetryBudget::Create({.name = "stress"}).value();
  auto hedge = Hedge::Create({.name = "stress",
                              .delay = std::chrono::microseconds(300),
                              .max_hedges = 2,
                              .budget = budget.get()})
                   .value();
  // A 1 s window: the injected UNAVAILABLEs raise the odds, which fall again within the run.
  auto throttle =
      keel::overload::AdaptiveThrottle::Create({.name = "stress", .window = 1s, .buckets = 10})
          .value();
  auto faults =
      FaultInjection::Create({.name = "stress", .enabled = true, .injection_rate = 0.05}).value();
  auto limiter =
      AdaptiveLimiter::Create(
          {.name = "stress-hedged",
           .queue =
               keel::overload::CodelQueueOptions{
                   .target = 1ms, .interval = 20ms, .max_waiting = 6}},
          keel::overload::VegasLimit::Create({.initial_limit = 4, .max_limit = 6}).value())
          .value();
  std::unique_ptr<keel::Timer> timer = keel::Timer::Create({.name = "stress"}).value();
  auto pool =
      keel::ThreadPoolBulkhead::Create({.name = "stress", .threads = 4, .queue_capacity = 256})
          .value();
  std::atomic<int64_t> attempts{0}, stalled{0};
  // One attempt: usually quick, sometimes a stall that ends at its cancellation (or after 2 ms).
  auto attempt = [&attempts, &stalled](const keel::CallContext& ctx) -> absl::StatusOr<int> {
    const int64_t n = attempts.fetch_add(1);
    if (n % 7 == 0) {
      stalled.fetch_add(1);
      if (!ctx.cancellation.SleepUntil(keel::SteadyClock(), keel::SteadyClock().Now() + 2ms)) {
        return absl::CancelledError("attempt cancelled");
      }
    }
    return static_cast<int>(n % 1000);
  };
  // Blocking: the limiter (queued) around a hedged call whose attempts run on the pool.
  auto blocking = keel::Pipeline<int>::Builder()
                      .Add(keel::overload::AdaptiveLimitStage<int>::Make(*limiter))
                      .Add(keel::overload::AdaptiveThrottleStage<int>::Make(*throttle))
                      .Build();
  // Blocking, hedged by the stage: the limiter, the hedge, and per attempt (on the pool, each a
  // copy of the inner stages and the call) the throttle and injected faults.
  auto blocking_hedged = keel::Pipeline<int>::Builder()
                             .Add(keel::overload::AdaptiveLimitStage<int>::Make(*limiter))
                             .Add(keel::overload::HedgeStage<int>::Make(*hedge, *timer, *pool))
                             .Add(keel::overload::AdaptiveThrottleStage<int>::Make(*throttle))
                             .Add(keel::overload::FaultInjectionStage<int>::Make(*faults))
                             .Build();
  // Async: the limiter, the hedge, and per attempt the throttle and injected faults, around
  // attempts submitted to the pool.
  auto async = keel::Pipeline<int>::Builder()
                   .Add(keel::overload::AdaptiveLimitStage<int>::Make(*limiter))
                   .Add(keel::overload::HedgeStage<int>::Make(*hedge))
                   .Add(keel::overload::AdaptiveThrottleStage<int>::Make(*throttle))
                   .Add(keel::overload::FaultInjectionStage<int>::Make(*faults))
                   .Build();
  std::atomic<int64_t> ok{0}, refused{0}, unexpected{0};
  auto count = [&](const absl::Status& s) {
    if (s.ok()) {
      ok.fetch_add(1);
    } else if (absl::IsResourceExhausted(s) || absl::IsDeadlineExceeded(s) ||
               absl::IsUnavailable(s)) {
      refused.fetch_add(1);  // limiter, queue, throttle, full pool, injected UNAVAILABLE
    } else {
      unexpected.fetch_add(1);
    }
  };
  constexpr int kIterations = 300;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kIterations; ++i) {
        keel::CallContext ctx;
        ctx.deadline = keel::Deadline::After(20ms);
        ctx.criticality = static_cast<keel::Criticality>((t + i) % 4);
        ctx.idempotent = i % 5 != 0;
        if (i % 4 == 0) {
          absl::StatusOr<int> r = blocking.Execute(ctx, [&](const keel::CallContext& c) {
            return hedge->Execute(*timer, *pool, c, attempt);
          });
          count(r.status());
        } else if (i % 4 == 2) {
          // `attempt` refers to this test's counters, which outlive every loser (the pool is
          // drained below).
          count(blocking_hedged.Execute(ctx, attempt).status());
        } else {
          keel::Future<int> f = async.ExecuteAsync(*timer, ctx, [&](const keel::CallContext& c) {
            return pool->Submit([attempt, c] { return attempt(c); });
          });
          count(f.Get().status());
        }
        if (i % 50 == 0) {
          (void)hedge->Stats();
          (void)throttle->Stats();
          (void)limiter->Stats();
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  pool->Shutdown(keel::ThreadPoolBulkhead::ShutdownMode::kDrain);  // the losers have ended
  timer->Shutdown();
  const auto h = hedge->Stats();
  std::printf("hedged pipelines: %lld ok, %lld refused, %llu hedges (%llu won), %lld attempts\n",
              static_cast<long long>(ok.load()), static_cast<long long>(refused.load()),
              static_cast<unsigned long long>(h.hedges_total),
              static_cast<unsigned long long>(h.wins_total),
              static_cast<long long>(attempts.load()));
  CHECK(unexpected.load() == 0);
  CHECK(ok.load() + refused.load() == kThreads * kIterations);
  CHECK(ok.load() > 0);
  CHECK(h.hedges_total > 0);
  CHECK(h.not_idempotent_total > 0);
  CHECK(stalled.load() > 0);
  CHECK(limiter->in_flight() == 0);
  CHECK(limiter->Stats().waiting == 0);
  CHECK(budget->retries_in_flight() == 0);
  CHECK(budget->calls_in_flight() == 0);
  CHECK(faults->Stats().injected_total[1] > 0);
}

}  // namespace
