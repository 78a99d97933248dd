// The rate-limiting scenario suite: sequences of (time offset, key, quantity) -> expected Decision
// that every implementation of an algorithm must reproduce decision by decision, whatever stores
// its state (the in-process limiters today, the Redis scripts next).
//
// An implementation plugs in through `LimiterUnderTest` (built by a factory from a `Spec`) and is
// driven by `RunScenario`, which returns one line per mismatch. Times are offsets from the
// scenario's start, which the implementation must place on a boundary of every window used (the
// in-process driver starts at ManualClock::kDefaultStart = 24h; a Redis driver passes the same
// offsets through its test time source). Offsets are whole milliseconds and every interval used
// is a whole number of microseconds, so an implementation keeping microseconds (Redis TIME)
// computes exactly what a nanosecond one does.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "absl/status/statusor.h"
#include "keel/limit/decision.h"
#include "keel/limit/fixed_window.h"
#include "keel/limit/gcra.h"
#include "keel/limit/sliding_window.h"
#include "keel/limit/token_bucket.h"

namespace keel::limit::scenarios {

struct SlidingLogSpec {
  SlidingWindowOptions options;
};
struct SlidingCounterSpec {
  SlidingWindowOptions options;
};
// Which algorithm, with which parameters.
using Spec = std::variant<TokenBucket::Options, Gcra::Options, FixedWindow::Options, SlidingLogSpec,
                          SlidingCounterSpec>;

struct Step {
  Duration at;  // offset from the scenario's start
  std::string key;
  int64_t quantity;
  Decision expect;
};

struct Scenario {
  std::string name;
  Spec spec;
  std::vector<Step> steps;
};

// One limiter (holding any number of keys) under test.
class LimiterUnderTest {
 public:
  virtual ~LimiterUnderTest() = default;
  virtual absl::StatusOr<Decision> Decide(std::string_view key, int64_t quantity, Duration at) = 0;
};

using Factory = std::function<absl::StatusOr<std::unique_ptr<LimiterUnderTest>>(const Spec&)>;

// The whole suite.
std::vector<Scenario> AllScenarios();

// Runs `scenario` against a limiter built by `factory`; returns a description of every step whose
// decision differs from the expected one (empty: the implementation passes).
std::vector<std::string> RunScenario(const Scenario& scenario, const Factory& factory);

// The factory for keel's in-process limiters (Keyed<...> over a ManualClock).
Factory InProcessFactory();

}  // namespace keel::limit::scenarios
