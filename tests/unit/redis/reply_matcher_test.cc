// Server-free tests of the multiplexed transport's reply matcher and call completion: bytes in,
// completions out, no sockets, no sleeps (a ManualClock drives every deadline).
#include "redis/transport/reply_matcher.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "keel/clock.h"
#include "keel/deadline.h"
#include "redis/transport/call.h"

using keel::Deadline;
using keel::ManualClock;
using keel::redis::Reply;
using keel::redis::transport::Call;
using keel::redis::transport::CallResult;
using keel::redis::transport::ReplyMatcher;
using namespace std::chrono_literals;

namespace {

// A call that records its completions (a callback call, as the I/O thread's users have).
struct Recorder {
  std::vector<CallResult> results;
  std::shared_ptr<Call> call;
  Recorder(uint32_t expected, Deadline deadline)
      : call(std::make_shared<Call>(expected, deadline,
                                    [this](CallResult&& r) { results.push_back(std::move(r)); })) {}
};

}  // namespace

TEST_CASE("reply matcher: completes calls in FIFO order with their own replies") {
  ManualClock clock;
  ReplyMatcher matcher("redis \"test\"");
  Recorder a(1, Deadline::After(1s, clock)), b(2, Deadline::After(1s, clock)),
      c(1, Deadline::After(1s, clock));
  matcher.Push(a.call);
  matcher.Push(b.call);
  matcher.Push(c.call);
  REQUIRE(matcher.Feed("+OK\r\n:4").ok());
  REQUIRE(a.results.size() == 1);
  CHECK(a.results[0].replies == keel::redis::transport::CallReplies{Reply::Status("OK")});
  CHECK(b.results.empty());
  // A reply split across reads, then the rest of the pipeline and the next call at once.
  REQUIRE(matcher.Feed("2\r\n$3\r\nab").ok());
  CHECK(b.results.empty());
  REQUIRE(matcher.Feed("c\r\n-ERR x\r\n").ok());
  REQUIRE(b.results.size() == 1);
  CHECK(b.results[0].status.ok());
  CHECK(b.results[0].replies ==
        keel::redis::transport::CallReplies{Reply::Integer(42), Reply::String("abc")});
  REQUIRE(c.results.size() == 1);
  CHECK(c.results[0].replies == keel::redis::transport::CallReplies{Reply::Error("ERR x")});
  CHECK(matcher.in_flight() == 0);
  CHECK(matcher.late_replies_discarded() == 0);
}

TEST_CASE("reply matcher: the replies of a call whose caller gave up are read and discarded") {
  ManualClock clock;
  ReplyMatcher matcher("redis \"test\"");
  Recorder gave_up(2, Deadline::After(10ms, clock)), next(1, Deadline::After(1s, clock));
  matcher.Push(gave_up.call);
  matcher.Push(next.call);
  REQUIRE(matcher.Feed(":1\r\n").ok());  // half of the abandoned pipeline's replies
  // The deadline heap (or the caller) claims the call at its deadline.
  clock.Advance(10ms);
  REQUIRE(gave_up.call->TryFail(absl::StatusCode::kDeadlineExceeded, "late"));
  CHECK(matcher.owes_late_replies());
  CHECK(matcher.in_flight() == 2);
  REQUIRE(gave_up.results.size() == 1);
  CHECK(gave_up.results[0].status.code() == absl::StatusCode::kDeadlineExceeded);
  // Its second reply, then the next call's: the next caller gets its own.
  REQUIRE(matcher.Feed(":2\r\n$4\r\nmine\r\n").ok());
  CHECK(gave_up.results.size() == 1);  // completed exactly once
  REQUIRE(next.results.size() == 1);
  CHECK(next.results[0].replies == keel::redis::transport::CallReplies{Reply::String("mine")});
  CHECK(matcher.late_replies_discarded() == 2);
  CHECK_FALSE(matcher.owes_late_replies());
}

TEST_CASE("reply matcher: a blocking caller claims its own completion at its deadline") {
  ManualClock clock;
  ReplyMatcher matcher("redis \"test\"");
  auto call = std::make_shared<Call>(1, Deadline::After(0ms, clock));
  matcher.Push(call);
  // The deadline has passed: Wait returns at once with DEADLINE_EXCEEDED.
  CallResult result = call->Wait("redis \"test\": no reply within the deadline");
  CHECK(result.status.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(std::string(result.status.message()) == "redis \"test\": no reply within the deadline");
  REQUIRE(matcher.Feed("+LATE\r\n").ok());
  CHECK(matcher.late_replies_discarded() == 1);
  CHECK(matcher.in_flight() == 0);
}

TEST_CASE("reply matcher: a call completed before its caller waits hands over its replies") {
  ManualClock clock;
  ReplyMatcher matcher("redis \"test\"");
  auto call = std::make_shared<Call>(1, Deadline::After(1s, clock));
  matcher.Push(call);
  REQUIRE(matcher.Feed("$2\r\nhi\r\n").ok());
  CallResult result = call->Wait("unused");
  REQUIRE(result.status.ok());
  CHECK(result.replies == keel::redis::transport::CallReplies{Reply::String("hi")});
  // Completing again is refused: one completion per call.
  CHECK_FALSE(call->TryFail(absl::StatusCode::kCancelled, "again"));
}

TEST_CASE("reply matcher: a protocol error fails every call in flight") {
  ManualClock clock;
  ReplyMatcher matcher("redis \"test\"");
  Recorder a(1, Deadline::After(1s, clock)), b(3, Deadline::After(1s, clock));
  matcher.Push(a.call);
  matcher.Push(b.call);
  absl::Status status = matcher.Feed("+OK\r\n:1\r\n?garbage\r\n");
  CHECK(status.code() == absl::StatusCode::kUnavailable);
  CHECK_THAT(std::string(status.message()), Catch::StartsWith("redis \"test\": protocol error"));
  REQUIRE(a.results.size() == 1);
  CHECK(a.results[0].status.ok());
  REQUIRE(b.results.size() == 1);
  CHECK(b.results[0].status.code() == absl::StatusCode::kUnavailable);
  CHECK(matcher.in_flight() == 0);
  // The next bytes start a new stream.
  Recorder c(1, Deadline::After(1s, clock));
  matcher.Push(c.call);
  REQUIRE(matcher.Feed(":7\r\n").ok());
  REQUIRE(c.results.size() == 1);
  CHECK(c.results[0].replies == keel::redis::transport::CallReplies{Reply::Integer(7)});
}

TEST_CASE("reply matcher: a reply nobody waits for is a protocol error") {
  ReplyMatcher matcher("redis \"test\"");
  absl::Status status = matcher.Feed("+OK\r\n");
  CHECK(status.code() == absl::StatusCode::kUnavailable);
  CHECK_THAT(std::string(status.message()), Catch::Contains("a reply no call is waiting for"));
}

TEST_CASE("reply matcher: FailAll fails each pending call once and skips claimed ones") {
  ManualClock clock;
  Recorder a(1, Deadline::After(1s, clock)), b(1, Deadline::After(1s, clock)),
      c(1, Deadline::After(1s, clock));
  {
    ReplyMatcher matcher("redis \"test\"");
    matcher.Push(a.call);
    matcher.Push(b.call);
    REQUIRE(b.call->TryFail(absl::StatusCode::kDeadlineExceeded, "gave up"));
    matcher.FailAll(absl::StatusCode::kUnavailable, "redis \"test\": connection lost");
    CHECK(matcher.in_flight() == 0);
    matcher.Push(c.call);
    // Destroying the matcher cancels what is left.
  }
  REQUIRE(a.results.size() == 1);
  CHECK(a.results[0].status.code() == absl::StatusCode::kUnavailable);
  REQUIRE(b.results.size() == 1);
  CHECK(b.results[0].status.code() == absl::StatusCode::kDeadlineExceeded);
  REQUIRE(c.results.size() == 1);
  CHECK(c.results[0].status.code() == absl::StatusCode::kCancelled);
}
