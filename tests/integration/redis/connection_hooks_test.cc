// redis::Options::connection_hooks and Client::Reconnect against a redis-server of the test's
// own: the setup hook runs on every new connection (multiplexed and pooled) before any call uses
// it, its session state is the connection's configured state, a failing hook fails the connect,
// and on_lost hears a multiplexed connection go.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <stdexcept>
#include <string>
#include <vector>

#include "integration/redis/client_list.h"
#include "integration/redis/test_server.h"
#include "keel/redis/client.h"
#include "keel/redis/connection.h"
#include "support/poll.h"

using keel::Deadline;
using keel::redis::Client;
using keel::redis::Connection;
using keel::redis::Options;
using namespace std::chrono_literals;

namespace {

std::string MessageOf(const absl::Status& s) { return std::string(s.message()); }

// The ids of the server's connections named `name` (CLIENT LIST).
std::vector<std::string> IdsNamed(Client& admin, const std::string& name) {
  std::vector<std::string> ids;
  for (auto& c : keel::test::ClientList(admin)) {
    if (c["name"] == name) ids.push_back(c["id"]);
  }
  return ids;
}

struct Counts {
  std::atomic<int> connects{0};
  std::atomic<int> lost{0};
};

Options Hooked(const std::string& url, Counts& counts, keel::redis::Transport transport) {
  auto o = Options::FromUrl(url).value();
  o.transport = transport;
  o.connect_timeout = 500ms;
  o.command_timeout = 500ms;
  o.connection_hooks = {
      .on_connect = [&counts](Connection& c, Deadline d) -> absl::Status {
        // State every connection must carry, set before any call can see the connection.
        absl::Status s = c.Command(d, "CLIENT", "SETNAME", "hooked").status();
        if (s.ok()) s = c.Command(d, "CLIENT", "TRACKING", "on").status();
        counts.connects.fetch_add(1);
        return s;
      },
      .on_lost = [&counts] { counts.lost.fetch_add(1); },
  };
  return o;
}

}  // namespace

TEST_CASE(
    "redis connection hooks: on_connect runs on each new multiplexed connection, on_lost "
    "when it is killed, and again on the replacement",
    "[redis]") {
  keel::test::RedisServer server;
  auto admin = Client::Create(Options::FromUrl(server.url()).value()).value();
  Counts counts;
  auto client =
      Client::Create(Hooked(server.url(), counts, keel::redis::Transport::kMultiplexed)).value();
  CHECK(counts.connects == 0);  // no I/O before the first call
  REQUIRE(client->Command(Deadline::After(1s), "PING").ok());
  CHECK(counts.connects == 1);
  // The first call already ran on the hooked connection: its name and tracking are in force.
  auto info = client->Command(Deadline::After(1s), "CLIENT", "INFO");
  REQUIRE(info.ok());
  CHECK_THAT(info->str(), Catch::Contains("name=hooked") && Catch::Contains("flags=t"));

  const std::vector<std::string> ids = IdsNamed(*admin, "hooked");
  REQUIRE(ids.size() == 1);
  REQUIRE(admin->Command(Deadline::After(1s), "CLIENT", "KILL", "ID", ids[0]).ok());
  REQUIRE(keel::test::PollUntil([&] { return counts.lost.load() == 1; }, 5s));
  // The transport reconnects by itself, through the hook.
  REQUIRE(keel::test::PollUntil([&] { return counts.connects.load() == 2; }, 5s));
  auto again = client->Command(Deadline::After(1s), "CLIENT", "INFO");
  REQUIRE(again.ok());
  CHECK_THAT(again->str(), Catch::Contains("name=hooked") && Catch::Contains("flags=t"));

  // Reconnect replaces the connection on demand, through the hook again.
  client->Reconnect("test asked");
  REQUIRE(keel::test::PollUntil([&] { return counts.lost.load() == 2; }, 5s));
  REQUIRE(keel::test::PollUntil([&] { return counts.connects.load() == 3; }, 5s));
  REQUIRE(client->Command(Deadline::After(1s), "PING").ok());
  CHECK(IdsNamed(*admin, "hooked").size() == 1);
  // Shutdown is not a loss.
  client->Shutdown();
  CHECK(counts.lost == 2);
}

TEST_CASE(
    "redis connection hooks: a pooled connection set up by on_connect stays clean and is "
    "reused, and Reconnect retires it",
    "[redis]") {
  keel::test::RedisServer server;
  Counts counts;
  auto o = Hooked(server.url(), counts, keel::redis::Transport::kPooled);
  o.pool.max_size = 1;
  auto client = Client::Create(o).value();
  for (int i = 0; i < 5; ++i) REQUIRE(client->Command(Deadline::After(1s), "PING").ok());
  // CLIENT TRACKING from the hook is configuration, not a caller's session change: the
  // connection is not closed as dirty after each call.
  CHECK(client->Stats().dirty_connections_closed_total == 0);
  CHECK(counts.connects == 1);
  client->Reconnect("test asked");
  REQUIRE(client->Command(Deadline::After(1s), "PING").ok());
  CHECK(counts.connects == 2);
}

TEST_CASE(
    "redis connection hooks: a failing on_connect fails the call with UNAVAILABLE naming "
    "the hook, and backs off",
    "[redis]") {
  keel::test::RedisServer server;
  auto o = Options::FromUrl(server.url()).value();
  std::atomic<int> calls{0};
  o.connection_hooks.on_connect = [&calls](Connection&, Deadline) -> absl::Status {
    if (calls.fetch_add(1) == 0) return absl::PermissionDeniedError("not today");
    throw std::runtime_error("boom");
  };
  for (auto transport : {keel::redis::Transport::kMultiplexed, keel::redis::Transport::kPooled}) {
    calls = 0;
    o.transport = transport;
    // No connection opened in the background (the pooled transport keeps idle ones by default):
    // the call's own connect must be the hook's first run.
    o.pool.min_idle = 0;
    auto client = Client::Create(o).value();
    auto r = client->Command(Deadline::After(1s), "PING");
    CHECK(r.status().code() == absl::StatusCode::kUnavailable);
    CHECK_THAT(MessageOf(r.status()),
               Catch::Contains("connection_hooks.on_connect") && Catch::Contains("not today"));
    CHECK(client->Stats().connect_failures_total >= 1);
    // A throw is a failure too, never an exception out of keel.
    REQUIRE(keel::test::PollUntil(
        [&] {
          auto again = client->Command(Deadline::After(1s), "PING");
          return !again.ok() && MessageOf(again.status()).find("boom") != std::string::npos;
        },
        5s));
  }
}
