// redis::JobQueue and redis::Worker when Redis fails: with appendonly (appendfsync always), a
// Redis killed (kill -9) and restarted while a worker processes loses no enqueue that was
// acknowledged; a worker stopping while Redis is paused returns by its deadline.
#include <catch2/catch.hpp>
#include <chrono>
#include <set>
#include <string>
#include <vector>

#include "integration/redis/test_server.h"
#include "integration/redis_queue/helpers.h"

using keel::Deadline;
using keel::redis::Job;
using keel::redis::JobContext;
using namespace std::chrono_literals;

TEST_CASE("job queue: a Redis restart during processing loses no acknowledged enqueue",
          "[redis_queue]") {
  keel::test::RedisServer server({"--appendonly", "yes", "--appendfsync", "always"});
  auto client = keel::test::MakeRedisClient(server.url());
  auto queue = keel::test::MakeQueue(*client, {.name = "restart"});
  keel::test::Seen seen;
  auto worker = keel::test::MakeWorker(*queue, {.handler =
                                                    [&](const Job& job, JobContext&) {
                                                      seen.Add(job.id);
                                                      return absl::OkStatus();
                                                    },
                                                .visibility_timeout = 500ms,
                                                .poll_interval = 100ms,
                                                .redis_retry_delay = 20ms});
  constexpr int kAttempts = 1500;
  std::vector<std::string> acknowledged;
  int failed = 0;
  for (int i = 0; i < kAttempts; ++i) {
    if (i == kAttempts / 3) {
      server.Kill();
      REQUIRE(server.Start());
    }
    auto id = queue->Enqueue(Deadline::After(500ms), "job-" + std::to_string(i));
    if (id.ok()) {
      acknowledged.push_back(*id);
    } else {
      ++failed;
    }
  }
  INFO("enqueues acknowledged: " << acknowledged.size() << ", failed: " << failed);
  REQUIRE(acknowledged.size() > kAttempts / 2);
  // Every acknowledged job runs (some twice: taken, then the crash lost their acknowledgement).
  const auto give_up = std::chrono::steady_clock::now() + 20s;
  std::set<std::string> handled;
  bool all = false;
  while (!all && std::chrono::steady_clock::now() < give_up) {
    seen.WaitFor(acknowledged.size(), 100ms);
    const std::vector<std::string> ids = seen.ids();
    handled = std::set<std::string>(ids.begin(), ids.end());
    all = std::all_of(acknowledged.begin(), acknowledged.end(),
                      [&](const std::string& id) { return handled.count(id) == 1; });
  }
  REQUIRE(worker->Stop(Deadline::After(5s)).ok());
  size_t lost = 0;
  for (const std::string& id : acknowledged) lost += handled.count(id) == 0 ? 1 : 0;
  CHECK(lost == 0);
  for (const std::string& id : {acknowledged.front(), acknowledged.back()}) {
    auto status = queue->Status(Deadline::After(2s), id);
    REQUIRE(status.ok());
    CHECK(status->state == keel::redis::JobState::kDone);
  }
}

TEST_CASE("job queue: Stop returns by its deadline while Redis is paused, with DEADLINE_EXCEEDED",
          "[redis_queue]") {
  keel::test::RedisServer server;
  auto options = keel::redis::Options::FromUrl(server.url());
  REQUIRE(options.ok());
  options->command_timeout = 300ms;
  auto client = keel::redis::Client::Create(*options);
  REQUIRE(client.ok());
  auto queue = keel::test::MakeQueue(**client, {.name = "paused"});
  auto id = queue->Enqueue(Deadline::After(1s), "x");
  REQUIRE(id.ok());
  keel::CancellationSource go;
  keel::test::Seen started;
  auto worker = keel::test::MakeWorker(*queue, {.handler = [&](const Job& job, JobContext&) {
    started.Add(job.id);
    while (!go.cancelled()) {
      std::this_thread::sleep_for(1ms);
    }
    return absl::OkStatus();
  }});
  REQUIRE(started.WaitFor(1, 10s));
  server.Stop();  // SIGSTOP: the acknowledgement of the job cannot reach Redis
  go.Cancel();
  const auto began = std::chrono::steady_clock::now();
  const absl::Status stopped = worker->Stop(Deadline::After(400ms));
  const auto took = std::chrono::steady_clock::now() - began;
  server.Continue();
  CHECK(stopped.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(took < 1s);
  worker.reset();
  // Never acknowledged: the job is still pending, to run again after its visibility timeout.
  auto status = queue->Status(Deadline::After(2s), *id);
  REQUIRE(status.ok());
  CHECK(status->state == keel::redis::JobState::kRunning);
}
