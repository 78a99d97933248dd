// redis::JobQueue and redis::Worker against a real Redis: delivery, idempotency keys, retries
// with backoff into the dead letters, priority, delays, take-over after the visibility timeout,
// hand-back at Stop, progress, and round trips per job.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "integration/redis_queue/helpers.h"
#include "support/tcp_proxy.h"

using keel::Deadline;
using keel::redis::Job;
using keel::redis::JobContext;
using keel::redis::JobState;
using keel::redis::Worker;
using namespace std::chrono_literals;

namespace {

constexpr auto kWait = 10s;

std::vector<std::string> EnqueueN(keel::redis::JobQueue& queue, int n,
                                  keel::redis::EnqueueOptions options = {}) {
  std::vector<std::string> payloads;
  for (int i = 0; i < n; ++i) payloads.push_back("job-" + std::to_string(i));
  std::vector<keel::redis::NewJob> jobs;
  for (const std::string& p : payloads) jobs.push_back({p, options});
  auto ids = queue.EnqueueMany(Deadline::After(5s), jobs);
  REQUIRE(ids.ok());
  std::vector<std::string> out;
  for (auto& id : *ids) {
    REQUIRE(id.ok());
    out.push_back(*id);
  }
  return out;
}

// A worker that takes one job and vanishes without a word, as if its process had been killed:
// its handler hangs until Release, it is not stopped before, and (as a dead process) it sends no
// heartbeat.
struct Ghost {
  explicit Ghost(keel::redis::JobQueue& queue)
      : worker(keel::test::MakeWorker(queue, {.handler =
                                                  [this](const Job& job, JobContext&) {
                                                    seen.Add(job.id);
                                                    while (!release.cancelled()) {
                                                      std::this_thread::sleep_for(5ms);
                                                    }
                                                    return absl::OkStatus();
                                                  },
                                              .visibility_timeout = 200ms,
                                              .heartbeat = false})) {
    REQUIRE(seen.WaitFor(1, kWait));
  }
  ~Ghost() { release.Cancel(); }  // so the worker's destructor can join its handler
  void Release() {
    release.Cancel();
    REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  }
  keel::CancellationSource release;
  keel::test::Seen seen;
  std::unique_ptr<Worker> worker;
};

}  // namespace

TEST_CASE("job queue: every enqueued job runs once and its status becomes done", "[redis_queue]") {
  auto client = keel::test::SharedRedisClient();
  keel::MetricsRegistry metrics;
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("basic")}, &metrics);
  const std::vector<std::string> ids = EnqueueN(*queue, 300);
  auto info = queue->Inspect(Deadline::After(2s));
  REQUIRE(info.ok());
  CHECK(info->depth == 300);
  CHECK(info->pending == 0);
  CHECK(queue->Status(Deadline::After(2s), ids[0])->state == JobState::kQueued);

  keel::test::Seen seen;
  auto worker = keel::test::MakeWorker(
      *queue,
      {.handler =
           [&](const Job& job, JobContext& ctx) {
             // The attempt, or -1 for a payload not enqueued.
             seen.Add(job.id, job.payload.rfind("job-", 0) == 0 ? ctx.attempt() : -1);
             return absl::OkStatus();
           },
       .concurrency = 4,
       .batch = 16},
      &metrics);
  REQUIRE(seen.WaitFor(ids.size(), kWait));
  REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  CHECK(seen.attempts() == std::set<int>{1});
  const std::vector<std::string> got = seen.ids();
  CHECK(std::set<std::string>(got.begin(), got.end()) ==
        std::set<std::string>(ids.begin(), ids.end()));
  CHECK(got.size() == ids.size());
  for (const std::string& id : {ids.front(), ids.back()}) {
    auto status = queue->Status(Deadline::After(2s), id);
    REQUIRE(status.ok());
    CHECK(status->state == JobState::kDone);
    CHECK(status->attempts == 1);
  }
  info = queue->Inspect(Deadline::After(2s));
  REQUIRE(info.ok());
  CHECK(info->depth == 0);
  CHECK(info->pending == 0);
  CHECK(worker->Stats().succeeded_total == 300);
  CHECK(queue->Stats().enqueued_total == 300);
  const std::string text = metrics.RenderPrometheus();
  CHECK(text.find("keel_queue_jobs_succeeded_total{name=\"" + queue->options().name + "\"} 300") !=
        std::string::npos);
  CHECK(text.find("keel_queue_handler_seconds_count") != std::string::npos);
  CHECK(text.find("keel_queue_depth{") != std::string::npos);
  CHECK(queue->Status(Deadline::After(2s), "no-such-job").status().code() ==
        absl::StatusCode::kNotFound);
}

TEST_CASE("job queue: a duplicate idempotency key enqueues nothing and returns the first id",
          "[redis_queue]") {
  auto client = keel::test::SharedRedisClient();
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("idem")});
  auto first = queue->Enqueue(Deadline::After(2s), "a", {.idempotency_key = "order:1"});
  auto again = queue->Enqueue(Deadline::After(2s), "b", {.idempotency_key = "order:1"});
  auto other = queue->Enqueue(Deadline::After(2s), "c", {.idempotency_key = "order:2"});
  REQUIRE(first.ok());
  REQUIRE(again.ok());
  REQUIRE(other.ok());
  CHECK(*again == *first);
  CHECK(*other != *first);
  CHECK(queue->Inspect(Deadline::After(2s))->depth == 2);
  CHECK(queue->Stats().duplicates_total == 1);
}

TEST_CASE("job queue: a failing job is retried with backoff and reaches the dead letters",
          "[redis_queue]") {
  auto client = keel::test::SharedRedisClient();
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("dead")});
  auto id = queue->Enqueue(Deadline::After(2s), "poison", {.max_attempts = 3});
  REQUIRE(id.ok());
  keel::Mutex mu;
  std::vector<std::chrono::steady_clock::time_point> attempts;
  keel::test::Seen seen;
  // Equal jitter: each delay is at least half of base * 2^n, so the gaps have a lower bound.
  auto worker = keel::test::MakeWorker(
      *queue,
      {.handler =
           [&](const Job& job, JobContext& ctx) {
             {
               keel::MutexLock lock(mu);
               attempts.push_back(std::chrono::steady_clock::now());
             }
             seen.Add(job.id);
             return absl::UnavailableError("attempt " + std::to_string(ctx.attempt()));
           },
       .retry_backoff = {.kind = keel::Backoff::Kind::kEqualJitter, .base = 100ms, .cap = 1s},
       .poll_interval = 50ms});
  REQUIRE(seen.WaitFor(3, kWait));
  // The dead letter is written by the finish after the third attempt.
  std::vector<keel::redis::DeadLetter> dead;
  for (int i = 0; i < 200 && dead.empty(); ++i) {
    auto letters = queue->DeadLetters(Deadline::After(2s));
    REQUIRE(letters.ok());
    dead = *letters;
    if (dead.empty()) std::this_thread::sleep_for(10ms);
  }
  REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  {
    keel::MutexLock lock(mu);
    REQUIRE(attempts.size() == 3);
    CHECK(attempts[1] - attempts[0] >= 50ms);   // retry 1: U(50ms, 100ms)
    CHECK(attempts[2] - attempts[1] >= 100ms);  // retry 2: U(100ms, 200ms)
  }
  REQUIRE(dead.size() == 1);
  CHECK(dead[0].id == *id);
  CHECK(dead[0].payload == "poison");
  CHECK(dead[0].attempts == 3);
  CHECK(dead[0].error == "UNAVAILABLE: attempt 3");
  auto status = queue->Status(Deadline::After(2s), *id);
  REQUIRE(status.ok());
  CHECK(status->state == JobState::kDead);
  CHECK(status->attempts == 3);
  CHECK(status->last_error == "UNAVAILABLE: attempt 3");
  CHECK(worker->Stats().retried_total == 2);
  CHECK(worker->Stats().dead_total == 1);
}

TEST_CASE("job queue: higher priority levels are taken first", "[redis_queue]") {
  auto client = keel::test::SharedRedisClient();
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("prio")});
  EnqueueN(*queue, 10, {.priority = 0});
  EnqueueN(*queue, 10, {.priority = 2});
  EnqueueN(*queue, 10, {.priority = 1});
  keel::Mutex mu;
  std::vector<int> order;
  keel::test::Seen seen;
  auto worker = keel::test::MakeWorker(*queue, {.handler =
                                                    [&](const Job& job, JobContext&) {
                                                      {
                                                        keel::MutexLock lock(mu);
                                                        order.push_back(job.priority);
                                                      }
                                                      seen.Add(job.id);
                                                      return absl::OkStatus();
                                                    },
                                                .concurrency = 1,
                                                .batch = 1});
  REQUIRE(seen.WaitFor(30, kWait));
  REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  keel::MutexLock lock(mu);
  CHECK(std::is_sorted(order.begin(), order.end(), std::greater<int>()));
}

TEST_CASE("job queue: a delayed job waits for its delay", "[redis_queue]") {
  auto client = keel::test::SharedRedisClient();
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("delay")});
  const auto enqueued = std::chrono::steady_clock::now();
  auto id = queue->Enqueue(Deadline::After(2s), "later", {.delay = 300ms});
  REQUIRE(id.ok());
  CHECK(queue->Status(Deadline::After(2s), *id)->state == JobState::kDelayed);
  CHECK(queue->Inspect(Deadline::After(2s))->delayed == 1);
  std::atomic<int64_t> ran_after_ms{-1};
  keel::test::Seen seen;
  auto worker = keel::test::MakeWorker(*queue, {.handler = [&](const Job& job, JobContext&) {
    ran_after_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                       std::chrono::steady_clock::now() - enqueued)
                       .count();
    seen.Add(job.id);
    return absl::OkStatus();
  }});
  REQUIRE(seen.WaitFor(1, kWait));
  REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  CHECK(ran_after_ms.load() >= 299);  // Redis's milliseconds against the steady clock's
  // The worker blocked until the job was due rather than its 1 s poll interval.
  CHECK(ran_after_ms.load() < 900);
}

TEST_CASE(
    "job queue: a job held by a worker that vanished is taken over after the visibility "
    "timeout",
    "[redis_queue]") {
  auto client = keel::test::SharedRedisClient();
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("lost")});
  auto id = queue->Enqueue(Deadline::After(2s), "orphan");
  REQUIRE(id.ok());
  Ghost ghost(*queue);
  keel::test::Seen seen;
  auto worker = keel::test::MakeWorker(*queue, {.handler =
                                                    [&](const Job& job, JobContext& ctx) {
                                                      seen.Add(job.id, ctx.attempt());
                                                      return absl::OkStatus();
                                                    },
                                                .visibility_timeout = 200ms,
                                                .poll_interval = 50ms});
  REQUIRE(seen.WaitFor(1, kWait));
  CHECK(seen.ids() == std::vector<std::string>{*id});
  CHECK(seen.attempts() == std::set<int>{2});
  CHECK(worker->Stats().reclaimed_total == 1);
  REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  CHECK(queue->Status(Deadline::After(2s), *id)->state == JobState::kDone);
  // The ghost finishes late: the job is acknowledged already, nothing changes.
  ghost.Release();
  CHECK(queue->Status(Deadline::After(2s), *id)->attempts == 2);
}

TEST_CASE("job queue: Stop hands back running jobs, which another worker takes at once",
          "[redis_queue]") {
  auto client = keel::test::SharedRedisClient();
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("stop")});
  const std::vector<std::string> ids = EnqueueN(*queue, 2);
  keel::test::Seen started, finished;
  auto first = keel::test::MakeWorker(*queue, {.handler =
                                                   [&](const Job& job, JobContext& ctx) {
                                                     started.Add(job.id);
                                                     // Runs until cancelled: the worker is
                                                     // stopping.
                                                     ctx.cancellation().SleepUntil(
                                                         keel::SteadyClock(),
                                                         keel::SteadyClock().Now() + 60s);
                                                     return absl::CancelledError("stopping");
                                                   },
                                               .concurrency = 2});
  REQUIRE(started.WaitFor(2, kWait));
  const auto stop_began = std::chrono::steady_clock::now();
  REQUIRE(first->Stop(Deadline::After(400ms)).ok());
  CHECK(std::chrono::steady_clock::now() - stop_began < 1s);
  CHECK(first->Stats().handed_back_total == 2);
  CHECK(first->Stats().retried_total == 0);
  auto status = queue->Status(Deadline::After(2s), ids[0]);
  REQUIRE(status.ok());
  CHECK(status->state == JobState::kQueued);
  CHECK(status->attempts == 0);
  // Visibility timeout 30 s: only a hand-back lets the next worker take them now.
  auto second = keel::test::MakeWorker(*queue, {.handler = [&](const Job& job, JobContext& ctx) {
    finished.Add(job.id, ctx.attempt());
    return absl::OkStatus();
  }});
  REQUIRE(finished.WaitFor(2, 5s));
  REQUIRE(second->Stop(Deadline::After(5s)).ok());
  CHECK(finished.attempts() == std::set<int>{1});
  CHECK(second->Stop(Deadline::After(1s)).code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("job queue: progress and handler exceptions", "[redis_queue]") {
  auto client = keel::test::SharedRedisClient();
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("progress")});
  auto ok_id = queue->Enqueue(Deadline::After(2s), "ok");
  auto throw_id = queue->Enqueue(Deadline::After(2s), "throw", {.max_attempts = 1});
  REQUIRE(ok_id.ok());
  REQUIRE(throw_id.ok());
  keel::test::Seen seen;
  auto worker = keel::test::MakeWorker(
      *queue, {.handler = [&](const Job& job, JobContext& ctx) -> absl::Status {
        seen.Add(job.id);
        if (job.payload == "throw") throw std::runtime_error("boom");
        return ctx.SetProgress(Deadline::After(1s), "half way");
      }});
  REQUIRE(seen.WaitFor(2, kWait));
  REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  auto ok = queue->Status(Deadline::After(2s), *ok_id);
  REQUIRE(ok.ok());
  CHECK(ok->state == JobState::kDone);
  CHECK(ok->progress == "half way");
  auto thrown = queue->Status(Deadline::After(2s), *throw_id);
  REQUIRE(thrown.ok());
  CHECK(thrown->state == JobState::kDead);
  CHECK(thrown->last_error.find("handler threw") != std::string::npos);
  CHECK(worker->Stats().handler_exceptions_total == 1);
}

TEST_CASE("job queue: the start limiter paces job starts", "[redis_queue]") {
  auto client = keel::test::SharedRedisClient();
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("paced")});
  EnqueueN(*queue, 5);
  std::atomic<int> asked{0};
  keel::test::Seen seen;
  auto worker = keel::test::MakeWorker(
      *queue, {.handler =
                   [&](const Job& job, JobContext&) {
                     seen.Add(job.id);
                     return absl::OkStatus();
                   },
               .concurrency = 1,
               // Every other request is denied for 10 ms.
               .start_limiter = [&](Deadline) -> absl::StatusOr<keel::limit::Decision> {
                 return keel::limit::Decision{.allowed = asked.fetch_add(1) % 2 == 1,
                                              .retry_after = 10ms};
               }});
  REQUIRE(seen.WaitFor(5, kWait));
  REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  CHECK(asked.load() == 10);
}

TEST_CASE(
    "job queue: batched reads and multi-id acknowledgements cost under one round trip per "
    "job",
    "[redis_queue]") {
  const std::string url = keel::test::RequireEnv("KEEL_TEST_REDIS_URL");
  const int port = std::stoi(url.substr(url.rfind(':') + 1));
  keel::test::TcpProxy proxy(port);
  auto client = keel::test::MakeRedisClient("redis://127.0.0.1:" + std::to_string(proxy.port()));
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("trips")});
  constexpr int kJobs = 400;
  EnqueueN(*queue, kJobs);
  keel::test::Seen seen;
  const uint64_t before = proxy.flights();
  auto worker = keel::test::MakeWorker(*queue, {.handler =
                                                    [&](const Job& job, JobContext&) {
                                                      seen.Add(job.id);
                                                      return absl::OkStatus();
                                                    },
                                                .concurrency = 4,
                                                .batch = 20,
                                                .inspect_interval = std::nullopt});
  REQUIRE(seen.WaitFor(kJobs, kWait));
  REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  const double per_job = static_cast<double>(proxy.flights() - before) / kJobs;
  INFO("round trips per job: " << per_job);
  CHECK(per_job <= 0.5);
  CHECK(queue->Inspect(Deadline::After(2s))->pending == 0);
}

TEST_CASE(
    "job queue: without the heartbeat a handler past its visibility timeout sees its cancellation",
    "[redis_queue]") {
  auto client = keel::test::SharedRedisClient();
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("overrun")});
  REQUIRE(queue->Enqueue(Deadline::After(2s), "slow").ok());
  std::atomic<bool> cancelled{false};
  std::atomic<int64_t> ran_ms{0};
  keel::test::Seen seen;
  auto worker = keel::test::MakeWorker(
      *queue, {.handler =
                   [&](const Job& job, JobContext& ctx) {
                     const auto start = std::chrono::steady_clock::now();
                     // Sleeps until cancelled, at most 5 s.
                     cancelled = !ctx.cancellation().SleepUntil(keel::SteadyClock(),
                                                                keel::SteadyClock().Now() + 5s);
                     ran_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                  std::chrono::steady_clock::now() - start)
                                  .count();
                     seen.Add(job.id);
                     return absl::OkStatus();
                   },
               .visibility_timeout = 100ms,
               .heartbeat = false,
               .poll_interval = 50ms});
  REQUIRE(seen.WaitFor(1, kWait));
  REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  CHECK(cancelled.load());
  CHECK(ran_ms.load() >= 90);
  CHECK(ran_ms.load() < 1000);
}

TEST_CASE("job queue: a job whose workers keep vanishing reaches the dead letters",
          "[redis_queue]") {
  auto client = keel::test::SharedRedisClient();
  auto queue = keel::test::MakeQueue(*client, {.name = keel::test::UniqueName("cursed")});
  auto id = queue->Enqueue(Deadline::After(2s), "kills its worker", {.max_attempts = 1});
  REQUIRE(id.ok());
  Ghost ghost(*queue);
  std::atomic<int> ran{0};
  auto worker = keel::test::MakeWorker(*queue, {.handler =
                                                    [&](const Job&, JobContext&) {
                                                      ran.fetch_add(1);
                                                      return absl::OkStatus();
                                                    },
                                                .visibility_timeout = 200ms,
                                                .poll_interval = 50ms});
  std::vector<keel::redis::DeadLetter> dead;
  for (int i = 0; i < 300 && dead.empty(); ++i) {
    std::this_thread::sleep_for(10ms);
    dead = queue->DeadLetters(Deadline::After(2s)).value();
  }
  REQUIRE(dead.size() == 1);
  CHECK(dead[0].id == *id);
  CHECK(dead[0].error == "attempt 1 was not acknowledged within the visibility timeout");
  CHECK(ran.load() == 0);
  CHECK(queue->Status(Deadline::After(2s), *id)->state == JobState::kDead);
  REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  ghost.Release();
  // The ghost's late success finds the job gone from the stream: it stays dead.
  CHECK(queue->Status(Deadline::After(2s), *id)->state == JobState::kDead);
}
