#include "keel/overload/adaptive_limit_stage.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <vector>

#include "keel/async/timer.h"
#include "keel/resilience/pipeline.h"
#include "unit/overload/fake_limit.h"

namespace {

using namespace std::chrono_literals;
using keel::overload::AdaptiveLimiter;
using keel::overload::AdaptiveLimitStage;
using keel::overload::LimitSample;
using Outcome = AdaptiveLimiter::Outcome;

std::unique_ptr<AdaptiveLimiter> Limiter(keel::ManualClock& clock, int limit,
                                         std::vector<LimitSample>* samples = nullptr) {
  return AdaptiveLimiter::Create({.name = "db"},
                                 std::make_unique<keel_test::FakeLimit>(limit, samples), clock)
      .value();
}

keel::Pipeline<int> Through(AdaptiveLimiter& limiter) {
  return keel::Pipeline<int>::Builder().Add(AdaptiveLimitStage<int>::Make(limiter)).Build();
}

TEST_CASE("adaptive limit stage's default outcome: drops for timeouts and refusals") {
  using keel::overload::DefaultOutcome;
  CHECK(DefaultOutcome(absl::OkStatus()) == Outcome::kSuccess);
  CHECK(DefaultOutcome(absl::NotFoundError("")) == Outcome::kSuccess);
  CHECK(DefaultOutcome(absl::InvalidArgumentError("")) == Outcome::kSuccess);
  CHECK(DefaultOutcome(absl::DeadlineExceededError("")) == Outcome::kDropped);
  CHECK(DefaultOutcome(absl::ResourceExhaustedError("")) == Outcome::kDropped);
  CHECK(DefaultOutcome(absl::UnavailableError("")) == Outcome::kDropped);
  CHECK(DefaultOutcome(absl::CancelledError("")) == Outcome::kIgnored);
}

TEST_CASE("adaptive limit stage records each call's latency and outcome") {
  keel::ManualClock clock;
  std::vector<LimitSample> samples;
  auto limiter = Limiter(clock, 1, &samples);
  auto pipeline = Through(*limiter);
  auto ok = pipeline.Execute(keel::Deadline::Infinite(), [&](const keel::CallContext&) {
    clock.Advance(7ms);
    CHECK(limiter->in_flight() == 1);
    return absl::StatusOr<int>(1);
  });
  CHECK(ok.ok());
  auto slow = pipeline.Execute(keel::Deadline::Infinite(), [&](const keel::CallContext&) {
    clock.Advance(30ms);
    return absl::StatusOr<int>(absl::DeadlineExceededError("db timed out"));
  });
  CHECK(absl::IsDeadlineExceeded(slow.status()));
  REQUIRE(samples.size() == 2);
  CHECK(samples[0].rtt == 7ms);
  CHECK_FALSE(samples[0].dropped);
  CHECK(samples[1].dropped);
  CHECK(limiter->in_flight() == 0);
}

TEST_CASE("adaptive limit stage refuses over the limit without running the call") {
  keel::ManualClock clock;
  auto limiter =
      AdaptiveLimiter::Create({.name = "db"}, std::make_unique<keel_test::FakeLimit>(1), clock)
          .value();
  auto pipeline =
      keel::Pipeline<int>::Builder().Add(AdaptiveLimitStage<int>::Make(*limiter)).Build();
  auto held = limiter->TryAcquire();
  bool ran = false;
  auto r = pipeline.Execute(keel::Deadline::Infinite(), [&](const keel::CallContext&) {
    ran = true;
    return absl::StatusOr<int>(1);
  });
  CHECK(absl::IsResourceExhausted(r.status()));
  CHECK_FALSE(ran);
}

TEST_CASE("adaptive limit stage passes the call's criticality to the limiter") {
  keel::ManualClock clock;
  auto limiter =
      AdaptiveLimiter::Create({.name = "db"}, std::make_unique<keel_test::FakeLimit>(4), clock)
          .value();
  auto pipeline =
      keel::Pipeline<int>::Builder().Add(AdaptiveLimitStage<int>::Make(*limiter)).Build();
  auto a = limiter->TryAcquire();
  auto b = limiter->TryAcquire();
  auto c = limiter->TryAcquire();  // 3 of 4: sheddable (75%) may use 3
  keel::CallContext ctx;
  ctx.criticality = keel::Criticality::kSheddable;
  auto call = [](const keel::CallContext&) { return absl::StatusOr<int>(1); };
  CHECK(absl::IsResourceExhausted(pipeline.Execute(ctx, call).status()));
  ctx.criticality = keel::Criticality::kCritical;
  CHECK(pipeline.Execute(ctx, call).ok());
}

TEST_CASE("adaptive limit stage uses a custom classifier and survives one that throws") {
  keel::ManualClock clock;
  std::vector<LimitSample> samples;
  auto limiter = AdaptiveLimiter::Create({.name = "db"},
                                         std::make_unique<keel_test::FakeLimit>(2, &samples), clock)
                     .value();
  auto dropping =
      keel::Pipeline<int>::Builder()
          .Add(AdaptiveLimitStage<int>::Make(
              *limiter, {.classify = [](const absl::Status&) { return Outcome::kDropped; }}))
          .Build();
  auto throwing = keel::Pipeline<int>::Builder()
                      .Add(AdaptiveLimitStage<int>::Make(
                          *limiter, {.classify = [](const absl::Status&) -> Outcome {
                            throw std::runtime_error("bug");
                          }}))
                      .Build();
  auto call = [](const keel::CallContext&) { return absl::StatusOr<int>(1); };
  CHECK(dropping.Execute(keel::Deadline::Infinite(), call).ok());
  CHECK(throwing.Execute(keel::Deadline::Infinite(), call).ok());
  REQUIRE(samples.size() == 1);  // the throwing one is ignored: no sample
  CHECK(samples[0].dropped);
  CHECK(limiter->Stats().ignored_total == 1);
  CHECK(limiter->in_flight() == 0);
}

TEST_CASE("adaptive limit stage async form records the outcome and refuses at once") {
  keel::ManualClock clock;
  std::vector<LimitSample> samples;
  auto limiter = Limiter(clock, 1, &samples);
  auto pipeline = Through(*limiter);
  std::unique_ptr<keel::Timer> timer_owner = keel::Timer::Create({}, clock).value();
  keel::Timer& timer = *timer_owner;
  keel::Promise<int> inner;
  keel::Future<int> out = pipeline.ExecuteAsync(
      timer, keel::Deadline::Infinite(), [&](const keel::CallContext&) { return inner.future(); });
  CHECK(limiter->in_flight() == 1);
  auto refused =
      pipeline.ExecuteAsync(timer, keel::Deadline::Infinite(),
                            [&](const keel::CallContext&) { return keel::Future<int>::Ready(1); });
  CHECK(absl::IsResourceExhausted(std::move(refused).Get().status()));
  clock.Advance(4ms);
  inner.Set(5);
  CHECK(std::move(out).Get().value() == 5);
  REQUIRE(samples.size() == 1);
  CHECK(samples[0].rtt == 4ms);
  CHECK(limiter->in_flight() == 0);
}

}  // namespace
