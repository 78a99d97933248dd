#include "keel/resilience/retry.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "keel/metrics.h"
#include "keel/status.h"
#include "unit/resilience/recording_clock.h"

// GCC 12 warns about fields a designated initializer leaves to their defaults, which is exactly
// how keel's options are meant to be written (fixed in GCC 13).
#pragma GCC diagnostic ignored "-Wmissing-field-initializers"

using namespace std::chrono_literals;
using keel::Backoff;
using keel::CallContext;
using keel::Deadline;
using keel::Duration;
using keel::Retry;
using keel::testing::RecordingClock;

namespace {

bool Contains(const absl::Status& s, const std::string& part) {
  return std::string(s.message()).find(part) != std::string::npos;
}

// Exponential without jitter: the delays are known exactly (10, 20, 40, ... ms).
Retry::Options Exact(int max_attempts) {
  return {.name = "users",
          .max_attempts = max_attempts,
          .backoff = {.kind = Backoff::Kind::kExponential, .base = 10ms, .cap = 1s}};
}

// A callee that fails with the given statuses in turn, then succeeds with 42.
struct Script {
  std::vector<absl::Status> failures;
  std::vector<int> attempts_seen;
  absl::StatusOr<int> operator()(const CallContext& ctx) {
    attempts_seen.push_back(ctx.attempt);
    const size_t i = attempts_seen.size() - 1;
    if (i < failures.size()) return failures[i];
    return 42;
  }
};

}  // namespace

TEST_CASE("retry returns the first success without sleeping") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(3), clock).value();
  Script call;
  auto r = retry.Execute(Deadline::Infinite(), std::ref(call));
  REQUIRE(r.ok());
  CHECK(*r == 42);
  CHECK(call.attempts_seen == std::vector<int>{1});
  CHECK(clock.sleeps.empty());
}

TEST_CASE("retry tries again on retryable failures and counts attempts in the context") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(3), clock).value();
  Script call{.failures = {absl::UnavailableError("down"), absl::AbortedError("race")}};
  auto r = retry.Execute(Deadline::Infinite(), std::ref(call));
  REQUIRE(r.ok());
  CHECK(call.attempts_seen == std::vector<int>{1, 2, 3});
  CHECK(clock.sleeps == std::vector<Duration>{10ms, 20ms});
}

TEST_CASE("retry gives up after max_attempts with the last status and the attempt count") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(3), clock).value();
  Script call{.failures = {absl::UnavailableError("a"), absl::UnavailableError("b"),
                           keel::WithRetryAfter(absl::AbortedError("last one"), 1ms)}};
  auto r = retry.Execute(Deadline::Infinite(), std::ref(call));
  CHECK(call.attempts_seen.size() == 3);
  CHECK(absl::IsAborted(r.status()));
  CHECK(Contains(r.status(), "retry \"users\": gave up after 3 attempts: last one"));
  // Payloads survive: a caller above can still read the server's hint.
  CHECK(keel::RetryAfter(r.status()) == std::optional<Duration>(1ms));
}

TEST_CASE("retry returns a non-retryable first failure untouched") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(3), clock).value();
  Script call{.failures = {absl::InvalidArgumentError("bad id")}};
  auto r = retry.Execute(Deadline::Infinite(), std::ref(call));
  CHECK(call.attempts_seen.size() == 1);
  CHECK(r.status() == absl::InvalidArgumentError("bad id"));
  CHECK(clock.sleeps.empty());
}

TEST_CASE("retry stops at a non-retryable failure after retries and says how many attempts") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(5), clock).value();
  Script call{.failures = {absl::UnavailableError("down"), absl::NotFoundError("gone")}};
  auto r = retry.Execute(Deadline::Infinite(), std::ref(call));
  CHECK(call.attempts_seen.size() == 2);
  CHECK(absl::IsNotFound(r.status()));
  CHECK(Contains(r.status(), "not retryable after 2 attempts: gone"));
}

TEST_CASE("retry does not retry RESOURCE_EXHAUSTED without a retry-after by default") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(3), clock).value();
  Script call{.failures = {absl::ResourceExhaustedError("full")}};
  auto r = retry.Execute(Deadline::Infinite(), std::ref(call));
  CHECK(call.attempts_seen.size() == 1);
  CHECK(absl::IsResourceExhausted(r.status()));
}

TEST_CASE("retry uses a custom retry_on predicate") {
  RecordingClock clock;
  Retry::Options options = Exact(3);
  options.retry_on = [](const absl::Status& s) { return absl::IsDeadlineExceeded(s); };
  Retry retry = Retry::Create(options, clock).value();
  Script call{.failures = {absl::DeadlineExceededError("attempt timed out")}};
  CHECK(retry.Execute(Deadline::Infinite(), std::ref(call)).ok());
  CHECK(call.attempts_seen.size() == 2);
  Script unavailable{.failures = {absl::UnavailableError("down")}};
  CHECK(absl::IsUnavailable(retry.Execute(Deadline::Infinite(), std::ref(unavailable)).status()));
  CHECK(unavailable.attempts_seen.size() == 1);
}

TEST_CASE("retry never starts a sleep that would end past the deadline") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(10), clock).value();
  const Deadline deadline = Deadline::After(65ms, clock);
  Script call{.failures = std::vector<absl::Status>(10, absl::UnavailableError("down"))};
  auto r = retry.Execute(deadline, std::ref(call));
  // Sleeps 10 + 20 = 30 ms, then the next 40 ms would end at 70 ms > 65 ms: stop.
  CHECK(clock.sleeps == std::vector<Duration>{10ms, 20ms});
  CHECK(call.attempts_seen.size() == 3);
  CHECK(clock.Now() < deadline.time());
  CHECK(absl::IsDeadlineExceeded(r.status()));
  CHECK(Contains(r.status(), "stopped after 3 attempts"));
  CHECK(Contains(r.status(), "UNAVAILABLE: down"));
}

TEST_CASE("retry does not sleep when the delay would end exactly at the deadline") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(3), clock).value();
  Script call{.failures = {absl::UnavailableError("down")}};
  auto r = retry.Execute(Deadline::After(10ms, clock), std::ref(call));
  CHECK(clock.sleeps.empty());
  CHECK(absl::IsDeadlineExceeded(r.status()));
}

TEST_CASE("retry never sleeps past the deadline whatever the jitter") {
  std::mt19937_64 gen(7);
  for (auto kind : {Backoff::Kind::kFullJitter, Backoff::Kind::kEqualJitter,
                    Backoff::Kind::kDecorrelatedJitter}) {
    for (int trial = 0; trial < 200; ++trial) {
      RecordingClock clock;
      Retry retry =
          Retry::Create({.max_attempts = 50, .backoff = {.kind = kind, .base = 5ms, .cap = 200ms}},
                        clock, gen)
              .value();
      const Deadline deadline = Deadline::After(300ms, clock);
      auto r = retry.Execute(deadline, [&](const CallContext& ctx) {
        // Each attempt takes time too, but honours its deadline.
        clock.Advance(std::min<Duration>(3ms, ctx.deadline.Remaining()));
        return absl::UnavailableError("down");
      });
      REQUIRE(!clock.wake_times.empty());
      for (keel::TimePoint wake : clock.wake_times) REQUIRE(wake < deadline.time());
      REQUIRE(absl::IsDeadlineExceeded(r));
    }
  }
}

TEST_CASE("retry waits at least a server's retry-after hint") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(3), clock).value();
  Script call{.failures = {keel::WithRetryAfter(absl::ResourceExhaustedError("slow down"), 300ms)}};
  CHECK(retry.Execute(Deadline::Infinite(), std::ref(call)).ok());
  CHECK(clock.sleeps == std::vector<Duration>{300ms});
}

TEST_CASE("retry keeps its own backoff when it is longer than the retry-after hint") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(3), clock).value();
  Script call{.failures = {keel::WithRetryAfter(absl::UnavailableError("x"), 1ms)}};
  CHECK(retry.Execute(Deadline::Infinite(), std::ref(call)).ok());
  CHECK(clock.sleeps == std::vector<Duration>{10ms});
}

TEST_CASE("retry caps a retry-after hint at max_retry_after") {
  RecordingClock clock;
  Retry::Options options = Exact(3);
  options.max_retry_after = 2s;
  Retry retry = Retry::Create(options, clock).value();
  Script call{.failures = {keel::WithRetryAfter(absl::UnavailableError("later"), 1h)}};
  CHECK(retry.Execute(Deadline::Infinite(), std::ref(call)).ok());
  CHECK(clock.sleeps == std::vector<Duration>{2s});
}

TEST_CASE("retry ignores retry-after hints when honor_retry_after is false") {
  RecordingClock clock;
  Retry::Options options = Exact(3);
  options.honor_retry_after = false;
  Retry retry = Retry::Create(options, clock).value();
  Script call{.failures = {keel::WithRetryAfter(absl::UnavailableError("later"), 5s)}};
  CHECK(retry.Execute(Deadline::Infinite(), std::ref(call)).ok());
  CHECK(clock.sleeps == std::vector<Duration>{10ms});
}

TEST_CASE("retry gives up when a retry-after hint would end past the deadline") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(3), clock).value();
  Script call{.failures = {keel::WithRetryAfter(absl::UnavailableError("later"), 5s)}};
  auto r = retry.Execute(Deadline::After(1s, clock), std::ref(call));
  CHECK(clock.sleeps.empty());
  CHECK(absl::IsDeadlineExceeded(r.status()));
}

TEST_CASE("retry stops with CANCELLED when the token is signalled between attempts") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(5), clock).value();
  keel::CancellationSource source;
  auto r = retry.Execute(CallContext{.cancellation = source.token()},
                         [&](const CallContext&) -> absl::StatusOr<int> {
                           source.Cancel();
                           return absl::UnavailableError("down");
                         });
  CHECK(absl::IsCancelled(r.status()));
  CHECK(Contains(r.status(), "cancelled after 1 attempt"));
}

TEST_CASE("retry works with callees returning a plain status") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(3), clock).value();
  int calls = 0;
  absl::Status s = retry.Execute(Deadline::Infinite(), [&](const CallContext&) {
    return ++calls < 2 ? absl::UnavailableError("down") : absl::OkStatus();
  });
  CHECK(s.ok());
  CHECK(calls == 2);
}

TEST_CASE("retry sleeps on the injected manual clock") {
  keel::ManualClock clock;
  Retry retry = Retry::Create(Exact(3), clock).value();
  std::atomic<int> calls{0};
  absl::StatusOr<int> result;
  std::thread caller([&] {
    result = retry.Execute(Deadline::Infinite(), [&](const CallContext&) -> absl::StatusOr<int> {
      if (++calls < 3) return absl::UnavailableError("down");
      return 7;
    });
  });
  clock.AwaitSleepers(1);
  CHECK(calls.load() == 1);
  clock.Advance(9ms);
  CHECK(calls.load() == 1);  // 10 ms backoff not over yet
  clock.Advance(1ms);
  // The second attempt runs only after the first sleep returned, so once it is counted the next
  // sleeper seen is the 20 ms backoff.
  while (calls.load() < 2) std::this_thread::yield();
  clock.AwaitSleepers(1);
  clock.Advance(20ms);
  caller.join();
  CHECK(calls.load() == 3);
  REQUIRE(result.ok());
  CHECK(*result == 7);
}

TEST_CASE("retry rejects bad options naming the field") {
  auto check = [](Retry::Options options, const std::string& field) {
    auto r = Retry::Create(std::move(options));
    INFO(r.status());
    CHECK(absl::IsInvalidArgument(r.status()));
    CHECK(Contains(r.status(), field));
  };
  check({.max_attempts = 0}, "retry \"retry\": max_attempts must be >= 1, got 0");
  check({.name = "users-api", .backoff = {.base = 2s, .cap = 1s}},
        "retry \"users-api\": backoff.base must be <= backoff.cap, got base 2s > cap 1s");
  check({.backoff = {.base = 0s}}, "retry \"retry\": backoff.base must be > 0, got 0");
  check({.retry_on = nullptr}, "retry \"retry\": retry_on must be set");
  check({.max_retry_after = -1s}, "retry \"retry\": max_retry_after must be >= 0, got -1s");
}

TEST_CASE("retry counts retries and how retried calls ended, in Stats and metrics") {
  RecordingClock clock;
  keel::MetricsRegistry metrics;
  Retry retry = Retry::Create(Exact(2), clock, &metrics).value();
  Script ok_first;
  CHECK(retry.Execute(Deadline::Infinite(), std::ref(ok_first)).ok());
  Script ok_second{.failures = {absl::UnavailableError("down")}};
  CHECK(retry.Execute(Deadline::Infinite(), std::ref(ok_second)).ok());
  Script never{.failures = {absl::UnavailableError("a"), absl::UnavailableError("b")}};
  CHECK_FALSE(retry.Execute(Deadline::Infinite(), std::ref(never)).ok());
  Script bad{.failures = {absl::InvalidArgumentError("bad")}};
  CHECK_FALSE(retry.Execute(Deadline::Infinite(), std::ref(bad)).ok());

  const Retry copy = retry;  // copies share the counters (a Pipeline holds a copy)
  const keel::RetryStats s = copy.Stats();
  CHECK(s.retries_total == 2);
  CHECK(s.outcome(Retry::Outcome::kSucceededAfterRetry) == 1);
  CHECK(s.outcome(Retry::Outcome::kGaveUpAttempts) == 1);
  CHECK(s.outcome(Retry::Outcome::kNotRetryable) == 1);
  CHECK(s.outcome(Retry::Outcome::kGaveUpDeadline) == 0);
  const std::string text = metrics.RenderPrometheus();
  CHECK(text.find("keel_retry_retries_total{name=\"users\"} 2") != std::string::npos);
  CHECK(text.find("keel_retry_calls_total{name=\"users\",outcome=\"gave_up_attempts\"} 1") !=
        std::string::npos);
}

TEST_CASE("retry counts stops caused by the deadline") {
  RecordingClock clock;
  Retry retry = Retry::Create(Exact(3), clock).value();
  Script call{.failures = {absl::UnavailableError("down")}};
  CHECK(absl::IsDeadlineExceeded(
      retry.Execute(Deadline::After(5ms, clock), std::ref(call)).status()));
  CHECK(retry.Stats().outcome(Retry::Outcome::kGaveUpDeadline) == 1);
  CHECK(retry.Stats().retries_total == 0);
}
