#include "keel/resilience/circuit_breaker.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "keel/metrics.h"
#include "keel/status.h"

namespace {

using namespace std::chrono_literals;
using keel::CircuitBreaker;
using State = CircuitBreaker::State;

// A small breaker that opens at 50% failures over 4 calls.
CircuitBreaker::Options Small() {
  return {.name = "test",
          .failure_rate_threshold = 0.5,
          .slow_call_duration = 1s,
          .window_size = 4,
          .minimum_calls = 4,
          .half_open_permits = 2,
          .wait_in_open = 10s,
          .max_wait_in_half_open = 5s};
}

std::unique_ptr<CircuitBreaker> Make(keel::ManualClock& clock,
                                     CircuitBreaker::Options options = Small()) {
  auto b = CircuitBreaker::Create(std::move(options), clock);
  REQUIRE(b.ok());
  return std::move(b).value();
}

// Acquires a permit (which must be granted) and records `s` taking `elapsed`.
void Call(CircuitBreaker& b, const absl::Status& s, keel::Duration elapsed = 1ms) {
  auto permit = b.TryAcquire();
  REQUIRE(permit.ok());
  permit->Record(s, elapsed);
}

const absl::Status kFail = absl::UnavailableError("backend down");

void Trip(CircuitBreaker& b) {
  for (int i = 0; i < 4; ++i) Call(b, kFail);
  REQUIRE(b.state() == State::kOpen);
}

TEST_CASE("circuit breaker options default to Resilience4j's values") {
  const CircuitBreaker::Options o;
  CHECK(o.failure_rate_threshold == 0.5);
  CHECK(o.slow_call_rate_threshold == 1.0);
  CHECK(o.slow_call_duration == 60s);
  CHECK(o.window_type == CircuitBreaker::WindowType::kCountBased);
  CHECK(o.window_size == 100);
  CHECK(o.minimum_calls == 100);
  CHECK(o.half_open_permits == 10);
  CHECK(o.wait_in_open == 60s);
  CHECK(o.max_wait_in_half_open == 60s);
}

TEST_CASE("circuit breaker opens when the failure rate reaches the threshold") {
  keel::ManualClock clock;
  auto b = Make(clock);
  Call(*b, absl::OkStatus());
  Call(*b, absl::OkStatus());
  Call(*b, kFail);
  CHECK(b->state() == State::kClosed);  // 3 calls < minimum_calls
  Call(*b, kFail);                      // 2 of 4 = 50%
  CHECK(b->state() == State::kOpen);
}

TEST_CASE("circuit breaker stays closed while the failure rate is below the threshold") {
  keel::ManualClock clock;
  auto b = Make(clock);
  for (int i = 0; i < 20; ++i) {
    Call(*b, i % 4 == 0 ? kFail : absl::OkStatus());  // 25%
  }
  CHECK(b->state() == State::kClosed);
  CHECK(b->Stats().failure_rate == 0.25);
}

TEST_CASE("circuit breaker never opens before minimum_calls are recorded") {
  keel::ManualClock clock;
  auto options = Small();
  options.window_size = 10;
  options.minimum_calls = 5;
  auto b = Make(clock, options);
  for (int i = 0; i < 4; ++i) Call(*b, kFail);  // 100% failures, but only 4 calls
  CHECK(b->state() == State::kClosed);
  CHECK_FALSE(b->Stats().failure_rate.has_value());
  Call(*b, kFail);
  CHECK(b->state() == State::kOpen);
}

TEST_CASE("circuit breaker caps minimum_calls at a count-based window's size") {
  keel::ManualClock clock;
  auto options = Small();
  options.minimum_calls = 100;  // more than the window of 4 can ever hold
  auto b = Make(clock, options);
  for (int i = 0; i < 4; ++i) Call(*b, kFail);
  CHECK(b->state() == State::kOpen);
}

TEST_CASE("circuit breaker opens on slow calls alone") {
  keel::ManualClock clock;
  auto b = Make(clock);
  for (int i = 0; i < 3; ++i) Call(*b, absl::OkStatus(), 1s);  // slow successes
  CHECK(b->state() == State::kClosed);
  Call(*b, absl::OkStatus(), 2s);
  CHECK(b->state() == State::kOpen);
  const auto stats = b->Stats();
  CHECK(stats.slow_total == 4);
  CHECK(stats.failed_total == 0);
}

TEST_CASE("circuit breaker slow-call rate below its threshold does not open") {
  keel::ManualClock clock;
  auto b = Make(clock);  // slow_call_rate_threshold 1.0: every call must be slow
  for (int i = 0; i < 8; ++i) Call(*b, absl::OkStatus(), i % 4 == 1 ? 1ms : 5s);
  CHECK(b->state() == State::kClosed);
  CHECK(b->Stats().slow_call_rate == 0.75);
}

TEST_CASE("circuit breaker never counts ignored outcomes") {
  keel::ManualClock clock;
  auto b = Make(clock);
  const absl::Status ignored[] = {
      absl::CancelledError("c"),         absl::InvalidArgumentError("i"),
      absl::NotFoundError("n"),          absl::AlreadyExistsError("a"),
      absl::PermissionDeniedError("p"),  absl::UnauthenticatedError("u"),
      absl::FailedPreconditionError("f")};
  for (int round = 0; round < 3; ++round) {
    for (const auto& s : ignored) Call(*b, s);
  }
  CHECK(b->state() == State::kClosed);
  const auto stats = b->Stats();
  CHECK(stats.buffered_calls == 0);
  CHECK(stats.ignored_total == 21);
  CHECK(stats.failed_total == 0);
}

TEST_CASE("circuit breaker default classifier treats server-side errors as failures") {
  for (auto s : {absl::UnavailableError(""), absl::InternalError(""), absl::UnknownError(""),
                 absl::DeadlineExceededError(""), absl::ResourceExhaustedError(""),
                 absl::AbortedError(""), absl::DataLossError("")}) {
    CHECK(CircuitBreaker::DefaultClassifier(s) == CircuitBreaker::Outcome::kFailure);
  }
  CHECK(CircuitBreaker::DefaultClassifier(absl::OkStatus()) == CircuitBreaker::Outcome::kSuccess);
}

TEST_CASE("circuit breaker uses a custom classifier") {
  keel::ManualClock clock;
  auto options = Small();
  options.classifier = [](const absl::Status& s) {
    return absl::IsNotFound(s) ? CircuitBreaker::Outcome::kFailure
                               : CircuitBreaker::Outcome::kSuccess;
  };
  auto b = Make(clock, options);
  for (int i = 0; i < 4; ++i) Call(*b, kFail);  // counted as successes by this classifier
  CHECK(b->state() == State::kClosed);
  for (int i = 0; i < 2; ++i) Call(*b, absl::NotFoundError("x"));
  CHECK(b->state() == State::kOpen);
}

TEST_CASE("circuit breaker count-based window forgets calls that slid out") {
  keel::ManualClock clock;
  auto b = Make(clock);
  Call(*b, kFail);
  for (int i = 0; i < 3; ++i) Call(*b, absl::OkStatus());  // 1 of 4 failed
  Call(*b, absl::OkStatus());                              // the failure slides out
  CHECK(b->Stats().failed_calls == 0);
  Call(*b, kFail);
  CHECK(b->state() == State::kClosed);  // 1 of 4 again
  CHECK(b->Stats().failed_calls == 1);
}

TEST_CASE("circuit breaker time-based window forgets calls older than window_size seconds") {
  keel::ManualClock clock;
  auto options = Small();
  options.window_type = CircuitBreaker::WindowType::kTimeBased;
  options.window_size = 10;  // seconds
  auto b = Make(clock, options);
  Call(*b, kFail);
  Call(*b, kFail);
  Call(*b, kFail);
  CHECK(b->Stats().buffered_calls == 3);
  clock.Advance(10s);  // those three are now outside the window
  CHECK(b->Stats().buffered_calls == 0);
  Call(*b, kFail);
  Call(*b, absl::OkStatus());
  Call(*b, absl::OkStatus());
  CHECK(b->state() == State::kClosed);  // 3 calls < minimum_calls of 4
  clock.Advance(5s);
  Call(*b, absl::OkStatus());  // 1 of 4 failed within 10 s
  CHECK(b->state() == State::kClosed);
  Call(*b, kFail);  // 2 of 5
  CHECK(b->state() == State::kClosed);
  Call(*b, kFail);  // 3 of 6 = 50%
  CHECK(b->state() == State::kOpen);
}

TEST_CASE("circuit breaker time-based window keeps calls within the window across seconds") {
  keel::ManualClock clock;
  auto options = Small();
  options.window_type = CircuitBreaker::WindowType::kTimeBased;
  options.window_size = 3;
  auto b = Make(clock, options);
  Call(*b, kFail);
  clock.Advance(1s);
  Call(*b, kFail);
  clock.Advance(1s);
  Call(*b, kFail);
  CHECK(b->Stats().buffered_calls == 3);
  clock.Advance(1s);  // the first second has left the window
  CHECK(b->Stats().buffered_calls == 2);
  clock.Advance(100s);  // a long idle gap clears everything without replaying each second
  CHECK(b->Stats().buffered_calls == 0);
}

TEST_CASE("an open circuit breaker rejects with UNAVAILABLE and the remaining open time") {
  keel::ManualClock clock;
  auto b = Make(clock);
  Trip(*b);
  clock.Advance(3s);
  auto permit = b->TryAcquire();
  REQUIRE_FALSE(permit.ok());
  CHECK(absl::IsUnavailable(permit.status()));
  // The time left prints as every keel duration does (FormatDuration), not "7000 ms".
  CHECK(std::string(permit.status().message()) == "circuit breaker \"test\": open; retry after 7s");
  CHECK(keel::RetryAfter(permit.status()) == std::optional<keel::Duration>(7s));
  CHECK(b->Stats().not_permitted_total == 1);
}

TEST_CASE("circuit breaker moves to half-open when wait_in_open ends, with no call needed") {
  keel::ManualClock clock;
  auto b = Make(clock);
  std::vector<std::pair<State, State>> seen;
  b->AddListener([&](State from, State to) { seen.emplace_back(from, to); });
  Trip(*b);
  clock.Advance(10s - 1ns);
  CHECK(b->state() == State::kOpen);
  clock.Advance(1ns);
  const CircuitBreaker& observer = *b;          // a read-only view is enough
  CHECK(observer.state() == State::kHalfOpen);  // nobody called TryAcquire
  REQUIRE(seen.size() == 2);
  CHECK(seen[0] == std::pair{State::kClosed, State::kOpen});
  CHECK(seen[1] == std::pair{State::kOpen, State::kHalfOpen});
}

TEST_CASE("a half-open circuit breaker admits at most half_open_permits probes") {
  keel::ManualClock clock;
  auto b = Make(clock);
  Trip(*b);
  clock.Advance(10s);
  auto p1 = b->TryAcquire();
  auto p2 = b->TryAcquire();
  auto p3 = b->TryAcquire();
  CHECK(p1.ok());
  CHECK(p2.ok());
  REQUIRE_FALSE(p3.ok());
  CHECK(absl::IsUnavailable(p3.status()));
  CHECK(b->state() == State::kHalfOpen);
}

TEST_CASE("a half-open circuit breaker closes when the probes succeed") {
  keel::ManualClock clock;
  auto b = Make(clock);
  Trip(*b);
  clock.Advance(10s);
  Call(*b, absl::OkStatus());
  CHECK(b->state() == State::kHalfOpen);  // one of two probes recorded
  Call(*b, absl::OkStatus());
  CHECK(b->state() == State::kClosed);
  CHECK(b->Stats().buffered_calls == 0);  // a fresh window
}

TEST_CASE("a half-open circuit breaker reopens when the probes fail") {
  keel::ManualClock clock;
  auto b = Make(clock);
  Trip(*b);
  clock.Advance(10s);
  Call(*b, absl::OkStatus());
  Call(*b, kFail);  // 1 of 2 = 50% >= threshold
  CHECK(b->state() == State::kOpen);
  auto rejected = b->TryAcquire();
  REQUIRE_FALSE(rejected.ok());
  CHECK(keel::RetryAfter(rejected.status()) == std::optional<keel::Duration>(10s));
}

TEST_CASE("a half-open circuit breaker reopens when its probes exceed max_wait_in_half_open") {
  keel::ManualClock clock;
  auto b = Make(clock);
  Trip(*b);
  clock.Advance(10s);
  auto hung = b->TryAcquire();  // a probe that never finishes
  REQUIRE(hung.ok());
  clock.Advance(5s - 1ns);
  CHECK(b->state() == State::kHalfOpen);
  clock.Advance(1ns);
  CHECK(b->state() == State::kOpen);
  clock.Advance(10s);
  CHECK(b->state() == State::kHalfOpen);  // a new round of probes, not stuck
  CHECK(b->TryAcquire().ok());
  hung->Record(absl::OkStatus(), 25s);  // late: belongs to an earlier half-open phase
  CHECK(b->Stats().buffered_calls == 0);
}

TEST_CASE("a half-open circuit breaker without a limit waits for its probes") {
  keel::ManualClock clock;
  auto options = Small();
  options.max_wait_in_half_open = CircuitBreaker::kNoHalfOpenLimit;
  auto b = Make(clock, options);
  Trip(*b);
  clock.Advance(10s);
  auto probe = b->TryAcquire();
  REQUIRE(probe.ok());
  clock.Advance(24h);
  CHECK(b->state() == State::kHalfOpen);
}

TEST_CASE("circuit breaker permits dropped without Record free their half-open slot") {
  keel::ManualClock clock;
  auto b = Make(clock);
  Trip(*b);
  clock.Advance(10s);
  {
    auto p1 = b->TryAcquire();
    auto p2 = b->TryAcquire();
    REQUIRE(p1.ok());
    REQUIRE(p2.ok());
    CHECK_FALSE(b->TryAcquire().ok());
  }  // both dropped
  auto p3 = b->TryAcquire();
  CHECK(p3.ok());
  p3->Release();
  Call(*b, absl::CancelledError("ignored outcome also frees the slot"));
  Call(*b, absl::OkStatus());
  Call(*b, absl::OkStatus());
  CHECK(b->state() == State::kClosed);
  CHECK(b->Stats().ignored_total == 4);
}

TEST_CASE("circuit breaker drops outcomes of permits issued before a state change") {
  keel::ManualClock clock;
  auto b = Make(clock);
  auto early = b->TryAcquire();  // issued while CLOSED
  REQUIRE(early.ok());
  Trip(*b);
  clock.Advance(10s);
  auto probe = b->TryAcquire();
  REQUIRE(probe.ok());
  early->Record(kFail, 1ms);  // must not count as a half-open probe
  CHECK(b->Stats().buffered_calls == 0);
  probe->Record(absl::OkStatus(), 1ms);
  CHECK(b->Stats().buffered_calls == 1);
  CHECK(b->state() == State::kHalfOpen);
}

TEST_CASE("a disabled circuit breaker permits everything and records nothing") {
  keel::ManualClock clock;
  auto b = Make(clock);
  b->TransitionTo(State::kDisabled);
  for (int i = 0; i < 50; ++i) Call(*b, kFail);
  CHECK(b->state() == State::kDisabled);
  CHECK(b->Stats().buffered_calls == 0);
}

TEST_CASE("a forced-open circuit breaker rejects everything and never moves on") {
  keel::ManualClock clock;
  auto b = Make(clock);
  b->TransitionTo(State::kForcedOpen);
  clock.Advance(24h);
  auto p = b->TryAcquire();
  REQUIRE_FALSE(p.ok());
  CHECK(absl::IsUnavailable(p.status()));
  CHECK_FALSE(keel::RetryAfter(p.status()).has_value());
  CHECK(b->state() == State::kForcedOpen);
}

TEST_CASE("a metrics-only circuit breaker records rates but never opens") {
  keel::ManualClock clock;
  auto b = Make(clock);
  b->TransitionTo(State::kMetricsOnly);
  for (int i = 0; i < 8; ++i) Call(*b, kFail);
  CHECK(b->state() == State::kMetricsOnly);
  const auto stats = b->Stats();
  CHECK(stats.failure_rate == 1.0);
  CHECK(stats.buffered_calls == 4);
}

TEST_CASE("circuit breaker Reset returns to closed with an empty window from any state") {
  keel::ManualClock clock;
  auto b = Make(clock);
  Call(*b, kFail);
  Call(*b, kFail);
  Call(*b, kFail);
  b->Reset();
  CHECK(b->Stats().buffered_calls == 0);
  Call(*b, kFail);
  CHECK(b->state() == State::kClosed);  // would be open if the old failures still counted
  b->Reset();
  Trip(*b);
  b->Reset();
  CHECK(b->state() == State::kClosed);
  CHECK(b->TryAcquire().ok());
  b->TransitionTo(State::kForcedOpen);
  b->Reset();
  CHECK(b->state() == State::kClosed);
}

TEST_CASE("circuit breaker TransitionTo(kOpen) starts a new wait") {
  keel::ManualClock clock;
  auto b = Make(clock);
  b->TransitionTo(State::kOpen);
  auto p = b->TryAcquire();
  REQUIRE_FALSE(p.ok());
  CHECK(keel::RetryAfter(p.status()) == std::optional<keel::Duration>(10s));
}

TEST_CASE("circuit breaker listeners run outside the lock and may call the breaker") {
  keel::ManualClock clock;
  auto b = Make(clock);
  std::vector<State> observed;
  // Calling state() and Stats() from the listener would deadlock if it ran under the lock.
  b->AddListener([&](State, State to) {
    observed.push_back(b->state());
    CHECK(b->Stats().state == to);
  });
  Trip(*b);
  b->Reset();
  REQUIRE(observed.size() == 2);
  CHECK(observed[0] == State::kOpen);
  CHECK(observed[1] == State::kClosed);
}

TEST_CASE("circuit breaker listener that transitions the breaker sees events in order") {
  keel::ManualClock clock;
  auto b = Make(clock);
  std::vector<std::pair<State, State>> seen;
  b->AddListener([&](State from, State to) {
    seen.emplace_back(from, to);
    if (to == State::kOpen) b->TransitionTo(State::kDisabled);
  });
  for (int i = 0; i < 4; ++i) Call(*b, kFail);
  CHECK(b->state() == State::kDisabled);
  REQUIRE(seen.size() == 2);
  CHECK(seen[0] == std::pair{State::kClosed, State::kOpen});
  CHECK(seen[1] == std::pair{State::kOpen, State::kDisabled});
}

TEST_CASE("circuit breaker listener that throws is dropped and counted, not fatal or wedging") {
  keel::ManualClock clock;
  keel::MetricsRegistry registry;
  CircuitBreaker::Options o = Small();
  o.name = "ai";
  auto b = CircuitBreaker::Create(o, clock, &registry).value();
  std::vector<State> later_listener;
  b->AddListener([](State, State) { throw std::runtime_error("pager down"); });
  b->AddListener([&](State, State to) { later_listener.push_back(to); });
  Trip(*b);    // delivering CLOSED -> OPEN: the first listener throws
  b->Reset();  // later events still get through: delivery is not stuck
  REQUIRE(later_listener.size() == 2);
  CHECK(later_listener[0] == State::kOpen);
  CHECK(later_listener[1] == State::kClosed);
  CHECK(b->Stats().listener_exceptions_total == 2);
  CHECK(registry.RenderPrometheus().find(
            "keel_circuit_breaker_listener_exceptions_total{name=\"ai\"} 2") != std::string::npos);
}

TEST_CASE("circuit breaker Execute records the call's status and duration") {
  keel::ManualClock clock;
  auto b = Make(clock);
  int calls = 0;
  absl::StatusOr<int> r = b->Execute([&]() -> absl::StatusOr<int> {
    ++calls;
    clock.Advance(2s);  // slow
    return 42;
  });
  REQUIRE(r.ok());
  CHECK(*r == 42);
  absl::Status s = b->Execute([&] {
    ++calls;
    return kFail;
  });
  CHECK(absl::IsUnavailable(s));
  const auto stats = b->Stats();
  CHECK(stats.successful_total == 1);
  CHECK(stats.failed_total == 1);
  CHECK(stats.slow_total == 1);
  CHECK(calls == 2);
}

TEST_CASE("circuit breaker Execute does not call fn when open") {
  keel::ManualClock clock;
  auto b = Make(clock);
  Trip(*b);
  bool called = false;
  absl::StatusOr<std::string> r = b->Execute([&]() -> absl::StatusOr<std::string> {
    called = true;
    return std::string("x");
  });
  CHECK_FALSE(called);
  CHECK(absl::IsUnavailable(r.status()));
  CHECK(keel::RetryAfter(r.status()).has_value());
}

TEST_CASE("circuit breaker Stats counts every outcome and rejection") {
  keel::ManualClock clock;
  auto b = Make(clock);
  Call(*b, absl::OkStatus());
  Call(*b, absl::NotFoundError("x"));
  { auto dropped = b->TryAcquire(); }
  Call(*b, kFail);
  Call(*b, kFail);
  Call(*b, kFail);  // 3 of 4 -> open
  CHECK_FALSE(b->TryAcquire().ok());
  const auto st = b->Stats();
  CHECK(st.state == State::kOpen);
  CHECK(st.successful_total == 1);
  CHECK(st.failed_total == 3);
  CHECK(st.ignored_total == 2);
  CHECK(st.not_permitted_total == 1);
  CHECK(st.buffered_calls == 0);  // OPEN starts with an empty window
}

TEST_CASE("circuit breaker exports its counters and state as metrics") {
  keel::ManualClock clock;
  keel::MetricsRegistry registry;
  auto created = CircuitBreaker::Create(Small(), clock, &registry);
  REQUIRE(created.ok());
  auto& b = **created;
  Trip(b);
  CHECK_FALSE(b.TryAcquire().ok());
  const std::string text = registry.RenderPrometheus();
  CHECK(text.find("keel_circuit_breaker_calls_total{name=\"test\",outcome=\"failure\"} 4") !=
        std::string::npos);
  CHECK(text.find("keel_circuit_breaker_not_permitted_total{name=\"test\"} 1") !=
        std::string::npos);
  CHECK(text.find("keel_circuit_breaker_state{name=\"test\",state=\"open\"} 1") !=
        std::string::npos);
  CHECK(text.find("keel_circuit_breaker_state{name=\"test\",state=\"closed\"} 0") !=
        std::string::npos);
  CHECK(text.find("keel_circuit_breaker_transitions_total{name=\"test\",to=\"open\"} 1") !=
        std::string::npos);
}

TEST_CASE("circuit breaker rejects bad options with INVALID_ARGUMENT naming the field") {
  keel::ManualClock clock;
  auto check = [&](auto mutate, const std::string& field) {
    CircuitBreaker::Options o;
    mutate(o);
    auto b = CircuitBreaker::Create(o, clock);
    INFO(field);
    REQUIRE_FALSE(b.ok());
    CHECK(absl::IsInvalidArgument(b.status()));
    const std::string message(b.status().message());
    CHECK(message.rfind("circuit breaker \"" + o.name + "\": " + field + " must be", 0) == 0);
  };
  using O = CircuitBreaker::Options;
  check([](O& o) { o.failure_rate_threshold = 1.5; }, "failure_rate_threshold");
  check([](O& o) { o.failure_rate_threshold = 0; }, "failure_rate_threshold");
  check([](O& o) { o.slow_call_rate_threshold = -0.1; }, "slow_call_rate_threshold");
  check([](O& o) { o.slow_call_duration = 0s; }, "slow_call_duration");
  check([](O& o) { o.window_size = 0; }, "window_size");
  check([](O& o) { o.minimum_calls = 0; }, "minimum_calls");
  check([](O& o) { o.half_open_permits = 0; }, "half_open_permits");
  check([](O& o) { o.wait_in_open = 0s; }, "wait_in_open");
  check([](O& o) { o.max_wait_in_half_open = -1s; }, "max_wait_in_half_open");
  check([](O& o) { o.classifier = nullptr; }, "classifier");
  check([](O& o) { o.name = ""; }, "name");
  CircuitBreaker::Options bad;
  bad.failure_rate_threshold = 1.5;
  bad.name = "payments";
  CHECK(std::string(CircuitBreaker::Create(bad, clock).status().message()) ==
        "circuit breaker \"payments\": failure_rate_threshold must be in (0, 1], got 1.5");
  // Durations print as everywhere in keel (FormatDuration), not as bare numbers.
  CircuitBreaker::Options negative;
  negative.wait_in_open = -250ms;
  CHECK(std::string(CircuitBreaker::Create(negative, clock).status().message()) ==
        "circuit breaker \"circuit-breaker\": wait_in_open must be > 0, got -250ms");
}

}  // namespace

namespace {

TEST_CASE("circuit breaker Execute passes move-only results through") {
  keel::ManualClock clock;
  auto b = Make(clock);
  absl::StatusOr<std::unique_ptr<int>> r =
      b->Execute([]() -> absl::StatusOr<std::unique_ptr<int>> { return std::make_unique<int>(9); });
  REQUIRE(r.ok());
  CHECK(**r == 9);
  CHECK(b->Stats().successful_total == 1);
}

}  // namespace
