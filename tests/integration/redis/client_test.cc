// Client over the pool against real servers.
#include "keel/redis/client.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <string>

#include "integration/redis/test_server.h"
#include "keel/redis/script.h"
#include "keel/status.h"
#include "support/subprocess.h"

using keel::Deadline;
using keel::redis::Client;
using keel::redis::Options;
using keel::redis::Reply;
using namespace std::chrono_literals;

namespace {

std::unique_ptr<Client> MakeClient(
    const std::string& url, int max_size = 4, keel::Duration validation_bypass = 500ms,
    keel::redis::Transport transport = keel::redis::Transport::kMultiplexed) {
  auto o = Options::FromUrl(url);
  REQUIRE(o.ok());
  o->transport = transport;
  o->pool.max_size = max_size;
  o->pool.validation_bypass = validation_bypass;
  auto c = Client::Create(*o);
  REQUIRE(c.ok());
  return std::move(*c);
}

}  // namespace

TEST_CASE("client: commands, pipelines and scripts run on pooled connections") {
  auto client = MakeClient(keel::test::RequireEnv("KEEL_TEST_REDIS_URL"));
  const std::string key = "keel:test:client:n";
  REQUIRE(client->Command(Deadline::After(1s), "SET", key, 0).ok());
  for (int i = 0; i < 20; ++i) REQUIRE(client->Command(Deadline::After(1s), "INCR", key).ok());
  CHECK(client->Command(Deadline::After(1s), "GET", key)->str() == "20");

  keel::redis::Pipeline p;
  p.Add("INCRBY", key, 5).Add("GET", key);
  auto r = client->Run(Deadline::After(1s), p);
  REQUIRE(r.ok());
  CHECK(*(*r)[0] == Reply::Integer(25));
  CHECK((*r)[1]->str() == "25");

  const keel::redis::Script add("return redis.call('INCRBY', KEYS[1], ARGV[1])");
  CHECK(add.Run(*client, Deadline::After(1s), {key}, {10})->integer() == 35);

  auto stats = client->Stats();
  CHECK(stats.pool.in_use == 0);
  CHECK(stats.pool.max_size == 4);
}

TEST_CASE("client: an infinite deadline is bounded by command_timeout") {
  keel::test::RedisServer server({"--enable-debug-command", "yes"});
  auto o = Options::FromUrl(server.url());
  o->command_timeout = 100ms;
  auto client = std::move(Client::Create(*o).value());
  const auto start = std::chrono::steady_clock::now();
  auto r = client->Command(Deadline::Infinite(), "DEBUG", "SLEEP", "1");
  CHECK(r.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(std::chrono::steady_clock::now() - start < 200ms);
}

TEST_CASE("client: creation succeeds while Redis is down and calls fail fast with UNAVAILABLE") {
  auto client = MakeClient("redis://127.0.0.1:" + std::to_string(keel::test::FreeLoopbackPort()));
  const auto start = std::chrono::steady_clock::now();
  auto r = client->Command(Deadline::After(2s), "PING");
  CHECK(r.status().code() == absl::StatusCode::kUnavailable);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("cannot connect"));
  CHECK(std::chrono::steady_clock::now() - start < 200ms);
}

TEST_CASE("client: a lost connection retires every older connection, not just itself") {
  keel::test::RedisServer server;
  // No validation on lease (it would hide the dead sockets this test is about). Pooled: the
  // first call must run on one of the pool's dead connections.
  auto client =
      MakeClient(server.url(), 4, std::chrono::minutes(1), keel::redis::Transport::kPooled);
  // Lease all four so the pool holds four connections, then return them.
  {
    std::vector<keel::Lease<keel::redis::Connection>> leases;
    for (int i = 0; i < 4; ++i)
      leases.push_back(std::move(client->Acquire(Deadline::After(1s)).value()));
  }
  server.Kill();
  REQUIRE(server.Start());
  // The first call trips over a dead socket. Leasing all four connections at once then forces
  // the pool to hand out the three older ones, which must be replaced rather than fail.
  auto first = client->Command(Deadline::After(1s), "PING");
  CHECK(first.status().code() == absl::StatusCode::kUnavailable);
  std::vector<keel::Lease<keel::redis::Connection>> leases;
  for (int i = 0; i < 4; ++i) {
    leases.push_back(std::move(client->Acquire(Deadline::After(1s)).value()));
  }
  for (auto& lease : leases) CHECK(lease->Command(Deadline::After(1s), "PING").ok());
  CHECK(client->Stats().connections_retired_total == 3);
}

TEST_CASE("client: Create names the bad option") {
  Options o;
  o.pool.max_size = 0;
  auto c = Client::Create(o);
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(c.status().message()), Catch::Contains("max_size"));
  o = Options{};
  o.db = -1;
  CHECK_THAT(std::string(Client::Create(o).status().message()), Catch::Contains("redis.db"));
}

TEST_CASE("client: a READONLY reply from a replica is UNAVAILABLE with the server's message") {
  keel::test::RedisServer primary;
  keel::test::RedisServer replica({"--replicaof", "127.0.0.1", std::to_string(primary.port())});
  auto client = MakeClient(replica.url());
  auto r = client->Command(Deadline::After(1s), "SET", "k", "v");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kUnavailable);
  CHECK(keel::redis::IsServerError(r.status(), "READONLY"));
  CHECK(keel::IsRetryable(r.status()));
  CHECK(client->Command(Deadline::After(1s), "GET", "k").ok());  // reads still work
}

TEST_CASE("client: pool metrics are registered under the pool's name") {
  keel::MetricsRegistry registry;
  auto o = Options::FromUrl(keel::test::RequireEnv("KEEL_TEST_REDIS_URL"));
  o->pool.name = "redis-main";
  auto client = std::move(Client::Create(*o, keel::SteadyClock(), &registry).value());
  REQUIRE(client->Command(Deadline::After(1s), "PING").ok());
  const std::string text = registry.RenderPrometheus();
  CHECK_THAT(text, Catch::Contains("keel_pool_acquired_total{name=\"redis-main\"}"));
}

TEST_CASE("client: the deadline also bounds waiting for a connection from a full pool") {
  // Pooled: on the multiplexed transport a plain command needs no pooled connection.
  auto client = MakeClient(keel::test::RequireEnv("KEEL_TEST_REDIS_URL"), 1, 500ms,
                           keel::redis::Transport::kPooled);
  auto held = client->Acquire(Deadline::After(1s));
  REQUIRE(held.ok());
  const auto start = std::chrono::steady_clock::now();
  auto r = client->Command(Deadline::After(100ms), "PING");
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(r.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("pool \"redis\""));
  CHECK(took >= 95ms);
  CHECK(took < 150ms);
}

TEST_CASE("client: after Shutdown calls fail with FAILED_PRECONDITION") {
  auto client = MakeClient(keel::test::RequireEnv("KEEL_TEST_REDIS_URL"));
  REQUIRE(client->Command(Deadline::After(1s), "PING").ok());
  client->Shutdown();
  CHECK(client->Command(Deadline::After(1s), "PING").status().code() ==
        absl::StatusCode::kFailedPrecondition);
}
