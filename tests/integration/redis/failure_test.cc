// The Redis client under real failures: redis-server killed and restarted, or paused with
// SIGSTOP, while several threads keep calling. Every server here is the test's own.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "integration/redis/load.h"
#include "integration/redis/test_server.h"
#include "keel/redis/client.h"
#include "keel/redis/connection.h"

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
  // Calls that end after the signal is sent may be answered: the window closes before it.
  const auto continuing = Clock::now();
  server.Continue();
  const auto continued = Clock::now();
  std::this_thread::sleep_for(1500ms);
  const std::vector<Call> calls = load.Stop();
  const auto stats = client->Stats();

  int during = 0, after = 0;
  for (const Call& c : calls) {
    INFO(Describe(c, origin));
    CHECK(c.end - c.start <= kDeadline + 50ms);
    if (c.start > stopped + 5ms && c.end < continuing) {
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

namespace {

// total_connections_received from INFO stats: every TCP connection the server ever accepted.
int64_t ConnectionsReceived(const keel::test::RedisServer& server) {
  auto o = Options::FromUrl(server.url());
  auto conn = keel::redis::Connection::Connect(o->server, *o, Deadline::After(2s));
  REQUIRE(conn.ok());
  auto info = (*conn)->Command(Deadline::After(2s), "INFO", "stats");
  REQUIRE(info.ok());
  const std::string& text = info->str();
  const std::string field = "total_connections_received:";
  const size_t at = text.find(field);
  REQUIRE(at != std::string::npos);
  return std::stoll(text.substr(at + field.size()));
}

struct EchoCall {
  Clock::time_point start;
  Clock::time_point end;
  absl::StatusCode code;
  bool own_reply;  // for an OK call: the reply was this call's own value
};

}  // namespace

TEST_CASE(
    "redis failure: SIGSTOP 5s with 20ms deadlines keeps the connections and every "
    "caller gets its own reply") {
  keel::test::RedisServer server;
  constexpr int kPool = 4;
  constexpr int kThreads = 6;
  constexpr auto kDeadline = 20ms;
  auto o = Options::FromUrl(server.url());
  REQUIRE(o.ok());
  o->transport = GENERATE(keel::redis::Transport::kMultiplexed, keel::redis::Transport::kPooled);
  const bool pooled = o->transport == keel::redis::Transport::kPooled;
  INFO((pooled ? "pooled" : "multiplexed"));
  o->pool.max_size = kPool;
  o->connect_timeout = 200ms;
  auto client = std::move(Client::Create(*o).value());
  // Open the whole pool (and the multiplexed connection) before counting.
  REQUIRE(client->Command(Deadline::After(1s), "PING").ok());
  {
    std::vector<keel::Lease<keel::redis::Connection>> leases;
    for (int i = 0; i < kPool; ++i)
      leases.push_back(std::move(client->Acquire(Deadline::After(1s)).value()));
  }
  const int64_t before = ConnectionsReceived(server);

  std::atomic<bool> stop{false};
  std::vector<std::vector<EchoCall>> calls(kThreads);
  std::vector<std::thread> workers;
  for (int t = 0; t < kThreads; ++t) {
    workers.emplace_back([&, t] {
      for (int i = 0; !stop.load(std::memory_order_relaxed); ++i) {
        const std::string value = std::to_string(t) + ":" + std::to_string(i);
        EchoCall call;
        call.start = Clock::now();
        auto r = client->Command(Deadline::After(kDeadline), "ECHO", value);
        call.end = Clock::now();
        call.code = r.status().code();
        call.own_reply = r.ok() && r->str() == value;
        calls[t].push_back(call);
        if (!r.ok()) std::this_thread::sleep_for(2ms);
      }
    });
  }
  std::this_thread::sleep_for(300ms);
  const auto stopped = Clock::now();
  server.Stop();
  std::this_thread::sleep_for(5s);
  const auto continuing = Clock::now();
  server.Continue();
  const auto continued = Clock::now();
  std::this_thread::sleep_for(1s);
  stop = true;
  for (auto& w : workers) w.join();
  const int64_t after = ConnectionsReceived(server);
  const auto stats = client->Stats();

  int during = 0, after_total = 0, ok_after = 0, ok_total = 0;
  for (const auto& per_thread : calls) {
    for (const EchoCall& c : per_thread) {
      INFO(Describe(Call{c.start, c.end, c.code}, stopped));
      CHECK(c.end - c.start <= kDeadline + 50ms);
      if (c.code == absl::StatusCode::kOk) {
        ++ok_total;
        CHECK(c.own_reply);  // never a late reply of someone else's call
      }
      if (c.start > stopped + 5ms && c.end < continuing) {
        ++during;
        CHECK(c.code == absl::StatusCode::kDeadlineExceeded);
      }
      // A 20 ms deadline on a shared, loaded machine misses now and then even with Redis
      // running: after SIGCONT the calls must succeed again, not every single one.
      if (c.start > continued + 200ms) {
        ++after_total;
        if (c.code == absl::StatusCode::kOk) ++ok_after;
      }
    }
  }
  CHECK(during > 100);
  CHECK(after_total > 100);
  CHECK(ok_after >= after_total * 9 / 10);
  CHECK(ok_total > 0);
  // Without keeping late connections this was one new connection per timed-out call (hundreds);
  // now only the INFO probe itself (1) and at most a couple of replacements.
  INFO("new connections: " << after - before
                           << ", late replies drained: " << stats.late_replies_drained_total
                           << ", discarded: " << stats.transport.late_replies_discarded_total);
  CHECK(after - before <= 1 + 2);
  // Pooled, the next call on a connection drains its late replies; multiplexed, the I/O thread
  // discards them as they arrive, and the one connection is never replaced.
  if (pooled) {
    CHECK(stats.late_replies_drained_total > 0);
  } else {
    CHECK(stats.transport.late_replies_discarded_total > 0);
    CHECK(stats.transport.reconnects_total == 0);
  }
  CHECK(stats.pool.total <= kPool);
}
