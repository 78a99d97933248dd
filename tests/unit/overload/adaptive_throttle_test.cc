#include "keel/overload/adaptive_throttle.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "keel/status.h"
#include "unit/overload/fixed_random.h"

namespace {

using namespace std::chrono_literals;
using keel::Criticality;
using keel::overload::AdaptiveThrottle;

// A throttle whose draws are `*u` (0.999 admits whenever p < 0.999).
std::unique_ptr<AdaptiveThrottle> Throttle(keel::ManualClock& clock, keel_test::FractionGen& gen,
                                           AdaptiveThrottle::Options options = {.name = "api"}) {
  return AdaptiveThrottle::Create(std::move(options), clock, gen).value();
}

// `n` admitted calls of `c`, each answered accepted or rejected by the backend.
void Calls(AdaptiveThrottle& t, int n, bool accepted, Criticality c = Criticality::kCritical) {
  for (int i = 0; i < n; ++i) {
    auto ticket = t.TryAcquire(c);
    REQUIRE(ticket.ok());
    if (accepted) {
      ticket->OnAccepted();
    } else {
      ticket->OnRejected();
    }
  }
}

TEST_CASE("adaptive throttle never rejects while the backend accepts") {
  keel::ManualClock clock;
  double u = 0.0;  // every draw 0: any p > 0 would reject
  keel_test::FractionGen gen{&u};
  auto t = Throttle(clock, gen);
  Calls(*t, 1000, true);
  CHECK(t->RejectionProbability() == 0.0);
  // 6 accepts of 10 requests: 10 <= 2 * 6, still 0.
  auto fresh = Throttle(clock, gen);
  Calls(*fresh, 6, true);
  Calls(*fresh, 4, false);
  CHECK(fresh->RejectionProbability() == 0.0);
  CHECK(fresh->Stats().rejected_total[1] == 0);
}

TEST_CASE("adaptive throttle rejects with probability (requests - K accepts) / (requests + 1)") {
  keel::ManualClock clock;
  double u = 0.999;
  keel_test::FractionGen gen{&u};
  auto t = Throttle(clock, gen);
  Calls(*t, 6, true);
  Calls(*t, 14, false);  // 20 requests, 6 accepts
  CHECK(t->RejectionProbability() == Approx(8.0 / 21));
  // The draw is compared with p before this request counts: 0.38 < 8/21 = 0.381 rejects.
  u = 0.38;
  auto rejected = t->TryAcquire();
  REQUIRE(absl::IsResourceExhausted(rejected.status()));
  CHECK(rejected.status().message() ==
        "adaptive throttle \"api\": rejected call locally with probability 0.38 (20 requests, 6 "
        "accepts of critical or more critical calls in the last 2m, K 2)");
  CHECK_FALSE(keel::RetryAfter(rejected.status()).has_value());
  // The rejected call counted as a request: p = (21 - 12) / 22 = 0.409.
  CHECK(t->RejectionProbability() == Approx(9.0 / 22));
  u = 0.40;
  CHECK_FALSE(t->TryAcquire().ok());
  u = 0.42;  // p is now 10/23 = 0.435 > 0.42
  CHECK_FALSE(t->TryAcquire().ok());
  u = 0.44;  // p = 11/24 = 0.458
  CHECK_FALSE(t->TryAcquire().ok());
  u = 0.46;  // p = 12/25 = 0.48
  CHECK_FALSE(t->TryAcquire().ok());
  u = 0.51;  // p = 13/26 = 0.5: admitted
  auto admitted = t->TryAcquire();
  CHECK(admitted.ok());
  const auto s = t->Stats();
  CHECK(s.requests == 26);
  CHECK(s.accepts == 6);
  CHECK(s.rejected_total[1] == 5);
  CHECK(s.admitted_total[1] == 21);
}

TEST_CASE("adaptive throttle with K 1.5 sheds at a higher acceptance") {
  keel::ManualClock clock;
  double u = 0.999;
  keel_test::FractionGen gen{&u};
  auto t = Throttle(clock, gen, {.name = "api", .k = 1.5});
  Calls(*t, 6, true);
  Calls(*t, 4, false);
  CHECK(t->RejectionProbability() == Approx(1.0 / 11));  // (10 - 9) / 11
}

TEST_CASE("adaptive throttle's window rolls bucket by bucket") {
  keel::ManualClock clock;
  double u = 0.999;
  keel_test::FractionGen gen{&u};
  auto t = Throttle(clock, gen);  // 2 min in 120 buckets of 1 s
  Calls(*t, 10, false);
  CHECK(t->RejectionProbability() == Approx(10.0 / 11));
  clock.Advance(60s);
  Calls(*t, 10, false);
  CHECK(t->Stats().requests == 20);
  clock.Advance(59s);  // 119 s: the first bucket is still in the window
  CHECK(t->Stats().requests == 20);
  clock.Advance(1s);  // 120 s: it left
  CHECK(t->Stats().requests == 10);
  CHECK(t->RejectionProbability() == Approx(10.0 / 11));
  clock.Advance(60s);
  CHECK(t->Stats().requests == 0);
  CHECK(t->RejectionProbability() == 0.0);
  // After an idle spell longer than the window, everything is gone at once.
  Calls(*t, 5, false);
  clock.Advance(1h);
  CHECK(t->Stats().requests == 0);
}

TEST_CASE("adaptive throttle counts a call at an earlier time in the newest bucket") {
  keel::ManualClock clock;
  double u = 0.999;
  keel_test::FractionGen gen{&u};
  auto t = Throttle(clock, gen);
  const keel::TimePoint start = clock.Now();
  clock.Advance(90s);
  Calls(*t, 1, false);
  auto late = t->TryAcquire(Criticality::kCritical, start);  // a caller's stale clock read
  REQUIRE(late.ok());
  late->OnRejected();
  clock.Advance(30s);  // 120 s after start, 30 s after the bucket they were counted in
  CHECK(t->Stats().requests == 2);
}

TEST_CASE("adaptive throttle counts an accept in its request's bucket") {
  keel::ManualClock clock;
  double u = 0.999;
  keel_test::FractionGen gen{&u};
  auto t = Throttle(clock, gen);
  auto slow = t->TryAcquire();
  REQUIRE(slow.ok());
  clock.Advance(90s);
  slow->OnAccepted();
  CHECK(t->Stats().accepts == 1);
  clock.Advance(30s);  // the request's bucket left the window: the accept with it
  CHECK(t->Stats().accepts == 0);
  CHECK(t->Stats().requests == 0);
  // A call longer than the window: its accept is dropped with its request.
  auto longer = t->TryAcquire();
  REQUIRE(longer.ok());
  clock.Advance(3min);
  longer->OnAccepted();
  CHECK(t->Stats().accepts == 0);
  CHECK(t->Stats().accepted_total == 2);
}

TEST_CASE("adaptive throttle takes an ignored call out of the window") {
  keel::ManualClock clock;
  double u = 0.999;
  keel_test::FractionGen gen{&u};
  auto t = Throttle(clock, gen);
  {
    auto dropped = t->TryAcquire();
    REQUIRE(dropped.ok());
    CHECK(t->Stats().requests == 1);
  }  // destroyed unrecorded: ignored
  auto ignored = t->TryAcquire();
  REQUIRE(ignored.ok());
  ignored->OnIgnore();
  ignored->OnAccepted();  // a second outcome does nothing
  const auto s = t->Stats();
  CHECK(s.requests == 0);
  CHECK(s.accepts == 0);
  CHECK(s.ignored_total == 2);
  CHECK(s.accepted_total == 0);
}

TEST_CASE("adaptive throttle sheds lower criticalities first") {
  keel::ManualClock clock;
  double u = 0.999;
  keel_test::FractionGen gen{&u};
  auto t = Throttle(clock, gen);
  // The backend accepts 60% of critical calls: critical (K 2) is not shed, sheddable_plus
  // (K 1.5) and sheddable (K 1.2) are, and the least critical most.
  Calls(*t, 6, true);
  Calls(*t, 4, false);
  CHECK(t->RejectionProbability(Criticality::kCriticalPlus) == 0.0);  // no critical_plus calls
  CHECK(t->RejectionProbability(Criticality::kCritical) == 0.0);
  CHECK(t->RejectionProbability(Criticality::kSheddablePlus) == Approx(1.0 / 11));
  CHECK(t->RejectionProbability(Criticality::kSheddable) == Approx(2.8 / 11));
}

TEST_CASE("adaptive throttle: less critical calls never raise a more critical call's odds") {
  keel::ManualClock clock;
  double u = 0.999;
  keel_test::FractionGen gen{&u};
  auto t = Throttle(clock, gen);
  Calls(*t, 10, true, Criticality::kCritical);
  Calls(*t, 100, false, Criticality::kSheddable);
  CHECK(t->RejectionProbability(Criticality::kCritical) == 0.0);
  CHECK(t->RejectionProbability(Criticality::kCriticalPlus) == 0.0);
  CHECK(t->RejectionProbability(Criticality::kSheddable) == Approx((110 - 12.0) / 111));
  // Sheddable calls rejected locally count as sheddable requests only.
  u = 0.0;
  CHECK_FALSE(t->TryAcquire(Criticality::kSheddable).ok());
  CHECK(t->TryAcquire(Criticality::kCritical).ok());
  const auto s = t->Stats();
  CHECK(s.rejected_total[3] == 1);
  CHECK(s.rejected_total[1] == 0);
  CHECK(s.rejection_probability[1] == 0.0);
}

TEST_CASE("adaptive throttle's error names a criticality other than the default") {
  keel::ManualClock clock;
  double u = 0.0;
  keel_test::FractionGen gen{&u};
  auto t = Throttle(clock, gen);
  Calls(*t, 1, false, Criticality::kCriticalPlus);
  auto r = t->TryAcquire(Criticality::kCriticalPlus);
  REQUIRE(absl::IsResourceExhausted(r.status()));
  CHECK(r.status().message() ==
        "adaptive throttle \"api\": rejected critical_plus call locally with probability 0.50 (1 "
        "requests, 0 accepts of critical_plus calls in the last 2m, K 2)");
}

TEST_CASE("adaptive throttle's default classifier: accepted unless overloaded or unavailable") {
  using keel::overload::BackendAccepted;
  CHECK(BackendAccepted(absl::OkStatus()));
  CHECK(BackendAccepted(absl::NotFoundError("")));
  CHECK(BackendAccepted(absl::DeadlineExceededError("")));
  CHECK(BackendAccepted(absl::InternalError("")));
  CHECK_FALSE(BackendAccepted(absl::ResourceExhaustedError("")));
  CHECK_FALSE(BackendAccepted(absl::UnavailableError("")));

  keel::ManualClock clock;
  double u = 0.999;
  keel_test::FractionGen gen{&u};
  auto t = Throttle(clock, gen);
  for (absl::Status s : {absl::OkStatus(), absl::NotFoundError("x"),
                         absl::ResourceExhaustedError("quota"), absl::UnavailableError("down")}) {
    auto ticket = t->TryAcquire();
    REQUIRE(ticket.ok());
    ticket->Record(s);
  }
  const auto s = t->Stats();
  CHECK(s.accepts == 2);
  CHECK(s.accepted_total == 2);
  CHECK(s.backend_rejected_total == 2);
}

TEST_CASE("adaptive throttle uses a custom classifier and counts one that throws as accepted") {
  keel::ManualClock clock;
  double u = 0.999;
  keel_test::FractionGen gen{&u};
  auto strict = Throttle(
      clock, gen, {.name = "strict", .accepted = [](const absl::Status& s) { return s.ok(); }});
  auto ticket = strict->TryAcquire();
  ticket->Record(absl::DeadlineExceededError("slow"));
  CHECK(strict->Stats().accepts == 0);
  auto buggy = Throttle(clock, gen, {.name = "buggy", .accepted = [](const absl::Status&) -> bool {
                                       throw std::runtime_error("bug");
                                     }});
  auto t2 = buggy->TryAcquire();
  t2->Record(absl::UnavailableError("down"));
  CHECK(buggy->Stats().accepts == 1);
  CHECK(buggy->Stats().classifier_exceptions_total == 1);
}

TEST_CASE(
    "adaptive throttle tells a listener, outside its lock, when throttling starts and stops") {
  keel::ManualClock clock;
  double u = 0.999;
  keel_test::FractionGen gen{&u};
  std::vector<std::pair<Criticality, bool>> heard;
  AdaptiveThrottle* self = nullptr;
  AdaptiveThrottle::Options options{.name = "api"};
  options.on_throttling_change = [&](Criticality c, bool throttling) {
    (void)self->Stats();  // takes the throttle's lock: would deadlock if called under it
    heard.emplace_back(c, throttling);
    if (heard.size() == 2) throw std::runtime_error("listener bug");
  };
  auto t = Throttle(clock, gen, std::move(options));
  self = t.get();
  Calls(*t, 3, false);  // the first call sees p = 0; the second p = 1/2: starts
  REQUIRE(heard.size() == 1);
  CHECK(heard[0] == std::make_pair(Criticality::kCritical, true));
  Calls(*t, 2, false, Criticality::kSheddable);  // sheddable starts too (it sees critical's)
  REQUIRE(heard.size() == 2);
  CHECK(heard[1] == std::make_pair(Criticality::kSheddable, true));
  clock.Advance(2min);
  Calls(*t, 1, true);  // the window is empty: critical stops
  REQUIRE(heard.size() == 3);
  CHECK(heard[2] == std::make_pair(Criticality::kCritical, false));
  CHECK(t->Stats().listener_exceptions_total == 1);
}

TEST_CASE("adaptive throttle validates its options") {
  auto message = [](AdaptiveThrottle::Options o) {
    return std::string(AdaptiveThrottle::Create(std::move(o)).status().message());
  };
  CHECK(message({.name = "api", .k = 0.5}) == "adaptive throttle \"api\": k must be >= 1, got 0.5");
  CHECK(message({.name = "api", .criticality_share = {1, 0.5, 0.75, 0.5}}) ==
        "adaptive throttle \"api\": criticality_share[2] must be <= criticality_share[1], got "
        "0.75");
  CHECK(message({.name = "api", .criticality_share = {1, 1, 0, 0}}) ==
        "adaptive throttle \"api\": criticality_share[2] must be in (0, 1], got 0");
  CHECK(message({.name = "api", .window = 0s}) ==
        "adaptive throttle \"api\": window must be > 0, got 0");
  CHECK(message({.name = "api", .buckets = 0}) ==
        "adaptive throttle \"api\": buckets must be in [1, 3600], got 0");
  CHECK(message({.name = "api", .window = 100ms, .buckets = 1000}) ==
        "adaptive throttle \"api\": window must be >= 1ms per bucket (1000 buckets), got 100ms");
  CHECK(AdaptiveThrottle::Create({}).ok());
}

TEST_CASE("adaptive throttle registers its metrics") {
  keel::ManualClock clock;
  double u = 0.0;
  keel_test::FractionGen gen{&u};
  keel::MetricsRegistry metrics;
  auto t = AdaptiveThrottle::Create({.name = "api"}, clock, gen, &metrics).value();
  Calls(*t, 1, false);
  CHECK_FALSE(t->TryAcquire().ok());
  const std::string text = metrics.RenderPrometheus();
  CHECK_THAT(text, Catch::Contains("keel_adaptive_throttle_requests_total{criticality=\"critical\","
                                   "decision=\"admitted\",name=\"api\"} 1"));
  CHECK_THAT(text, Catch::Contains("keel_adaptive_throttle_requests_total{criticality=\"critical\","
                                   "decision=\"rejected\",name=\"api\"} 1"));
  CHECK_THAT(text, Catch::Contains("keel_adaptive_throttle_responses_total{name=\"api\","
                                   "result=\"rejected\"} 1"));
  CHECK_THAT(text, Catch::Contains("keel_adaptive_throttle_window{count=\"requests\","
                                   "name=\"api\"} 2"));
  CHECK_THAT(text, Catch::Contains("keel_adaptive_throttle_rejection_probability{"
                                   "criticality=\"critical\",name=\"api\"} 0.666"));
}

}  // namespace
