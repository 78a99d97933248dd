#include "support/limit_scenarios.h"

#include <sstream>

#include "keel/limit/keyed.h"

namespace keel::limit::scenarios {
namespace {

using namespace std::chrono_literals;

Decision Allowed(int64_t limit, int64_t remaining, Duration reset_after) {
  return {.allowed = true, .limit = limit, .remaining = remaining, .reset_after = reset_after};
}
Decision Denied(int64_t limit, int64_t remaining, Duration reset_after, Duration retry_after) {
  return {.allowed = false,
          .limit = limit,
          .remaining = remaining,
          .reset_after = reset_after,
          .retry_after = retry_after};
}

// A sliding window counter's decision, with the estimate it was made on.
Decision WithEstimate(Decision d, double estimate) {
  d.estimate = estimate;
  return d;
}

template <typename Limiter>
class InProcess final : public LimiterUnderTest {
 public:
  static absl::StatusOr<std::unique_ptr<LimiterUnderTest>> Make(
      const typename Limiter::Options& options) {
    auto impl = std::make_unique<InProcess>();
    auto keyed = Keyed<Limiter>::Create({}, {options}, impl->clock_);
    if (!keyed.ok()) return keyed.status();
    impl->keyed_ = *std::move(keyed);
    return std::unique_ptr<LimiterUnderTest>(std::move(impl));
  }
  absl::StatusOr<Decision> Decide(std::string_view key, int64_t quantity, Duration at) override {
    clock_.Set(ManualClock::kDefaultStart + at);
    return keyed_->TryAcquire(key, quantity, clock_.Now());
  }

 private:
  ManualClock clock_;
  std::unique_ptr<Keyed<Limiter>> keyed_;
};

}  // namespace

Factory InProcessFactory() {
  return [](const Spec& spec) -> absl::StatusOr<std::unique_ptr<LimiterUnderTest>> {
    struct Visitor {
      absl::StatusOr<std::unique_ptr<LimiterUnderTest>> operator()(const TokenBucket::Options& o) {
        return InProcess<TokenBucket>::Make(o);
      }
      absl::StatusOr<std::unique_ptr<LimiterUnderTest>> operator()(const Gcra::Options& o) {
        return InProcess<Gcra>::Make(o);
      }
      absl::StatusOr<std::unique_ptr<LimiterUnderTest>> operator()(const FixedWindow::Options& o) {
        return InProcess<FixedWindow>::Make(o);
      }
      absl::StatusOr<std::unique_ptr<LimiterUnderTest>> operator()(const SlidingLogSpec& o) {
        return InProcess<SlidingWindowLog>::Make(o.options);
      }
      absl::StatusOr<std::unique_ptr<LimiterUnderTest>> operator()(const SlidingCounterSpec& o) {
        return InProcess<SlidingWindowCounter>::Make(o.options);
      }
    };
    return std::visit(Visitor{}, spec);
  };
}

std::vector<std::string> RunScenario(const Scenario& scenario, const Factory& factory) {
  std::vector<std::string> mismatches;
  auto limiter = factory(scenario.spec);
  if (!limiter.ok()) return {"cannot create the limiter: " + limiter.status().ToString()};
  for (size_t i = 0; i < scenario.steps.size(); ++i) {
    const Step& step = scenario.steps[i];
    const absl::StatusOr<Decision> got = (*limiter)->Decide(step.key, step.quantity, step.at);
    std::ostringstream line;
    line << scenario.name << " step " << i << " (at " << step.at.count() << "ns, key \"" << step.key
         << "\", quantity " << step.quantity << "): ";
    if (!got.ok()) {
      line << "error " << got.status().ToString();
      mismatches.push_back(line.str());
    } else if (!(*got == step.expect)) {
      line << "expected {" << step.expect << "}, got {" << *got << "}";
      mismatches.push_back(line.str());
    }
  }
  return mismatches;
}

std::vector<Scenario> AllScenarios() {
  const Duration never = kNever;
  std::vector<Scenario> all;

  // redis-cell's reference table: limit 5 (max_burst 4) at 1 per second.
  all.push_back({"gcra: redis-cell reference table",
                 Gcra::Options{.count = 1, .period = 1s, .max_burst = 4},
                 {
                     {0ms, "foo", 6, Denied(5, 5, 0s, never)},
                     {0ms, "foo", 1, Allowed(5, 4, 1s)},
                     {0ms, "foo", 1, Allowed(5, 3, 2s)},
                     {0ms, "foo", 1, Allowed(5, 2, 3s)},
                     {0ms, "foo", 1, Allowed(5, 1, 4s)},
                     {0ms, "foo", 1, Allowed(5, 0, 5s)},
                     {0ms, "foo", 1, Denied(5, 0, 5s, 1s)},
                     {3000ms, "foo", 1, Allowed(5, 2, 3000ms)},
                     {3100ms, "foo", 1, Allowed(5, 1, 3900ms)},
                     {4000ms, "foo", 1, Allowed(5, 1, 4000ms)},
                     {8000ms, "foo", 1, Allowed(5, 4, 1000ms)},
                     {9500ms, "foo", 1, Allowed(5, 4, 1000ms)},
                     {9500ms, "foo", 0, Allowed(5, 4, 1s)},
                     {9500ms, "foo", 2, Allowed(5, 2, 3s)},
                     {9500ms, "foo", 5, Denied(5, 2, 3s, 3s)},
                     {9500ms, "bar", 5, Allowed(5, 0, 5s)},  // keys are independent
                 }});

  all.push_back({"token bucket: burst, steady refill, peek, oversized",
                 TokenBucket::Options{.rate = 10, .burst = 3},
                 {
                     {0ms, "k", 1, Allowed(3, 2, 100ms)},
                     {0ms, "k", 1, Allowed(3, 1, 200ms)},
                     {0ms, "k", 1, Allowed(3, 0, 300ms)},
                     {0ms, "k", 1, Denied(3, 0, 300ms, 100ms)},
                     {0ms, "k", 4, Denied(3, 0, 300ms, never)},
                     {150ms, "k", 0, Allowed(3, 1, 150ms)},
                     {150ms, "k", 1, Allowed(3, 0, 250ms)},
                     {150ms, "k", 1, Denied(3, 0, 250ms, 50ms)},
                     {1000ms, "k", 3, Allowed(3, 0, 300ms)},
                 }});

  all.push_back({"fixed window: twice the limit across a boundary",
                 FixedWindow::Options{.limit = 2, .window = 1s},
                 {
                     {999ms, "a", 1, Allowed(2, 1, 1ms)},
                     {999ms, "a", 1, Allowed(2, 0, 1ms)},
                     {999ms, "a", 1, Denied(2, 0, 1ms, 1ms)},
                     {1000ms, "a", 1, Allowed(2, 1, 1s)},
                     {1000ms, "a", 1, Allowed(2, 0, 1s)},
                     {1000ms, "a", 3, Denied(2, 0, 1s, never)},
                     {1500ms, "b", 2, Allowed(2, 0, 500ms)},
                 }});

  all.push_back({"sliding window log: exact expiry of the oldest admissions",
                 SlidingLogSpec{{.limit = 3, .window = 1s}},
                 {
                     {0ms, "k", 1, Allowed(3, 2, 1s)},
                     {500ms, "k", 2, Allowed(3, 0, 1s)},
                     {999ms, "k", 1, Denied(3, 0, 501ms, 1ms)},
                     {1000ms, "k", 0, Allowed(3, 1, 500ms)},
                     {1000ms, "k", 1, Allowed(3, 0, 1s)},
                     {1000ms, "k", 2, Denied(3, 0, 1s, 500ms)},
                     {1000ms, "k", 4, Denied(3, 0, 1s, never)},
                 }});

  all.push_back({"sliding window counter: Cloudflare's weighting",
                 SlidingCounterSpec{{.limit = 50, .window = 60s}},
                 {
                     // Estimates, before each request: nothing yet; 42 x 45/60 = 31.5 a quarter
                     // into the next window; + 17; + 1; then 18 x 60/60 a window later.
                     {0s, "k", 42, WithEstimate(Allowed(50, 8, 120s), 0)},
                     {75s, "k", 17, WithEstimate(Allowed(50, 1, 105s), 31.5)},
                     {75s, "k", 1, WithEstimate(Allowed(50, 0, 105s), 48.5)},
                     {75s, "k", 1, WithEstimate(Denied(50, 0, 105s, Duration(714'285'715)), 49.5)},
                     {120s, "k", 0, WithEstimate(Allowed(50, 32, 60s), 18)},
                 }});
  return all;
}

}  // namespace keel::limit::scenarios
