#include <catch2/catch.hpp>

#include "support/limit_scenarios.h"

namespace scenarios = keel::limit::scenarios;

TEST_CASE("in-process limiters reproduce every scenario decision by decision") {
  const auto all = scenarios::AllScenarios();
  REQUIRE(all.size() >= 5);
  for (const scenarios::Scenario& s : all) {
    INFO(s.name);
    const std::vector<std::string> mismatches =
        scenarios::RunScenario(s, scenarios::InProcessFactory());
    for (const std::string& m : mismatches) FAIL_CHECK(m);
    CHECK(mismatches.empty());
  }
}

TEST_CASE("scenario driver reports a limiter that decides differently") {
  // A limiter that admits everything must fail the suite: the driver can tell them apart.
  class AdmitAll final : public scenarios::LimiterUnderTest {
   public:
    absl::StatusOr<keel::limit::Decision> Decide(std::string_view, int64_t,
                                                 keel::Duration) override {
      return keel::limit::Decision{.allowed = true};
    }
  };
  const scenarios::Factory admit_all =
      [](const scenarios::Spec&) -> absl::StatusOr<std::unique_ptr<scenarios::LimiterUnderTest>> {
    return std::unique_ptr<scenarios::LimiterUnderTest>(new AdmitAll());
  };
  for (const scenarios::Scenario& s : scenarios::AllScenarios()) {
    CHECK_FALSE(scenarios::RunScenario(s, admit_all).empty());
  }
}
