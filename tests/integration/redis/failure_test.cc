// The Redis client under real failures: redis-server killed and restarted, or paused with
// SIGSTOP, while several threads keep calling. Every server here is the test's own.
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "integration/redis/load.h"
#include "integration/redis/test_server.h"
#include "keel/redis/client.h"

using keel::Deadline;
using keel::redis::Client;
using keel::redis::Options;
using namespace std::chrono_literals;
using keel::test::Call;
using keel::test::Clock;
using keel::test::Describe;
using keel::test::Load;

namespace {

std::unique_ptr<Client> MakeClient(const keel::test::RedisServer& server) {
  auto o = Options::FromUrl(server.url());
  REQUIRE(o.ok());
  o->pool.max_size = 4;
  o->connect_timeout = 200ms;
  auto c = Client::Create(*o);
  REQUIRE(c.ok());
  return std::move(*c);
}

}  // namespace

TEST_CASE("redis failure: kill -9 under load fails fast with UNAVAILABLE and recovers within 1s") {
  keel::test::RedisServer server;
  auto client = MakeClient(server);
  const auto origin = Clock::now();
  Load load(*client, 4, 200ms);
  std::this_thread::sleep_for(300ms);
  const auto killed = Clock::now();
  server.Kill();
  std::this_thread::sleep_for(1s);
  const auto restarting = Clock::now();
  REQUIRE(server.Start());
  std::this_thread::sleep_for(1500ms);
  const std::vector<Call> calls = load.Stop();

  int ok_before = 0, failed_during = 0, after_recovery = 0;
  for (const Call& c : calls) {
    INFO(Describe(c, origin));
    if (c.end < killed && c.code == absl::StatusCode::kOk) ++ok_before;
    // While the server is down (from shortly after the kill until the restart begins), every call
    // fails fast with UNAVAILABLE: no hanging, no waiting out the deadline.
    if (c.start > killed + 20ms && c.end < restarting) {
      ++failed_during;
      CHECK(c.code == absl::StatusCode::kUnavailable);
      CHECK(c.end - c.start < 50ms);
    }
    CHECK(c.end - c.start < 250ms);
    // Recovery within 1 s of the server being back, without restarting anything in-process.
    if (c.start > restarting + 1s) {
      ++after_recovery;
      CHECK(c.code == absl::StatusCode::kOk);
    }
  }
  CHECK(ok_before > 0);
  CHECK(failed_during > 0);
  CHECK(after_recovery > 0);
}

TEST_CASE("redis failure: SIGSTOP for 3s: every call returns by its deadline, traffic resumes") {
  keel::test::RedisServer server;
  auto client = MakeClient(server);
  const auto origin = Clock::now();
  constexpr auto kDeadline = 100ms;
  Load load(*client, 4, kDeadline);
  std::this_thread::sleep_for(300ms);
  const auto stopped = Clock::now();
  server.Stop();
  std::this_thread::sleep_for(3s);
  server.Continue();
  const auto continued = Clock::now();
  std::this_thread::sleep_for(1500ms);
  const std::vector<Call> calls = load.Stop();
  const auto stats = client->Stats();

  int during = 0, after = 0;
  for (const Call& c : calls) {
    INFO(Describe(c, origin));
    CHECK(c.end - c.start <= kDeadline + 50ms);
    if (c.start > stopped + 5ms && c.end < continued) {
      ++during;
      CHECK((c.code == absl::StatusCode::kDeadlineExceeded ||
             c.code == absl::StatusCode::kUnavailable));
    }
    if (c.start > continued + 1s) {
      ++after;
      CHECK(c.code == absl::StatusCode::kOk);
    }
  }
  // Four threads making ~100 ms calls for 3 s: far more calls than connections, so connections
  // were not left hanging in the pool.
  CHECK(during >= 4 * 20);
  CHECK(after > 0);
  CHECK(stats.pool.in_use == 0);
  CHECK(stats.pool.total <= 4);
}
