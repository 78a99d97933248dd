#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "keel/resilience/fallback.h"
#include "keel/resilience/retry.h"
#include "keel/resilience/timeout.h"
#include "unit/resilience/recording_clock.h"

// GCC 12 warns about fields a designated initializer leaves to their defaults (fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace std::chrono_literals;
using keel::CallContext;
using keel::Deadline;
using keel::Fallback;
using keel::Timeout;

TEST_CASE("cooperative timeout gives the callee now plus the timeout when that is sooner") {
  keel::ManualClock clock;
  Timeout timeout = Timeout::Create({.timeout = 200ms}, clock).value();
  keel::TimePoint seen{};
  auto r = timeout.Execute(Deadline::After(1s, clock), [&](const CallContext& ctx) {
    seen = ctx.deadline.time();
    return absl::OkStatus();
  });
  CHECK(r.ok());
  CHECK(seen == clock.Now() + 200ms);
}

TEST_CASE("cooperative timeout keeps the outer deadline when that is sooner") {
  keel::ManualClock clock;
  Timeout timeout = Timeout::Create({.timeout = 200ms}, clock).value();
  const Deadline outer = Deadline::After(50ms, clock);
  keel::TimePoint seen{};
  CHECK(timeout
            .Execute(outer,
                     [&](const CallContext& ctx) {
                       seen = ctx.deadline.time();
                       return absl::OkStatus();
                     })
            .ok());
  CHECK(seen == outer.time());
}

TEST_CASE("cooperative timeout passes the callee's result and context through") {
  keel::ManualClock clock;
  Timeout timeout = Timeout::Create({.timeout = 1s}, clock).value();
  keel::CancellationSource source;
  CallContext outer{.deadline = Deadline::Infinite(), .cancellation = source.token(), .attempt = 3};
  auto r = timeout.Execute(outer, [&](const CallContext& ctx) -> absl::StatusOr<int> {
    CHECK(ctx.attempt == 3);
    source.Cancel();
    CHECK(ctx.cancellation.cancelled());
    return absl::DeadlineExceededError("db: statement timeout");
  });
  CHECK(r.status() == absl::DeadlineExceededError("db: statement timeout"));
}

TEST_CASE("a timeout inside a retry bounds each attempt and the caller's deadline the whole") {
  keel::testing::RecordingClock clock;
  auto retry = keel::Retry::Create(
                   {.max_attempts = 5,
                    .backoff = {.kind = keel::Backoff::Kind::kConstant, .base = 100ms},
                    .retry_on = [](const absl::Status& s) { return absl::IsDeadlineExceeded(s); }},
                   clock)
                   .value();
  Timeout per_attempt = Timeout::Create({.timeout = 300ms}, clock).value();
  const Deadline total = Deadline::After(1s, clock);
  std::vector<keel::Duration> budgets;
  auto r = retry.Execute(total, [&](const CallContext& ctx) {
    return per_attempt.Execute(ctx, [&](const CallContext& inner) {
      budgets.push_back(inner.deadline.Remaining());
      clock.Advance(inner.deadline.Remaining());  // a slow callee uses all it was given
      return absl::DeadlineExceededError("slow");
    });
  });
  // Attempts at 0, 400 and 800 ms: 300, 300, then the 200 ms the total deadline leaves.
  CHECK(budgets == std::vector<keel::Duration>{300ms, 300ms, 200ms});
  CHECK(absl::IsDeadlineExceeded(r));
}

TEST_CASE("timeout rejects a non-positive timeout naming the field") {
  auto r = Timeout::Create({.name = "db", .timeout = -250ms});
  CHECK(absl::IsInvalidArgument(r.status()));
  // The duration prints as every keel duration does, not as a bare number of milliseconds.
  CHECK(std::string(r.status().message()) == "timeout \"db\": timeout must be > 0, got -250ms");
  CHECK(absl::IsInvalidArgument(Timeout::Create({.timeout = 0ms}).status()));
}

TEST_CASE("fallback answers a failure with the handler's result") {
  auto fallback = Fallback<int>::Create([](const absl::Status& s) -> absl::StatusOr<int> {
                    return absl::IsUnavailable(s) ? -1 : -2;
                  }).value();
  auto r = fallback.Execute(CallContext{}, [](const CallContext&) -> absl::StatusOr<int> {
    return absl::UnavailableError("down");
  });
  REQUIRE(r.ok());
  CHECK(*r == -1);
}

TEST_CASE("fallback leaves successes and unhandled failures alone") {
  int handled = 0;
  auto fallback = Fallback<int>::Create(
                      [&](const absl::Status&) -> absl::StatusOr<int> {
                        ++handled;
                        return 0;
                      },
                      [](const absl::Status& s) { return !absl::IsInvalidArgument(s); })
                      .value();
  CHECK(*fallback.Execute(CallContext{},
                          [](const CallContext&) -> absl::StatusOr<int> { return 5; }) == 5);
  auto r = fallback.Execute(CallContext{}, [](const CallContext&) -> absl::StatusOr<int> {
    return absl::InvalidArgumentError("bad sku");
  });
  CHECK(r.status() == absl::InvalidArgumentError("bad sku"));
  CHECK(handled == 0);
}

TEST_CASE("fallback handler may return a different error") {
  auto fallback = Fallback<int>::Create([](const absl::Status& s) -> absl::StatusOr<int> {
                    return absl::UnavailableError(std::string("no fallback either: ") +
                                                  std::string(s.message()));
                  }).value();
  auto r = fallback.Recover(absl::AbortedError("lost race"));
  CHECK(absl::IsUnavailable(r.status()));
}

TEST_CASE("fallback rejects a missing handler or predicate naming the field") {
  auto a = Fallback<int>::Create(Fallback<int>::Options{});
  CHECK(std::string(a.status().message()) == "fallback \"fallback\": handler must be set");
  auto b =
      Fallback<int>::Create([](const absl::Status&) -> absl::StatusOr<int> { return 1; }, nullptr);
  CHECK(std::string(b.status().message()) == "fallback \"fallback\": handle_if must be set");
}
