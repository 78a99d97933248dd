// Server-free tests of what redis::Client decides before any I/O: refused commands and pipelines,
// option validation. The client points at a port nobody listens on and its pool has no
// background maintenance, so nothing here touches the network.
#include "keel/redis/client.h"

#include <catch2/catch.hpp>
#include <string>
#include <string_view>
#include <vector>

using keel::Deadline;
using keel::ManualClock;
using keel::redis::Client;
using keel::redis::Options;
using keel::redis::Pipeline;
using namespace std::chrono_literals;

namespace {

Options Offline() {
  Options o;
  o.server.port = 1;  // never connected to: every call here is refused first
  o.pool.background_maintenance = false;
  o.pool.min_idle = 0;
  return o;
}

std::string MessageOf(const absl::Status& s) { return std::string(s.message()); }

}  // namespace

TEST_CASE("redis client refuses connection-state commands on pooled calls, any case") {
  ManualClock clock;
  auto client = std::move(Client::Create(Offline(), clock).value());
  const std::vector<std::vector<std::string_view>> refused = {
      {"MULTI"},
      {"exec"},
      {"Discard"},
      {"WATCH", "k"},
      {"unwatch"},
      {"SUBSCRIBE", "c"},
      {"psubscribe", "p*"},
      {"SSubscribe", "c"},
      {"MONITOR"},
      {"select", "1"},
      {"HELLO", "3"},
      {"reset"},
      {"AUTH", "pw"},
      {"QUIT"},
      {"client", "reply", "off"},
      {"CLIENT", "REPLY", "SKIP"},
      {"client", "tracking", "on"},
      {"CLIENT", "TRACKING", "off"},
  };
  for (const auto& argv : refused) {
    INFO(argv[0]);
    auto r = client->CommandArgv(Deadline::After(1s, clock), argv);
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK_THAT(MessageOf(r.status()), Catch::StartsWith("redis \"redis\": "));
    CHECK_THAT(MessageOf(r.status()), Catch::Contains("not allowed on a pooled call"));
  }
  CHECK_THAT(MessageOf(client->Command(Deadline::After(1s, clock), "multi").status()),
             Catch::Contains("MULTI") && Catch::Contains("Client::Transaction"));
  CHECK_THAT(MessageOf(client->Command(Deadline::After(1s, clock), "subscribe", "c").status()),
             Catch::Contains("Subscriber"));
  CHECK_THAT(MessageOf(client->Command(Deadline::After(1s, clock), "SELECT", 2).status()),
             Catch::Contains("Options::db"));
  CHECK_THAT(
      MessageOf(client->Command(Deadline::After(1s, clock), "CLIENT", "REPLY", "OFF").status()),
      Catch::Contains("CLIENT REPLY"));
  CHECK_THAT(
      MessageOf(client->Command(Deadline::After(1s, clock), "CLIENT", "TRACKING", "on", "BCAST")
                    .status()),
      Catch::Contains("CLIENT TRACKING") && Catch::Contains("connection_hooks"));
  // Nothing was refused by I/O: no connection was ever attempted.
  const auto stats = client->Stats();
  CHECK(stats.commands_refused_total == refused.size() + 5);
  CHECK(stats.connect_attempts_total == 0);
}

TEST_CASE("redis client lets ordinary commands that look like state commands through") {
  // CLIENT without REPLY, and names that only share a prefix, are not refused: they reach the
  // pool (and fail there, since nothing listens on the port).
  ManualClock clock;
  auto client = std::move(Client::Create(Offline(), clock).value());
  for (std::vector<std::string_view> argv : std::vector<std::vector<std::string_view>>{
           {"CLIENT", "ID"}, {"MULTIX"}, {"EXECUTE"}, {"SELECTED"}, {"GET", "MULTI"}}) {
    INFO(argv[0]);
    auto r = client->CommandArgv(Deadline::After(1s, clock), argv);
    CHECK(r.status().code() == absl::StatusCode::kUnavailable);
  }
  CHECK(client->Stats().commands_refused_total == 0);
}

TEST_CASE("redis client fails an empty command at once, alone or in a pipeline") {
  ManualClock clock;
  auto client = std::move(Client::Create(Offline(), clock).value());
  auto r = client->CommandArgv(Deadline::Infinite(), {});
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(MessageOf(r.status()), Catch::Contains("empty command"));

  Pipeline p;
  p.Add("SET", "a", 1).AddArgv({}).Add("GET", "a");
  CHECK(p.size() == 3);
  CHECK(p.Validate().code() == absl::StatusCode::kInvalidArgument);
  auto run = client->Run(Deadline::Infinite(), p);
  CHECK(run.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(MessageOf(run.status()), Catch::Contains("command #1 has no arguments"));
  CHECK(client->Transaction(Deadline::Infinite(), p).status().code() ==
        absl::StatusCode::kInvalidArgument);
  p.Clear();
  CHECK(p.Validate().ok());
  CHECK(client->Stats().connect_attempts_total == 0);
}

TEST_CASE("redis client refuses pipelines and transactions holding a state command") {
  ManualClock clock;
  auto client = std::move(Client::Create(Offline(), clock).value());
  Pipeline p;
  p.Add("INCR", "a").Add("Multi").Add("INCR", "b").Add("EXEC");
  auto run = client->Run(Deadline::After(1s, clock), p);
  CHECK(run.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(MessageOf(run.status()), Catch::Contains("pipeline command #1 MULTI"));
  auto tx = client->Transaction(Deadline::After(1s, clock), p);
  CHECK(tx.status().code() == absl::StatusCode::kInvalidArgument);

  Pipeline q;
  q.Add("GET", "a");
  q.Append(p);
  CHECK_THAT(MessageOf(client->Run(Deadline::After(1s, clock), q).status()),
             Catch::Contains("command #1 MULTI"));
  // An empty transaction does nothing.
  auto empty = client->Transaction(Deadline::After(1s, clock), Pipeline());
  REQUIRE(empty.ok());
  CHECK(empty->empty());
  CHECK(client->Stats().connect_attempts_total == 0);
}

TEST_CASE("redis client Create names a bad late_reply_timeout or reconnect_backoff") {
  Options o = Offline();
  o.late_reply_timeout = 0ms;
  auto bad = Client::Create(o);
  REQUIRE_FALSE(bad.ok());
  CHECK_THAT(MessageOf(bad.status()), Catch::Contains("redis.late_reply_timeout"));
  o = Offline();
  o.reconnect_backoff.base = 1s;
  o.reconnect_backoff.cap = 10ms;
  bad = Client::Create(o);
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(MessageOf(bad.status()), Catch::Contains("redis.reconnect_backoff"));
}

TEST_CASE("redis client registers its counters under its name, mirroring Stats") {
  ManualClock clock;
  keel::MetricsRegistry registry;
  Options o = Offline();
  o.pool.name = "cache";
  auto client = std::move(Client::Create(o, clock, &registry).value());
  CHECK(client->Command(Deadline::After(1s, clock), "MULTI").status().code() ==
        absl::StatusCode::kInvalidArgument);
  const std::string text = registry.RenderPrometheus();
  CHECK_THAT(text, Catch::Contains("keel_redis_client_commands_refused_total{name=\"cache\"} 1"));
  for (const char* family :
       {"keel_redis_client_connect_attempts_total", "keel_redis_client_connect_failures_total",
        "keel_redis_client_connects_delayed_total", "keel_redis_client_late_replies_drained_total",
        "keel_redis_client_late_connections_closed_total",
        "keel_redis_client_dirty_connections_closed_total",
        "keel_redis_client_connections_retired_total",
        "keel_redis_client_primary_discoveries_total"}) {
    CHECK_THAT(text, Catch::Contains(std::string(family) + "{name=\"cache\"} 0"));
  }
  // A second client of the same name in the same registry is refused, naming the series.
  auto twin = Client::Create(o, clock, &registry);
  CHECK_FALSE(twin.ok());
}
