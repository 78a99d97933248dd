// Server-free tests of keel::redis::JobQueue and Worker: option and input validation (Create and
// the checks before any I/O), what the scripts' replies mean, and the retry delays.
#include "keel/redis/queue.h"

#include <catch2/catch.hpp>
#include <random>
#include <string>

#include "keel/redis/client.h"
#include "redis/queue_internal.h"

using keel::Deadline;
using keel::redis::JobQueue;
using keel::redis::JobState;
using keel::redis::Reply;
using keel::redis::Worker;
using namespace std::chrono_literals;

namespace {

// A client that never connects (Create does no I/O): the checks under test fail before any.
std::unique_ptr<keel::redis::Client> Offline() {
  auto options = keel::redis::Options::FromUrl("redis://127.0.0.1:1");
  REQUIRE(options.ok());
  auto client = keel::redis::Client::Create(*options);
  REQUIRE(client.ok());
  return std::move(*client);
}

std::string Invalid(const absl::Status& status) {
  CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  return std::string(status.message());
}

Worker::Handler Noop() {
  return [](const keel::redis::Job&, keel::redis::JobContext&) { return absl::OkStatus(); };
}

}  // namespace

TEST_CASE("job queue options are checked at Create, naming the field") {
  auto client = Offline();
  CHECK(Invalid(JobQueue::Create({.name = ""}, *client).status()) ==
        "redis job queue \"\": name must be 1 to 128 bytes, got 0 bytes");
  CHECK(Invalid(JobQueue::Create({.name = "q", .priority_levels = 0}, *client).status()) ==
        "redis job queue \"q\": priority_levels must be in [1, 16], got 0");
  CHECK(Invalid(JobQueue::Create({.name = "q", .default_max_attempts = 0}, *client).status()) ==
        "redis job queue \"q\": default_max_attempts must be >= 1, got 0");
  CHECK(Invalid(JobQueue::Create({.name = "q", .max_payload_bytes = 0}, *client).status()) ==
        "redis job queue \"q\": max_payload_bytes must be >= 1, got 0");
  CHECK(Invalid(JobQueue::Create({.name = "q", .retention = 0s}, *client).status()) ==
        "redis job queue \"q\": retention must be > 0, got 0");
  CHECK(Invalid(JobQueue::Create({.name = "q", .idempotency_window = -1s}, *client).status()) ==
        "redis job queue \"q\": idempotency_window must be > 0, got -1s");
  CHECK(JobQueue::Create({.name = "q"}, *client).ok());
}

TEST_CASE("job queue refuses bad jobs before any I/O, naming the field") {
  auto client = Offline();
  auto queue = JobQueue::Create({.name = "q", .max_payload_bytes = 4}, *client).value();
  const Deadline d = Deadline::After(1s);
  CHECK(Invalid(queue->Enqueue(d, "12345").status()) ==
        "redis job queue \"q\": payload must be <= 4 bytes, got 5 bytes");
  CHECK(Invalid(queue->Enqueue(d, "x", {.delay = -1ms}).status()) ==
        "redis job queue \"q\": delay must be >= 0, got -1ms");
  CHECK(Invalid(queue->Enqueue(d, "x", {.max_attempts = 0}).status()) ==
        "redis job queue \"q\": max_attempts must be >= 1, got 0");
  CHECK(Invalid(queue->Enqueue(d, "x", {.priority = 3}).status()) ==
        "redis job queue \"q\": priority must be in [0, 2], got 3");
  CHECK(Invalid(queue->Enqueue(d, "x", {.idempotency_key = std::string(1025, 'k')}).status()) ==
        "redis job queue \"q\": idempotency_key must be <= 1024 bytes, got 1025 bytes");
  const keel::redis::NewJob jobs[] = {{"ok", {}}, {"toolong", {}}};
  CHECK(Invalid(queue->EnqueueMany(d, jobs).status()) ==
        "redis job queue \"q\": jobs[1].payload must be <= 4 bytes, got 7 bytes");
  CHECK(Invalid(queue->DeadLetters(d, 0).status()) ==
        "redis job queue \"q\": max must be >= 1, got 0");
  // A payload of exactly the maximum passes the check (and then fails to reach Redis).
  CHECK(queue->Enqueue(Deadline::After(50ms), "1234").status().code() !=
        absl::StatusCode::kInvalidArgument);
}

TEST_CASE("worker options are checked at Create, naming the field") {
  auto client = Offline();
  auto queue = JobQueue::Create({.name = "q"}, *client).value();
  CHECK(Invalid(Worker::Create({}, *queue).status()) ==
        "redis job worker \"q\": handler must be set");
  CHECK(Invalid(Worker::Create({.handler = Noop(), .concurrency = 0}, *queue).status()) ==
        "redis job worker \"q\": concurrency must be >= 1, got 0");
  CHECK(Invalid(Worker::Create({.handler = Noop(), .batch = 0}, *queue).status()) ==
        "redis job worker \"q\": batch must be in [1, 1000], got 0");
  CHECK(Invalid(Worker::Create({.handler = Noop(), .visibility_timeout = 0s}, *queue).status()) ==
        "redis job worker \"q\": visibility_timeout must be > 0, got 0");
  CHECK(Invalid(Worker::Create({.handler = Noop(), .poll_interval = -5ms}, *queue).status()) ==
        "redis job worker \"q\": poll_interval must be > 0, got -5ms");
  CHECK(
      Invalid(Worker::Create({.handler = Noop(), .retry_backoff = {.base = 2s, .cap = 1s}}, *queue)
                  .status())
          .find("redis job worker \"q\": retry_backoff.") == 0);
  CHECK(Invalid(Worker::Create({.handler = Noop(), .heartbeat_interval = 0s}, *queue).status()) ==
        "redis job worker \"q\": heartbeat_interval must be > 0, got 0");
  CHECK(Invalid(Worker::Create(
                    {.handler = Noop(), .visibility_timeout = 300ms, .heartbeat_interval = 300ms},
                    *queue)
                    .status()) ==
        "redis job worker \"q\": heartbeat_interval must be < visibility_timeout (300ms), got "
        "300ms");
  // The heartbeat's extensions are async calls: a pooled client has none.
  auto options = keel::redis::Options::FromUrl("redis://127.0.0.1:1");
  REQUIRE(options.ok());
  options->transport = keel::redis::Transport::kPooled;
  auto pooled = keel::redis::Client::Create(*options);
  REQUIRE(pooled.ok());
  auto pooled_queue = JobQueue::Create({.name = "q"}, **pooled).value();
  CHECK(Invalid(Worker::Create({.handler = Noop()}, *pooled_queue).status()) ==
        "redis job worker \"q\": heartbeat must be used with a client on the multiplexed "
        "transport (or false), got a pooled client");
}

TEST_CASE("the start script's reply becomes jobs with their stream entries") {
  const Reply reply =
      Reply::Array({Reply::Array({Reply::Integer(2), Reply::String("1-0"), Reply::String("abc"),
                                  Reply::String(std::string("pay\0load", 8)), Reply::Integer(3),
                                  Reply::Integer(5), Reply::Integer(1)})});
  auto started = keel::redis::internal::ParseStart(reply);
  REQUIRE(started.ok());
  REQUIRE(started->size() == 1);
  const auto& t = (*started)[0];
  CHECK(t.level == 2);
  CHECK(t.entry == "1-0");
  CHECK(t.reclaimed);
  CHECK(t.job.id == "abc");
  CHECK(t.job.payload == std::string("pay\0load", 8));
  CHECK(t.job.attempt == 3);
  CHECK(t.job.max_attempts == 5);
  CHECK(t.job.priority == 2);
  CHECK(keel::redis::internal::ParseStart(Reply::Array({}))->empty());
  CHECK(keel::redis::internal::ParseStart(Reply::Integer(1)).status().code() ==
        absl::StatusCode::kInternal);
}

TEST_CASE("the claim script's reply lists due jobs and the entries delivered") {
  const Reply reply =
      Reply::Array({Reply::Integer(250), Reply::Array({Reply::String("d1")}),
                    Reply::Array({Reply::Array({Reply::Integer(1), Reply::String("7-0"),
                                                Reply::String("j7"), Reply::Integer(1)}),
                                  Reply::Array({Reply::Integer(0), Reply::String("8-0"),
                                                Reply::String("j8"), Reply::Integer(0)})})});
  auto claim = keel::redis::internal::ParseClaim(reply);
  REQUIRE(claim.ok());
  CHECK(claim->next_due == std::optional<keel::Duration>(250ms));
  CHECK(claim->due == std::vector<std::string>{"d1"});
  REQUIRE(claim->entries.size() == 2);
  CHECK(claim->entries[0].level == 1);
  CHECK(claim->entries[0].entry == "7-0");
  CHECK(claim->entries[0].id == "j7");
  CHECK(claim->entries[0].reclaimed);
  CHECK_FALSE(claim->entries[1].reclaimed);
  auto none = keel::redis::internal::ParseClaim(
      Reply::Array({Reply::Integer(-1), Reply::Array({}), Reply::Array({})}));
  REQUIRE(none.ok());
  CHECK_FALSE(none->next_due.has_value());
  CHECK(keel::redis::internal::ParseClaim(Reply::Integer(1)).status().code() ==
        absl::StatusCode::kInternal);
}

TEST_CASE("the finish and heartbeat replies are one flag per job") {
  auto flags = keel::redis::internal::ParseFlags(
      Reply::Array({Reply::Integer(1), Reply::Integer(0)}), 2, "finish");
  REQUIRE(flags.ok());
  CHECK(*flags == std::vector<bool>{true, false});
  // Another count or value is a protocol violation, not a guess.
  CHECK(keel::redis::internal::ParseFlags(Reply::Array({Reply::Integer(1)}), 2, "finish")
            .status()
            .code() == absl::StatusCode::kInternal);
  CHECK(keel::redis::internal::ParseFlags(Reply::Array({Reply::Integer(2)}), 1, "heartbeat")
            .status()
            .code() == absl::StatusCode::kInternal);
}

TEST_CASE("a blocking read's reply names each entry's level by its stream") {
  const std::vector<std::string> streams = {"q:s:0", "q:s:1"};
  const Reply reply = Reply::Array({Reply::Array(
      {Reply::String("q:s:1"),
       Reply::Array({Reply::Array(
           {Reply::String("5-1"), Reply::Array({Reply::String("id"), Reply::String("j1")})})})})});
  auto got = keel::redis::internal::ParseBlockingRead(reply, streams);
  REQUIRE(got.ok());
  REQUIRE(got->size() == 1);
  CHECK((*got)[0].level == 1);
  CHECK((*got)[0].entry == "5-1");
  CHECK((*got)[0].id == "j1");
  CHECK(keel::redis::internal::ParseBlockingRead(Reply::Nil(), streams)->empty());
}

TEST_CASE("a job's status is read from its hash, and a hash without a state is no job") {
  const Reply hash =
      Reply::Array({Reply::String("failed"), Reply::String("2"), Reply::String("5"),
                    Reply::String("1"), Reply::Nil(), Reply::String("UNAVAILABLE: down")});
  auto status = keel::redis::internal::ParseStatus(hash);
  REQUIRE(status.ok());
  REQUIRE(status->has_value());
  CHECK((*status)->state == JobState::kFailed);
  CHECK((*status)->attempts == 2);
  CHECK((*status)->max_attempts == 5);
  CHECK((*status)->priority == 1);
  CHECK((*status)->progress.empty());
  CHECK((*status)->last_error == "UNAVAILABLE: down");
  const Reply missing = Reply::Array(std::vector<Reply>(6));
  CHECK_FALSE(keel::redis::internal::ParseStatus(missing)->has_value());
  for (JobState s : {JobState::kQueued, JobState::kDelayed, JobState::kRunning, JobState::kDone,
                     JobState::kFailed, JobState::kDead}) {
    CHECK(keel::redis::internal::ParseJobState(keel::redis::JobStateName(s)) == s);
  }
}

TEST_CASE("retry n waits the backoff's (n-1)-th delay") {
  auto exponential = keel::Backoff::Exponential(100ms, 1s).value();
  absl::BitGen gen;
  using keel::redis::internal::RetryDelay;
  CHECK(RetryDelay(exponential, 1, gen) == 100ms);
  CHECK(RetryDelay(exponential, 2, gen) == 200ms);
  CHECK(RetryDelay(exponential, 3, gen) == 400ms);
  CHECK(RetryDelay(exponential, 10, gen) == 1s);
  // Full jitter draws U(0, v) from the worker's source: a fixed source gives the schedule's own
  // delay for that retry.
  auto jitter = keel::Backoff::FullJitter(100ms, 1s).value();
  std::mt19937_64 a(42), b(42);
  const keel::Duration delay = RetryDelay(jitter, 3, a);
  CHECK(delay == jitter.StartAt(2).Next(b));
  CHECK(delay <= 400ms);
  CHECK(keel::redis::internal::CeilMillis(1500us) == 2);
  CHECK(keel::redis::internal::CeilMillis(-1ms) == 0);
}
