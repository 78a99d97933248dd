#include "keel/overload/adaptive_throttle_stage.h"

#include <catch2/catch.hpp>
#include <memory>

#include "keel/async/timer.h"
#include "keel/resilience/pipeline.h"
#include "unit/overload/fixed_random.h"

namespace {

using keel::overload::AdaptiveThrottle;
using keel::overload::AdaptiveThrottleStage;

TEST_CASE("adaptive throttle stage records the call's status and rejects without running it") {
  keel::ManualClock clock;
  double u = 0.0;  // any p > 0 rejects
  keel_test::FractionGen gen{&u};
  auto throttle = AdaptiveThrottle::Create({.name = "api"}, clock, gen).value();
  auto pipeline =
      keel::Pipeline<int>::Builder().Add(AdaptiveThrottleStage<int>::Make(*throttle)).Build();
  int ran = 0;
  auto overloaded = [&](const keel::CallContext&) -> absl::StatusOr<int> {
    ++ran;
    return absl::ResourceExhaustedError("backend: over quota");
  };
  // The first call goes through (p = 0) and the backend refuses it: no accept.
  CHECK(
      absl::IsResourceExhausted(pipeline.Execute(keel::Deadline::Infinite(), overloaded).status()));
  CHECK(ran == 1);
  CHECK(throttle->Stats().backend_rejected_total == 1);
  // p = 1/2 now, and the draw is 0: rejected locally, the call never runs.
  auto r = pipeline.Execute(keel::Deadline::Infinite(), overloaded);
  CHECK(absl::IsResourceExhausted(r.status()));
  CHECK_THAT(std::string(r.status().message()), Catch::StartsWith("adaptive throttle \"api\""));
  CHECK(ran == 1);
}

TEST_CASE("adaptive throttle stage passes the call's criticality") {
  keel::ManualClock clock;
  double u = 0.5;
  keel_test::FractionGen gen{&u};
  auto throttle = AdaptiveThrottle::Create({.name = "api"}, clock, gen).value();
  auto pipeline =
      keel::Pipeline<int>::Builder().Add(AdaptiveThrottleStage<int>::Make(*throttle)).Build();
  auto ok = [](const keel::CallContext&) -> absl::StatusOr<int> { return 1; };
  auto refused = [](const keel::CallContext&) -> absl::StatusOr<int> {
    return absl::UnavailableError("shedding");
  };
  for (int i = 0; i < 6; ++i) REQUIRE(pipeline.Execute(keel::CallContext{}, ok).ok());
  for (int i = 0; i < 4; ++i) (void)pipeline.Execute(keel::CallContext{}, refused);
  // 10 requests, 6 accepts: critical p = 0, sheddable p = (10 - 7.2) / 11 = 0.25 < 0.5 admitted,
  // and each refused one raises it.
  keel::CallContext sheddable{.criticality = keel::Criticality::kSheddable};
  CHECK(throttle->RejectionProbability(keel::Criticality::kSheddable) == Approx(2.8 / 11));
  int rejected = 0;
  for (int i = 0; i < 20; ++i) {
    if (absl::IsResourceExhausted(pipeline.Execute(sheddable, refused).status())) ++rejected;
  }
  CHECK(throttle->Stats().rejected_total[3] == static_cast<uint64_t>(rejected));
  CHECK(rejected > 0);
  CHECK(throttle->Stats().rejected_total[1] == 0);
}

TEST_CASE("adaptive throttle stage async form records when the inner future completes") {
  keel::ManualClock clock;
  double u = 0.0;
  keel_test::FractionGen gen{&u};
  auto throttle = AdaptiveThrottle::Create({.name = "api"}, clock, gen).value();
  auto pipeline =
      keel::Pipeline<int>::Builder().Add(AdaptiveThrottleStage<int>::Make(*throttle)).Build();
  std::unique_ptr<keel::Timer> timer = keel::Timer::Create({}, clock).value();
  keel::Promise<int> inner;
  keel::Future<int> out = pipeline.ExecuteAsync(
      *timer, keel::Deadline::Infinite(), [&](const keel::CallContext&) { return inner.future(); });
  CHECK(throttle->Stats().requests == 1);
  CHECK(throttle->Stats().accepts == 0);
  inner.Set(absl::UnavailableError("down"));
  CHECK(absl::IsUnavailable(std::move(out).Get().status()));
  CHECK(throttle->Stats().backend_rejected_total == 1);
  bool ran = false;
  auto refused =
      pipeline.ExecuteAsync(*timer, keel::Deadline::Infinite(), [&](const keel::CallContext&) {
        ran = true;
        return keel::Future<int>::Ready(1);
      });
  CHECK(absl::IsResourceExhausted(std::move(refused).Get().status()));
  CHECK_FALSE(ran);
}

}  // namespace
