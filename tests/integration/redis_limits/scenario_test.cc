// The rate-limiting scenario suite (tests/support/limit_scenarios.h) run against redis::RateLimiter
// and against the in-process limiters, compared decision by decision.
//
// Time: Redis normally reads TIME; here every check passes the scenario's time explicitly
// (RateLimiter::TryAcquireAtForTesting), so both implementations see exactly the same instants. The
// Redis limiter keeps microseconds, so its durations are the in-process ones rounded up to the
// microsecond (the only documented difference; every other field must be equal).
#include <catch2/catch.hpp>
#include <random>
#include <sstream>

#include "integration/redis_limits/helpers.h"
#include "keel/redis/rate_limiter.h"
#include "support/limit_scenarios.h"

namespace scenarios = keel::limit::scenarios;
using keel::Deadline;
using keel::Duration;
using keel::limit::Decision;
using keel::redis::RateLimiter;
using keel::test::AtMicrosecondResolution;
using namespace std::chrono_literals;

namespace {

RateLimiter::Algorithm ToAlgorithm(const scenarios::Spec& spec) {
  struct Visitor {
    RateLimiter::Algorithm operator()(const keel::limit::TokenBucket::Options& o) { return o; }
    RateLimiter::Algorithm operator()(const keel::limit::Gcra::Options& o) { return o; }
    RateLimiter::Algorithm operator()(const keel::limit::FixedWindow::Options& o) { return o; }
    RateLimiter::Algorithm operator()(const scenarios::SlidingLogSpec& o) {
      return keel::redis::SlidingWindowLogOptions{o.options};
    }
    RateLimiter::Algorithm operator()(const scenarios::SlidingCounterSpec& o) {
      return keel::redis::SlidingWindowCounterOptions{o.options};
    }
  };
  return std::visit(Visitor{}, spec);
}

// Runs `steps` against Redis and in-process; returns one line per step where the two differ.
std::vector<std::string> Compare(keel::redis::Client& client, const scenarios::Spec& spec,
                                 const std::vector<scenarios::Step>& steps, bool check_expected) {
  std::vector<std::string> mismatches;
  auto redis_limiter = RateLimiter::Create(
      {.name = keel::test::UniqueName("scenario"), .algorithm = ToAlgorithm(spec)}, client);
  if (!redis_limiter.ok()) return {"cannot create: " + redis_limiter.status().ToString()};
  auto local = scenarios::InProcessFactory()(spec);
  if (!local.ok()) return {"cannot create in-process: " + local.status().ToString()};
  for (size_t i = 0; i < steps.size(); ++i) {
    const scenarios::Step& step = steps[i];
    const auto in_process = (*local)->Decide(step.key, step.quantity, step.at);
    const auto shared = (*redis_limiter)
                            ->TryAcquireAtForTesting(
                                Deadline::After(2s), step.key, step.quantity,
                                keel::test::kTestEpoch +
                                    std::chrono::duration_cast<std::chrono::microseconds>(step.at));
    std::ostringstream line;
    line << "step " << i << " (at " << step.at.count() << "ns, key " << step.key << ", n "
         << step.quantity << "): ";
    if (!in_process.ok() || !shared.ok()) {
      line << "error: " << in_process.status() << " / " << shared.status();
      mismatches.push_back(line.str());
      continue;
    }
    const Decision want = AtMicrosecondResolution(*in_process);
    if (!(*shared == want)) {
      line << "in-process {" << *in_process << "}, redis {" << *shared << "}";
      mismatches.push_back(line.str());
    }
    if (check_expected && !(*shared == AtMicrosecondResolution(step.expect))) {
      line << "expected {" << step.expect << "}, redis {" << *shared << "}";
      mismatches.push_back(line.str());
    }
  }
  return mismatches;
}

}  // namespace

TEST_CASE("redis limiters reproduce every scenario of the suite decision by decision",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  const auto all = scenarios::AllScenarios();
  REQUIRE(all.size() >= 5);
  for (const scenarios::Scenario& s : all) {
    INFO(s.name);
    const auto mismatches = Compare(*client, s.spec, s.steps, /*check_expected=*/true);
    for (const std::string& m : mismatches) FAIL_CHECK(m);
    CHECK(mismatches.empty());
  }
}

TEST_CASE("redis limiters decide like the in-process ones on random bursty traffic",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  using keel::limit::FixedWindow;
  // Intervals are whole microseconds (7 per second would not be: Redis truncates that interval
  // to the microsecond, the documented difference).
  const scenarios::Spec specs[] = {
      keel::limit::Gcra::Options{.count = 8, .period = 1s, .max_burst = 3},
      keel::limit::TokenBucket::Options{.rate = 8, .burst = 5},
      FixedWindow::Options{.limit = 6, .window = 500ms},
      FixedWindow::Options{
          .limit = 6, .window = 500ms, .alignment = FixedWindow::Alignment::kFirstRequest},
      scenarios::SlidingLogSpec{{.limit = 6, .window = 700ms}},
      scenarios::SlidingCounterSpec{{.limit = 9, .window = 300ms}},
  };
  std::mt19937 rng(20240607);  // fixed seed: the same traffic on every run
  for (const scenarios::Spec& spec : specs) {
    INFO("spec index " << spec.index());
    std::vector<scenarios::Step> steps;
    Duration at = 0ms;
    for (int i = 0; i < 400; ++i) {
      // Bursts (several calls at one instant) separated by gaps of 0 to 250 ms.
      if (rng() % 3 == 0) at += std::chrono::milliseconds(rng() % 251);
      const std::string key = rng() % 4 == 0 ? "b" : "a";
      const int64_t n =
          rng() % 10 == 0 ? static_cast<int64_t>(rng() % 12) : (rng() % 8 == 0 ? 0 : 1);
      steps.push_back({at, key, n, {}});
    }
    const auto mismatches = Compare(*client, spec, steps, /*check_expected=*/false);
    for (size_t i = 0; i < mismatches.size() && i < 10; ++i) FAIL_CHECK(mismatches[i]);
    CHECK(mismatches.empty());
  }
}
