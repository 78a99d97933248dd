// The sliding window counter's estimate (Decision::estimate) from redis::RateLimiter against a
// real Redis: the same figure, bit for bit, as the in-process counter, with one limit, several
// limits and a penalty block; none from the other algorithms.
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "integration/redis_limits/helpers.h"
#include "keel/limit/keyed.h"
#include "keel/limit/sliding_window.h"
#include "keel/redis/rate_limiter.h"

using keel::Deadline;
using keel::Duration;
using keel::limit::Decision;
using keel::limit::Keyed;
using keel::limit::SlidingWindowCounter;
using keel::redis::RateLimiter;
using keel::redis::SlidingWindowCounterOptions;
using keel::test::AtMicrosecondResolution;
using keel::test::MakeLimiter;
using namespace std::chrono_literals;

namespace {

struct Step {
  Duration at;
  int64_t n;
};

// Runs `steps` on key "k" against Redis (at explicit server times) and against the in-process
// Keyed<SlidingWindowCounter> with the same limits and block; every Decision must be equal,
// estimate included. Returns the Redis decisions.
std::vector<Decision> Compare(keel::redis::Client& client,
                              std::vector<keel::limit::SlidingWindowOptions> limits,
                              std::optional<Duration> block_for, const std::vector<Step>& steps) {
  RateLimiter::Options options{.name = keel::test::UniqueName("estimate"),
                               .algorithm = SlidingWindowCounterOptions{limits[0]},
                               .block_for = block_for};
  for (size_t i = 1; i < limits.size(); ++i) {
    options.more_limits.push_back(SlidingWindowCounterOptions{limits[i]});
  }
  auto redis_limiter = MakeLimiter(client, std::move(options));
  keel::ManualClock clock;
  auto local =
      Keyed<SlidingWindowCounter>::Create({.block_for = block_for}, std::move(limits), clock)
          .value();
  std::vector<Decision> out;
  for (size_t i = 0; i < steps.size(); ++i) {
    const Decision want = AtMicrosecondResolution(
        local->TryAcquire("k", steps[i].n, keel::ManualClock::kDefaultStart + steps[i].at).value());
    const auto got = redis_limiter->TryAcquireAtForTesting(
        Deadline::After(2s), "k", steps[i].n,
        keel::test::kTestEpoch +
            std::chrono::duration_cast<std::chrono::microseconds>(steps[i].at));
    REQUIRE(got.ok());
    INFO("step " << i << ": in-process {" << want << "}, redis {" << *got << "}");
    REQUIRE(got->estimate.has_value());
    CHECK(*got == want);
    out.push_back(*got);
  }
  return out;
}

}  // namespace

TEST_CASE("redis sliding window counter decisions carry the estimate they were made on",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  // Cloudflare's example: 42 in the previous minute; 15 s into this one, 42 x 45/60 = 31.5.
  const auto d = Compare(*client, {{.limit = 50, .window = 60s}}, std::nullopt,
                         {{0s, 42}, {75s, 17}, {75s, 1}, {75s, 1}, {75s, 51}, {136s, 0}});
  CHECK(d[0].estimate == 0.0);
  CHECK(d[1].estimate == 31.5);
  CHECK(d[2].estimate == 48.5);
  CHECK_FALSE(d[3].allowed);
  CHECK(d[3].estimate == 49.5);
  CHECK(d[4].estimate == 49.5);           // a quantity that never fits: still the figure
  CHECK(*d[5].estimate == Approx(13.2));  // 18 x 44/60, not a double exactly: equal all the same
}

TEST_CASE("redis sliding window counter reports the estimate of the most constraining limit",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  // 50 per minute and 100 per hour: the minute constrains (smaller remaining) until the hour's
  // count catches up.
  const auto d =
      Compare(*client, {{.limit = 50, .window = 60s}, {.limit = 100, .window = 1h}}, std::nullopt,
              {{0s, 42}, {75s, 17}, {150s, 40}, {150s, 1}, {180s, 1}, {181s, 0}});
  CHECK(d[1].estimate == 31.5);  // the minute's, not the hour's 42
  CHECK(d[1].remaining == 1);
}

TEST_CASE("redis sliding window counter keeps the estimate through a penalty block",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  const auto d = Compare(*client, {{.limit = 5, .window = 1s}}, 10s,
                         {{0ms, 5}, {100ms, 1}, {200ms, 0}, {1500ms, 1}, {11s, 1}});
  CHECK_FALSE(d[1].allowed);  // starts the block
  CHECK(d[1].estimate == 5.0);
  CHECK_FALSE(d[3].allowed);    // during the block: the first limit's peek
  CHECK(d[3].estimate == 2.5);  // 5 x 500/1000
  CHECK(d[4].allowed);
}

TEST_CASE("redis limiter estimates only for the sliding window counter, with TIME and in batches",
          "[redis_limits]") {
  auto client = keel::test::SharedRedisClient();
  auto counter =
      MakeLimiter(*client, {.name = keel::test::UniqueName("estimate-time"),
                            .algorithm = SlidingWindowCounterOptions{{.limit = 10, .window = 1h}}});
  const auto first = counter->TryAcquire(Deadline::After(1s), "k", 3);
  REQUIRE(first.ok());
  CHECK(first->estimate == 0.0);
  const auto second = counter->TryAcquire(Deadline::After(1s), "k", 1);
  REQUIRE(second.ok());
  REQUIRE(second->estimate.has_value());
  // 3, or a whisker under it if an hour boundary passed between the two calls.
  CHECK(*second->estimate == Approx(3.0).epsilon(1e-3));
  CHECK(counter->Check(Deadline::After(1s), "k", 1)->estimate.has_value());
  const std::vector<std::string_view> keys = {"k", "other"};
  const auto many = counter->TryAcquireMany(Deadline::After(1s), keys, 1);
  REQUIRE(many.ok());
  CHECK(*(*many)[0].estimate == Approx(4.0).epsilon(1e-3));
  CHECK((*many)[1].estimate == 0.0);

  auto gcra = MakeLimiter(*client, {.name = keel::test::UniqueName("estimate-gcra"),
                                    .algorithm = keel::limit::Gcra::Options{.count = 5}});
  CHECK_FALSE(gcra->TryAcquire(Deadline::After(1s), "k", 1)->estimate.has_value());
  auto log = MakeLimiter(
      *client, {.name = keel::test::UniqueName("estimate-log"),
                .algorithm = keel::redis::SlidingWindowLogOptions{{.limit = 5, .window = 1s}}});
  CHECK_FALSE(log->TryAcquire(Deadline::After(1s), "k", 1)->estimate.has_value());
}
