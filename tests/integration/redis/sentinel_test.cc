// Sentinel failover with real processes on loopback: a primary, a replica and three sentinels.
// The primary is killed under load; the client must find and use the promoted replica by itself.
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
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
using keel::test::Call;
using keel::test::Clock;
using keel::test::Describe;
using namespace std::chrono_literals;

namespace {

// A short-lived connection to a loopback port for setup checks and sentinel queries.
absl::StatusOr<keel::redis::Reply> Ask(int port, std::vector<std::string> argv) {
  keel::redis::Options o;
  o.server.port = port;
  auto conn = keel::redis::Connection::Connect(o.server, o, Deadline::After(1s));
  if (!conn.ok()) return conn.status();
  std::vector<std::string_view> views(argv.begin(), argv.end());
  return (*conn)->CommandArgv(Deadline::After(1s), views);
}

// Polls `ready` every 50 ms for up to `timeout`.
template <typename F>
bool Eventually(F ready, keel::Duration timeout) {
  const auto until = Clock::now() + timeout;
  while (Clock::now() < until) {
    if (ready()) return true;
    std::this_thread::sleep_for(50ms);
  }
  return ready();
}

int PrimaryPortFromSentinel(int sentinel_port) {
  auto r = Ask(sentinel_port, {"SENTINEL", "get-master-addr-by-name", "keelmaster"});
  if (!r.ok() || !r->is_array() || r->elements().size() != 2) return -1;
  return std::stoi(r->elements()[1].str());
}

}  // namespace

TEST_CASE("sentinel: an unreachable sentinel list gives UNAVAILABLE naming each sentinel") {
  const int a = keel::test::FreeLoopbackPort();
  auto o = Options::FromUrl("redis+sentinel://127.0.0.1:" + std::to_string(a) + "/keelmaster");
  REQUIRE(o.ok());
  auto client = std::move(Client::Create(*o).value());
  auto r = client->Command(Deadline::After(1s), "PING");
  CHECK(r.status().code() == absl::StatusCode::kUnavailable);
  CHECK_THAT(std::string(r.status().message()),
             Catch::Contains("redis sentinel \"keelmaster\": no primary") &&
                 Catch::Contains("127.0.0.1:" + std::to_string(a)));
}

TEST_CASE("sentinel: the client follows a failover after the primary is killed under load") {
  keel::test::RedisServer primary;
  keel::test::RedisServer replica({"--replicaof", "127.0.0.1", std::to_string(primary.port()),
                                   "--repl-ping-replica-period", "1"});
  std::vector<std::unique_ptr<keel::test::SentinelServer>> sentinels;
  for (int i = 0; i < 3; ++i) {
    sentinels.push_back(std::make_unique<keel::test::SentinelServer>("keelmaster", primary.port()));
  }
  // Ready when the replica is in sync and every sentinel knows the replica and the two others.
  REQUIRE(Eventually(
      [&] {
        auto info = Ask(replica.port(), {"INFO", "replication"});
        if (!info.ok() || info->str().find("master_link_status:up") == std::string::npos) {
          return false;
        }
        for (const auto& s : sentinels) {
          auto replicas = Ask(s->port(), {"SENTINEL", "replicas", "keelmaster"});
          auto others = Ask(s->port(), {"SENTINEL", "sentinels", "keelmaster"});
          if (!replicas.ok() || replicas->elements().empty()) return false;
          if (!others.ok() || others->elements().size() != 2) return false;
        }
        return true;
      },
      20s));

  std::string url = "redis+sentinel://";
  for (size_t i = 0; i < sentinels.size(); ++i) {
    url += (i ? ",127.0.0.1:" : "127.0.0.1:") + std::to_string(sentinels[i]->port());
  }
  auto options = Options::FromUrl(url + "/keelmaster");
  REQUIRE(options.ok());
  options->pool.max_size = 4;
  options->connect_timeout = 200ms;
  auto client = std::move(Client::Create(*options).value());
  REQUIRE(client->Command(Deadline::After(1s), "SET", "keel:before", "1").ok());

  const auto origin = Clock::now();
  keel::test::Load load(*client, 4, 200ms);
  std::this_thread::sleep_for(300ms);
  const auto killed = Clock::now();
  primary.Kill();
  const bool failed_over = Eventually(
      [&] { return PrimaryPortFromSentinel(sentinels[0]->port()) == replica.port(); }, 20s);
  const auto promoted = Clock::now();
  std::this_thread::sleep_for(1500ms);
  const std::vector<Call> calls = load.Stop();
  REQUIRE(failed_over);

  int ok_before = 0, ok_after = 0;
  for (const Call& c : calls) {
    INFO(Describe(c, origin));
    CHECK(c.end - c.start < 250ms);
    if (c.end < killed && c.code == absl::StatusCode::kOk) ++ok_before;
    if (c.start > killed + 20ms && c.end < promoted) {
      // The old primary is gone: fail fast, never hang (or already succeed: the client may find
      // the promoted replica before this test's 50 ms poll of the sentinel does).
      CHECK((c.code == absl::StatusCode::kUnavailable || c.code == absl::StatusCode::kOk));
    }
    if (c.start > promoted + 1s) {
      ++ok_after;
      CHECK(c.code == absl::StatusCode::kOk);
    }
  }
  CHECK(ok_before > 0);
  CHECK(ok_after > 0);
  // The writes went to the promoted replica, which also kept what was written before.
  CHECK(Ask(replica.port(), {"GET", "keel:before"})->str() == "1");
  CHECK(client->Stats().primary_discoveries_total >= 2);
  // The calls ran multiplexed (the default), and the multiplexed connection moved to the new
  // primary.
  CHECK(client->options().transport == keel::redis::Transport::kMultiplexed);
  CHECK(client->Stats().transport.reconnects_total >= 1);
  CHECK(client->Stats().transport.calls_total > 0);
}
