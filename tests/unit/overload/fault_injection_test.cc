#include "keel/overload/fault_injection.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>

#include "keel/async/timer.h"
#include "keel/overload/fault_injection_stage.h"
#include "keel/resilience/pipeline.h"
#include "unit/overload/fixed_random.h"

namespace {

using namespace std::chrono_literals;
using keel::CallContext;
using keel::overload::FaultInjection;
using keel::overload::FaultInjectionStage;
using Fault = FaultInjection::Fault;

absl::StatusOr<int> One(const CallContext&) { return 1; }

TEST_CASE("fault injection is off unless enabled") {
  keel::ManualClock clock;
  auto f = FaultInjection::Create({.name = "chaos", .injection_rate = 1.0}, clock).value();
  CHECK_FALSE(f->enabled());
  for (int i = 0; i < 100; ++i) CHECK(f->Execute(CallContext{}, One).ok());
  CHECK(f->Stats().calls_total == 100);
  CHECK(f->Stats().injected_total[1] == 0);
  f->SetEnabled(true);
  CHECK(absl::IsUnavailable(f->Execute(CallContext{}, One).status()));
  CHECK(f->Stats().injected_total[1] == 1);
}

TEST_CASE("fault injection injects at its rate with a fixed random source") {
  keel::ManualClock clock;
  std::mt19937_64 gen(1234);
  auto f =
      FaultInjection::Create({.name = "chaos", .enabled = true, .injection_rate = 0.2}, clock, gen)
          .value();
  int failed = 0;
  for (int i = 0; i < 10000; ++i) {
    if (!f->Execute(CallContext{}, One).ok()) ++failed;
  }
  CHECK(failed == static_cast<int>(f->Stats().injected_total[1]));
  CHECK(failed > 1900);  // 2000 expected; binomial sd 40
  CHECK(failed < 2100);
  // The draw is compared with the rate: 0.19 injects, 0.21 does not.
  double u = 0.19;
  keel_test::FractionGen fixed{&u};
  auto g = FaultInjection::Create({.name = "fixed", .enabled = true, .injection_rate = 0.2}, clock,
                                  fixed)
               .value();
  CHECK_FALSE(g->Execute(CallContext{}, One).ok());
  u = 0.21;
  CHECK(g->Execute(CallContext{}, One).ok());
}

TEST_CASE("fault injection's error names the policy and keeps the code") {
  keel::ManualClock clock;
  auto f = FaultInjection::Create({.name = "chaos",
                                   .enabled = true,
                                   .injection_rate = 1.0,
                                   .error_code = absl::StatusCode::kResourceExhausted,
                                   .error_message = "quota (injected)"},
                                  clock)
               .value();
  bool ran = false;
  auto r = f->Execute(CallContext{}, [&](const CallContext&) -> absl::StatusOr<int> {
    ran = true;
    return 1;
  });
  CHECK_FALSE(ran);
  CHECK(absl::IsResourceExhausted(r.status()));
  CHECK(r.status().message() == "fault injection \"chaos\": quota (injected)");
}

TEST_CASE("fault injection picks calls with a predicate and survives one that throws") {
  keel::ManualClock clock;
  auto f = FaultInjection::Create({.name = "chaos",
                                   .enabled = true,
                                   .should_inject =
                                       [](const CallContext& ctx) {
                                         if (ctx.attempt == 3) throw std::runtime_error("bug");
                                         return ctx.attempt == 2;
                                       }},
                                  clock)
               .value();
  CHECK(f->Execute(CallContext{.attempt = 1}, One).ok());
  CHECK_FALSE(f->Execute(CallContext{.attempt = 2}, One).ok());
  CHECK(f->Execute(CallContext{.attempt = 3}, One).ok());
  CHECK(f->Stats().predicate_exceptions_total == 1);
  CHECK(f->Stats().injected_total[1] == 1);
}

TEST_CASE("fault injection delays a call by its latency, then runs it") {
  keel::ManualClock clock;
  auto f = FaultInjection::Create({.name = "slow",
                                   .enabled = true,
                                   .fault = Fault::kLatency,
                                   .injection_rate = 1.0,
                                   .latency = 300ms},
                                  clock)
               .value();
  const keel::TimePoint start = clock.Now();
  keel::TimePoint ran_at;
  absl::StatusOr<int> r;
  std::thread caller([&] {
    r = f->Execute(CallContext{.deadline = keel::Deadline::After(1s, clock)},
                   [&](const CallContext&) -> absl::StatusOr<int> {
                     ran_at = clock.Now();
                     return 7;
                   });
  });
  clock.AwaitSleepers(1);
  clock.Advance(300ms);
  caller.join();
  CHECK(r.value() == 7);
  CHECK(ran_at - start == 300ms);
  CHECK(f->Stats().injected_total[0] == 1);
}

TEST_CASE("fault injection's latency past the deadline fails the call without running it") {
  keel::ManualClock clock;
  auto f = FaultInjection::Create({.name = "slow",
                                   .enabled = true,
                                   .fault = Fault::kLatency,
                                   .injection_rate = 1.0,
                                   .latency = 2s},
                                  clock)
               .value();
  bool ran = false;
  absl::StatusOr<int> r;
  std::thread caller([&] {
    r = f->Execute(CallContext{.deadline = keel::Deadline::After(500ms, clock)},
                   [&](const CallContext&) -> absl::StatusOr<int> {
                     ran = true;
                     return 7;
                   });
  });
  clock.AwaitSleepers(1);
  clock.Advance(500ms);
  caller.join();
  CHECK_FALSE(ran);
  CHECK(absl::IsDeadlineExceeded(r.status()));
  CHECK(r.status().message() ==
        "fault injection \"slow\": injected latency of 2s reached the deadline after 500ms");
}

TEST_CASE("fault injection hangs until the deadline, max_hang or cancellation") {
  keel::ManualClock clock;
  auto f = FaultInjection::Create({.name = "stuck",
                                   .enabled = true,
                                   .fault = Fault::kHang,
                                   .injection_rate = 1.0,
                                   .max_hang = 10s},
                                  clock)
               .value();
  SECTION("the deadline") {
    absl::StatusOr<int> r;
    std::thread caller(
        [&] { r = f->Execute(CallContext{.deadline = keel::Deadline::After(2s, clock)}, One); });
    clock.AwaitSleepers(1);
    clock.Advance(2s);
    caller.join();
    CHECK(absl::IsDeadlineExceeded(r.status()));
    CHECK(r.status().message() == "fault injection \"stuck\": injected hang, no answer after 2s");
  }
  SECTION("max_hang without a deadline") {
    absl::StatusOr<int> r;
    std::thread caller([&] { r = f->Execute(CallContext{}, One); });
    clock.AwaitSleepers(1);
    clock.Advance(9s);
    clock.Advance(1s);
    caller.join();
    CHECK(absl::IsDeadlineExceeded(r.status()));
  }
  SECTION("cancellation") {
    keel::CancellationSource source;
    absl::StatusOr<int> r;
    std::thread caller([&] { r = f->Execute(CallContext{.cancellation = source.token()}, One); });
    clock.AwaitSleepers(1);
    source.Cancel();
    caller.join();
    CHECK(absl::IsCancelled(r.status()));
  }
  CHECK(f->Stats().injected_total[2] == 1);
}

TEST_CASE("fault injection stage injects before the inner stages, blocking and async") {
  keel::ManualClock clock;
  auto errors =
      FaultInjection::Create({.name = "chaos", .enabled = true, .injection_rate = 1.0}, clock)
          .value();
  auto pipeline =
      keel::Pipeline<int>::Builder().Add(FaultInjectionStage<int>::Make(*errors)).Build();
  bool ran = false;
  auto call = [&](const CallContext&) -> absl::StatusOr<int> {
    ran = true;
    return 1;
  };
  CHECK(absl::IsUnavailable(pipeline.Execute(CallContext{}, call).status()));
  CHECK_FALSE(ran);
  std::unique_ptr<keel::Timer> timer = keel::Timer::Create({}, clock).value();
  auto async_call = [&](const CallContext&) {
    ran = true;
    return keel::Future<int>::Ready(1);
  };
  CHECK(
      absl::IsUnavailable(pipeline.ExecuteAsync(*timer, CallContext{}, async_call).Get().status()));
  CHECK_FALSE(ran);

  auto slow = FaultInjection::Create({.name = "slow",
                                      .enabled = true,
                                      .fault = Fault::kLatency,
                                      .injection_rate = 1.0,
                                      .latency = 100ms},
                                     clock)
                  .value();
  auto delayed = keel::Pipeline<int>::Builder().Add(FaultInjectionStage<int>::Make(*slow)).Build();
  keel::Future<int> late = delayed.ExecuteAsync(*timer, CallContext{}, async_call);
  CHECK_FALSE(late.ready());
  CHECK_FALSE(ran);
  clock.Advance(100ms);
  CHECK(late.Get().value() == 1);  // the timer's thread ran the call
  CHECK(ran);

  auto stuck =
      FaultInjection::Create(
          {.name = "stuck", .enabled = true, .fault = Fault::kHang, .injection_rate = 1.0}, clock)
          .value();
  auto hung = keel::Pipeline<int>::Builder().Add(FaultInjectionStage<int>::Make(*stuck)).Build();
  ran = false;
  keel::Future<int> never = hung.ExecuteAsync(
      *timer, CallContext{.deadline = keel::Deadline::After(1s, clock)}, async_call);
  clock.Advance(1s);
  CHECK(absl::IsDeadlineExceeded(never.Get().status()));
  CHECK_FALSE(ran);
}

TEST_CASE("fault injection validates its options and registers its metrics") {
  auto message = [](FaultInjection::Options o) {
    return std::string(FaultInjection::Create(std::move(o)).status().message());
  };
  CHECK(message({.name = "chaos", .injection_rate = 2}) ==
        "fault injection \"chaos\": injection_rate must be in [0, 1], got 2");
  CHECK(message({.name = "chaos", .latency = 0s}) ==
        "fault injection \"chaos\": latency must be > 0, got 0");
  CHECK(message({.name = "chaos", .error_code = absl::StatusCode::kOk}) ==
        "fault injection \"chaos\": error_code must be an error, got OK");
  keel::ManualClock clock;
  keel::MetricsRegistry metrics;
  auto f = FaultInjection::Create({.name = "chaos", .enabled = true, .injection_rate = 1.0}, clock,
                                  &metrics)
               .value();
  (void)f->Execute(CallContext{}, One);
  const std::string text = metrics.RenderPrometheus();
  CHECK_THAT(text, Catch::Contains("keel_fault_injection_calls_total{name=\"chaos\"} 1"));
  CHECK_THAT(text, Catch::Contains(
                       "keel_fault_injection_injected_total{fault=\"error\",name=\"chaos\"} 1"));
  CHECK_THAT(text, Catch::Contains(
                       "keel_fault_injection_injected_total{fault=\"latency\",name=\"chaos\"} 0"));
}

}  // namespace
