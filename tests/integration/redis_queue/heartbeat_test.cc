// The worker's heartbeat against a real Redis: a handler that outlives its visibility timeout
// keeps its job (and, with the heartbeat off, loses it: the test can fail), a job taken by
// another consumer cancels its handler, and a late worker's completion never changes the new
// owner's attempt.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "integration/redis_queue/helpers.h"

using keel::Deadline;
using keel::redis::Job;
using keel::redis::JobContext;
using keel::redis::JobState;
using keel::redis::Reply;
using keel::redis::Worker;
using namespace std::chrono_literals;

namespace {

constexpr auto kWait = 10s;

// What one long handler run saw.
struct LongRun {
  std::atomic<bool> cancelled{false};
  std::atomic<int64_t> deadline_moved_ms{0};  // ctx.deadline() at the end minus at the start
};

// Runs one job whose handler takes 3x the visibility timeout on worker A, with worker B polling
// the same queue, and returns how many times each ran it. A polls too (it has room for more
// jobs), so without the heartbeat either may take the job over.
struct Overrun {
  int a_runs = 0;
  int b_runs = 0;
  keel::redis::WorkerStats a_stats;
  keel::redis::JobStatus status;
};
Overrun RunOverrun(bool heartbeat, LongRun& run) {
  constexpr auto kVisibility = 400ms;
  auto client = keel::test::SharedRedisClient();
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("overrun3x")});
  auto id = queue->Enqueue(Deadline::After(2s), "long");
  REQUIRE(id.ok());
  keel::test::Seen a_seen, a_done, b_seen;
  auto a = keel::test::MakeWorker(
      *queue, {.handler =
                   [&](const Job& job, JobContext& ctx) {
                     a_seen.Add(job.id, ctx.attempt());
                     const Deadline first = ctx.deadline();
                     run.cancelled = !ctx.cancellation().SleepUntil(
                         keel::SteadyClock(), keel::SteadyClock().Now() + 3 * kVisibility);
                     run.deadline_moved_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                                 ctx.deadline().time() - first.time())
                                                 .count();
                     a_done.Add(job.id);
                     return absl::OkStatus();
                   },
               .concurrency = 1,
               .batch = 1,
               .visibility_timeout = kVisibility,
               .heartbeat = heartbeat,
               .poll_interval = 50ms});
  REQUIRE(a_seen.WaitFor(1, kWait));
  auto b = keel::test::MakeWorker(*queue, {.handler =
                                               [&](const Job& job, JobContext& ctx) {
                                                 b_seen.Add(job.id, ctx.attempt());
                                                 return absl::OkStatus();
                                               },
                                           .visibility_timeout = kVisibility,
                                           .poll_interval = 50ms});
  REQUIRE(a_done.WaitFor(1, kWait));
  // B polls every 50 ms: give it a few more polls after A finished to show what it would do.
  b_seen.WaitFor(1, 300ms);
  REQUIRE(b->Stop(Deadline::After(5s)).ok());
  REQUIRE(a->Stop(Deadline::After(5s)).ok());
  Overrun out;
  out.a_runs = static_cast<int>(a_seen.ids().size());
  out.b_runs = static_cast<int>(b_seen.ids().size());
  out.a_stats = a->Stats();
  auto status = queue->Status(Deadline::After(2s), *id);
  REQUIRE(status.ok());
  out.status = *status;
  return out;
}

}  // namespace

TEST_CASE(
    "job queue: with the heartbeat a handler running 3x the visibility timeout keeps its job "
    "and completes once",
    "[redis_queue]") {
  LongRun run;
  const Overrun got = RunOverrun(/*heartbeat=*/true, run);
  CHECK(got.a_runs == 1);
  CHECK(got.b_runs == 0);
  CHECK_FALSE(run.cancelled.load());
  // 1.2 s of extensions every ~133 ms moved the deadline by about 1 s.
  CHECK(run.deadline_moved_ms.load() >= 600);
  CHECK(got.status.state == JobState::kDone);
  CHECK(got.status.attempts == 1);
  CHECK(got.a_stats.succeeded_total == 1);
  CHECK(got.a_stats.heartbeats_total >= 5);
  CHECK(got.a_stats.extended_total >= 5);
  CHECK(got.a_stats.lost_total == 0);
  CHECK(got.a_stats.stale_completions_total == 0);
}

TEST_CASE(
    "job queue: without the heartbeat a handler running 3x the visibility timeout has its job "
    "taken over",
    "[redis_queue]") {
  LongRun run;
  const Overrun got = RunOverrun(/*heartbeat=*/false, run);
  CHECK(got.a_runs + got.b_runs == 2);
  CHECK(run.cancelled.load());  // its deadline passed
  CHECK(run.deadline_moved_ms.load() == 0);
  CHECK(got.status.state == JobState::kDone);
  CHECK(got.status.attempts == 2);
  CHECK(got.a_stats.heartbeats_total == 0);
  // A's late success of attempt 1 found attempt 2 started (by B, or by A itself): dropped by the
  // finish script.
  CHECK(got.a_stats.stale_completions_total == 1);
}

namespace {

// The pending entry of a one-job queue: {stream, entry id, owner}.
struct PendingEntry {
  std::string stream, entry, owner;
};
PendingEntry OnlyPending(keel::redis::Client& client, const keel::redis::JobQueue& queue) {
  const std::string stream = queue.KeyPrefix() + ":s:0";
  auto pending = client.Command(Deadline::After(2s), "XPENDING", stream, "keel", "-", "+", 10);
  REQUIRE(pending.ok());
  REQUIRE(pending->elements().size() == 1);
  const auto& e = pending->elements()[0].elements();
  return {stream, e[0].str(), e[1].str()};
}

// The hash fields and the delayed set a late completion would change.
struct JobRecord {
  std::string state, attempts;
  int64_t delayed = 0;
};
JobRecord Record(keel::redis::Client& client, const keel::redis::JobQueue& queue,
                 const std::string& id) {
  auto fields = client.Command(Deadline::After(2s), "HMGET", queue.KeyPrefix() + ":job:" + id,
                               "state", "attempts");
  REQUIRE(fields.ok());
  auto delayed = client.Command(Deadline::After(2s), "ZCARD", queue.KeyPrefix() + ":delayed");
  REQUIRE(delayed.ok());
  return {fields->elements()[0].str(), fields->elements()[1].str(), delayed->integer()};
}

// Takes the entry for consumer "thief" by force, as a take-over by another worker would.
void Steal(keel::redis::Client& client, const PendingEntry& p) {
  auto claimed = client.Command(Deadline::After(2s), "XCLAIM", p.stream, "keel", "thief", 0,
                                p.entry, "JUSTID");
  REQUIRE(claimed.ok());
  REQUIRE(claimed->elements().size() == 1);
}

}  // namespace

TEST_CASE(
    "job queue: a heartbeat that finds the job taken by another consumer cancels the handler "
    "and drops its completion",
    "[redis_queue]") {
  auto client = keel::test::SharedRedisClient();
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("stolen")});
  auto id = queue->Enqueue(Deadline::After(2s), "x");
  REQUIRE(id.ok());
  keel::test::Seen started, finished;
  std::atomic<bool> cancelled{false};
  auto worker = keel::test::MakeWorker(*queue, {.handler =
                                                    [&](const Job& job, JobContext& ctx) {
                                                      started.Add(job.id);
                                                      cancelled = !ctx.cancellation().SleepUntil(
                                                          keel::SteadyClock(),
                                                          keel::SteadyClock().Now() + 10s);
                                                      finished.Add(job.id);
                                                      // Would schedule a retry if it counted.
                                                      return absl::UnavailableError("gave up");
                                                    },
                                                .visibility_timeout = 30s,
                                                .heartbeat_interval = 100ms});
  REQUIRE(started.WaitFor(1, kWait));
  const PendingEntry before = OnlyPending(*client, *queue);
  CHECK(before.owner == worker->consumer());
  Steal(*client, before);
  // The next heartbeat (within ~100 ms) finds the entry the thief's.
  REQUIRE(finished.WaitFor(1, 5s));
  CHECK(cancelled.load());
  REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  const keel::redis::WorkerStats stats = worker->Stats();
  CHECK(stats.lost_total == 1);
  CHECK(stats.stale_completions_total == 1);
  CHECK(stats.retried_total == 0);
  CHECK(stats.handed_back_total == 0);
  // The thief's claim is as it left it: still pending for it, nothing scheduled, no attempt
  // counted or uncounted.
  const PendingEntry after = OnlyPending(*client, *queue);
  CHECK(after.entry == before.entry);
  CHECK(after.owner == "thief");
  const JobRecord record = Record(*client, *queue, *id);
  CHECK(record.state == "running");
  CHECK(record.attempts == "1");
  CHECK(record.delayed == 0);
}

TEST_CASE(
    "job queue: a late worker's failure or hand-back does not touch the attempt another "
    "consumer took over",
    "[redis_queue]") {
  // The heartbeat is off, so the worker does not know: the finish script must refuse.
  const bool fail = GENERATE(true, false);  // fail the attempt, or be handed back by Stop
  auto client = keel::test::SharedRedisClient();
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("late")});
  auto id = queue->Enqueue(Deadline::After(2s), "x");
  REQUIRE(id.ok());
  keel::test::Seen started;
  keel::CancellationSource release;
  auto worker = keel::test::MakeWorker(
      *queue, {.handler =
                   [&](const Job& job, JobContext& ctx) {
                     started.Add(job.id);
                     while (!release.cancelled() && !ctx.cancellation().cancelled()) {
                       std::this_thread::sleep_for(2ms);
                     }
                     return absl::UnavailableError("failed late");
                   },
               .visibility_timeout = 30s,
               .heartbeat = false});
  REQUIRE(started.WaitFor(1, kWait));
  const PendingEntry before = OnlyPending(*client, *queue);
  Steal(*client, before);
  if (fail) release.Cancel();  // else Stop cancels the handler and hands the job back
  REQUIRE(worker->Stop(Deadline::After(1s)).ok());
  const keel::redis::WorkerStats stats = worker->Stats();
  CHECK(stats.stale_completions_total == 1);
  CHECK(stats.retried_total == 0);
  CHECK(stats.handed_back_total == 0);
  const PendingEntry after = OnlyPending(*client, *queue);
  CHECK(after.owner == "thief");
  const JobRecord record = Record(*client, *queue, *id);
  CHECK(record.state == "running");
  CHECK(record.attempts == "1");
  CHECK(record.delayed == 0);
  // Its idle time was not pushed past every visibility timeout by a hand-back.
  auto idle = client->Command(Deadline::After(2s), "XPENDING", before.stream, "keel", "IDLE",
                              3'600'000, "-", "+", 10);
  REQUIRE(idle.ok());
  CHECK(idle->elements().empty());
}
