// The rate-limiter stage of keel::Pipeline, with in-process limiters and a stand-in for a
// Redis-backed one (the real one is exercised in tests/integration/redis_limits/).
#include <catch2/catch.hpp>
#include <string>

#include "keel/limit/gcra.h"
#include "keel/limit/keyed.h"
#include "keel/limit/token_bucket.h"
#include "keel/resilience/pipeline.h"
#include "keel/status.h"

using namespace std::chrono_literals;
using keel::CallContext;
using keel::Deadline;
using keel::Pipeline;

namespace {

// Has redis::RateLimiter's shape: TryAcquire(deadline, key, n).
struct SharedLimiterStandIn {
  absl::StatusOr<keel::limit::Decision> TryAcquire(Deadline deadline, std::string_view key,
                                                   int64_t n) {
    seen_deadline = deadline.time();
    seen_key = std::string(key);
    seen_n = n;
    keel::limit::Decision d;
    d.allowed = true;
    d.degraded = true;
    return d;
  }
  keel::TimePoint seen_deadline;
  std::string seen_key;
  int64_t seen_n = 0;
};

}  // namespace

TEST_CASE("pipeline rate-limiter stage admits within the limit and rejects beyond it") {
  keel::ManualClock clock;
  auto gcra = keel::limit::Gcra::Create({.count = 2, .period = 1s, .max_burst = 1}, clock).value();
  auto pipeline = Pipeline<int>::Builder().AddRateLimiter(gcra, {.name = "payments"}).Build();
  int calls = 0;
  const auto call = [&](const CallContext&) -> absl::StatusOr<int> { return ++calls; };
  CHECK(pipeline.Execute(Deadline::After(1s), call).value() == 1);
  CHECK(pipeline.Execute(Deadline::After(1s), call).value() == 2);
  const absl::StatusOr<int> denied = pipeline.Execute(Deadline::After(1s), call);
  CHECK(calls == 2);  // the call did not run
  REQUIRE(denied.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK(keel::StatusText(denied.status()) ==
        "RESOURCE_EXHAUSTED: rate limiter \"payments\": rate limited, retry after 500ms");
  REQUIRE(keel::RetryAfter(denied.status()).has_value());
  CHECK(*keel::RetryAfter(denied.status()) == 500ms);
  clock.Advance(500ms);
  CHECK(pipeline.Execute(Deadline::After(1s), call).ok());
}

TEST_CASE("pipeline rate-limiter stage asks a keyed limiter for its key and quantity") {
  keel::ManualClock clock;
  auto keyed =
      keel::limit::Keyed<keel::limit::TokenBucket>::Create({}, {{.rate = 1, .burst = 3}}, clock)
          .value();
  auto pipeline = Pipeline<int>::Builder()
                      .AddRateLimiter(*keyed, {.name = "search", .key = "search", .quantity = 2})
                      .Build();
  const auto call = [](const CallContext&) -> absl::StatusOr<int> { return 7; };
  CHECK(pipeline.Execute(Deadline::After(1s), call).ok());
  CHECK(keyed->Check("search", 1).value().remaining == 0);  // 2 of 3 taken: one more empties it
  CHECK(pipeline.Execute(Deadline::After(1s), call).status().code() ==
        absl::StatusCode::kResourceExhausted);
  CHECK(keyed->Check("other", 3).value().allowed);  // other keys untouched
}

TEST_CASE("pipeline rate-limiter stage passes the limiter's errors and never-fitting requests") {
  auto keyed = keel::limit::Keyed<keel::limit::TokenBucket>::Create({}, {{.rate = 1}}).value();
  const auto call = [](const CallContext&) -> absl::StatusOr<int> { return 7; };
  // No key for a keyed limiter: its INVALID_ARGUMENT, not a rejection.
  auto no_key = Pipeline<int>::Builder().AddRateLimiter(*keyed).Build();
  CHECK(no_key.Execute(Deadline::After(1s), call).status().code() ==
        absl::StatusCode::kInvalidArgument);
  // A quantity above the burst can never fit: RESOURCE_EXHAUSTED without a retry-after hint.
  auto bucket = keel::limit::TokenBucket::Create({.rate = 1, .burst = 1}).value();
  auto too_big =
      Pipeline<int>::Builder().AddRateLimiter(bucket, {.name = "big", .quantity = 2}).Build();
  const absl::StatusOr<int> never = too_big.Execute(Deadline::After(1s), call);
  CHECK(never.status().code() == absl::StatusCode::kResourceExhausted);
  CHECK_FALSE(keel::RetryAfter(never.status()).has_value());
}

TEST_CASE("pipeline rate-limiter stage gives a shared limiter the call's deadline and key") {
  SharedLimiterStandIn limiter;
  auto pipeline = Pipeline<int>::Builder().AddRateLimiter(limiter, {.key = "users-api"}).Build();
  const Deadline deadline = Deadline::After(250ms);
  // A degraded admission (Redis down, failed open) still lets the call through.
  CHECK(pipeline.Execute(deadline, [](const CallContext&) -> absl::StatusOr<int> { return 1; })
            .value() == 1);
  CHECK(limiter.seen_deadline == deadline.time());
  CHECK(limiter.seen_key == "users-api");
  CHECK(limiter.seen_n == 1);
}
