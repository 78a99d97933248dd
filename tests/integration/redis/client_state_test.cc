// redis::Client against real servers: connections go back to the pool only in a clean state,
// transactions, and the reconnect backoff.
#include <catch2/catch.hpp>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>

#include "integration/redis/test_server.h"
#include "keel/redis/client.h"
#include "keel/redis/connection.h"
#include "support/subprocess.h"

using keel::Deadline;
using keel::redis::Client;
using keel::redis::Options;
using keel::redis::Pipeline;
using keel::redis::Reply;
using namespace std::chrono_literals;

namespace {

// One connection, so every call after a lease is returned would get that same connection back.
// Pooled transport: these tests are about what the next pooled caller inherits (on the
// multiplexed transport plain calls never share a leased connection).
std::unique_ptr<Client> OneConnectionClient(const std::string& url) {
  auto o = Options::FromUrl(url);
  REQUIRE(o.ok());
  o->transport = keel::redis::Transport::kPooled;
  o->pool.max_size = 1;
  o->pool.validation_bypass = std::chrono::minutes(1);  // handouts skip the PING
  auto c = Client::Create(*o);
  REQUIRE(c.ok());
  return std::move(*c);
}

std::string SharedUrl() { return keel::test::RequireEnv("KEEL_TEST_REDIS_URL"); }

}  // namespace

TEST_CASE("client: a lease returned inside MULTI is closed: the next caller's SET is not QUEUED") {
  auto client = OneConnectionClient(SharedUrl());
  const std::string key = "keel:test:state:multi";
  REQUIRE(client->Command(Deadline::After(1s), "DEL", key).ok());
  {
    auto lease = client->Acquire(Deadline::After(1s));
    REQUIRE(lease.ok());
    REQUIRE((*lease)->Command(Deadline::After(1s), "MULTI").ok());
  }
  auto set = client->Command(Deadline::After(1s), "SET", key, "v");
  REQUIRE(set.ok());
  CHECK(set->str() == "OK");
  CHECK(client->Command(Deadline::After(1s), "GET", key)->str() == "v");
  CHECK(client->Stats().dirty_connections_closed_total == 1);
}

TEST_CASE("client: a lease returned after SUBSCRIBE or SELECT is closed, the next GET works") {
  auto client = OneConnectionClient(SharedUrl());
  const std::string key = "keel:test:state:db0";
  REQUIRE(client->Command(Deadline::After(1s), "SET", key, "zero").ok());
  {
    auto lease = client->Acquire(Deadline::After(1s));
    REQUIRE(lease.ok());
    static constexpr std::string_view kSubscribe[] = {"SUBSCRIBE", "keel:test:state:chan"};
    REQUIRE((*lease)->Send(Deadline::After(1s), kSubscribe).ok());
  }
  CHECK(client->Command(Deadline::After(1s), "GET", key)->str() == "zero");
  {
    auto lease = client->Acquire(Deadline::After(1s));
    REQUIRE(lease.ok());
    REQUIRE((*lease)->Command(Deadline::After(1s), "select", 3).ok());
  }
  CHECK(client->Command(Deadline::After(1s), "GET", key)->str() == "zero");  // still db 0
  CHECK(client->Stats().dirty_connections_closed_total == 2);
}

TEST_CASE("client: a lease returned after EXEC or UNWATCH is kept") {
  auto client = OneConnectionClient(SharedUrl());
  {
    auto lease = client->Acquire(Deadline::After(1s));
    REQUIRE(lease.ok());
    REQUIRE((*lease)->Command(Deadline::After(1s), "WATCH", "k").ok());
    REQUIRE((*lease)->Command(Deadline::After(1s), "MULTI").ok());
    REQUIRE((*lease)->Command(Deadline::After(1s), "EXEC").ok());
  }
  CHECK(client->Command(Deadline::After(1s), "PING").ok());
  const auto stats = client->Stats();
  CHECK(stats.dirty_connections_closed_total == 0);
  CHECK(stats.pool.created_total == 1);
}

TEST_CASE("client: a broken connection returned through Acquire is not handed out again") {
  auto client = OneConnectionClient(SharedUrl());
  int64_t id = 0;
  {
    auto lease = client->Acquire(Deadline::After(1s));
    REQUIRE(lease.ok());
    id = (*lease)->Command(Deadline::After(1s), "CLIENT", "ID")->integer();
    // Kill it from another connection, then let the lease's next call find out.
    auto o = Options::FromUrl(SharedUrl());
    auto killer = keel::redis::Connection::Connect(o->server, *o, Deadline::After(1s));
    REQUIRE(killer.ok());
    REQUIRE((*killer)->Command(Deadline::After(1s), "CLIENT", "KILL", "ID", id).ok());
    auto r = (*lease)->Command(Deadline::After(1s), "PING");
    CHECK(r.status().code() == absl::StatusCode::kUnavailable);
    REQUIRE((*lease)->broken());
    // Returned without Invalidate(), as careless code would.
  }
  auto r = client->Command(Deadline::After(1s), "CLIENT", "ID");
  REQUIRE(r.ok());
  CHECK(r->integer() != id);
  CHECK(client->Stats().pool.validation_failures_total == 1);
}

TEST_CASE("client: Transaction runs MULTI ... EXEC and returns each command's result") {
  auto client = OneConnectionClient(SharedUrl());
  const std::string key = "keel:test:tx:n";
  REQUIRE(client->Command(Deadline::After(1s), "SET", key, 10).ok());
  Pipeline p;
  p.Add("INCRBY", key, 5).Add("HSET", key, "f", "v").Add("GET", key);
  auto r = client->Transaction(Deadline::After(1s), p);
  REQUIRE(r.ok());
  REQUIRE(r->size() == 3);
  CHECK(*(*r)[0] == Reply::Integer(15));
  CHECK_FALSE((*r)[1].ok());  // WRONGTYPE at run time fails only its own entry
  CHECK((*r)[2]->str() == "15");

  // A command Redis refuses while queueing discards the whole transaction: nothing ran.
  Pipeline bad;
  bad.Add("INCR", key).Add("GET");
  auto aborted = client->Transaction(Deadline::After(1s), bad);
  CHECK(aborted.status().code() == absl::StatusCode::kAborted);
  CHECK_THAT(std::string(aborted.status().message()), Catch::Contains("command #1"));
  CHECK(client->Command(Deadline::After(1s), "GET", key)->str() == "15");
  CHECK(client->Stats().dirty_connections_closed_total == 0);
}

TEST_CASE("client: Transaction with WATCH aborts when a watched key changed, else commits") {
  auto client = OneConnectionClient(SharedUrl());
  const std::string key = "keel:test:tx:watched";
  REQUIRE(client->Command(Deadline::After(1s), "SET", key, 1).ok());
  const std::string_view watch[] = {key};
  auto o = Options::FromUrl(SharedUrl());
  auto other = keel::redis::Connection::Connect(o->server, *o, Deadline::After(1s));
  REQUIRE(other.ok());

  auto double_it = [&](bool interfere) {
    return client->Transaction(
        Deadline::After(1s), watch,
        [&](const Client::TransactionReader& read) -> absl::StatusOr<Pipeline> {
          auto v = read.Command("GET", key);
          if (!v.ok()) return v.status();
          if (interfere) (void)(*other)->Command(Deadline::After(1s), "INCR", key);
          Pipeline p;
          p.Add("SET", key, std::stoll(v->str()) * 2);
          return p;
        });
  };
  auto conflict = double_it(true);
  CHECK(conflict.status().code() == absl::StatusCode::kAborted);
  CHECK(client->Command(Deadline::After(1s), "GET", key)->str() == "2");  // only the INCR
  auto done = double_it(false);
  REQUIRE(done.ok());
  CHECK(client->Command(Deadline::After(1s), "GET", key)->str() == "4");

  // The reader refuses state commands like any pooled call.
  auto refused =
      client->Transaction(Deadline::After(1s), watch,
                          [&](const Client::TransactionReader& read) -> absl::StatusOr<Pipeline> {
                            auto r = read.Command("MULTI");
                            CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
                            return r.status();
                          });
  CHECK(refused.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(client->Stats().dirty_connections_closed_total == 0);  // UNWATCHed on the way out
}

TEST_CASE("client: a Transaction prepare that throws is INTERNAL and leaves the client usable") {
  auto client = OneConnectionClient(SharedUrl());
  const std::string_view watch[] = {"keel:test:tx:throw"};
  auto r = client->Transaction(Deadline::After(1s), watch,
                               [](const Client::TransactionReader&) -> absl::StatusOr<Pipeline> {
                                 throw std::runtime_error("boom");
                               });
  CHECK(r.status().code() == absl::StatusCode::kInternal);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("boom"));
  CHECK(client->Command(Deadline::After(1s), "PING").ok());
  CHECK(client->Stats().dirty_connections_closed_total == 0);
}

TEST_CASE("client: failed connects back off instead of reconnecting on every call") {
  keel::ManualClock clock;
  auto o = Options::FromUrl("redis://127.0.0.1:" + std::to_string(keel::test::FreeLoopbackPort()));
  o->pool.background_maintenance = false;
  o->pool.min_idle = 0;
  o->reconnect_backoff = {.kind = keel::Backoff::Kind::kExponential, .base = 100ms, .cap = 400ms};
  auto client = std::move(Client::Create(*o, clock).value());
  auto call = [&] { return client->Command(Deadline::After(1s, clock), "PING").status(); };

  const absl::Status first = call();
  CHECK(first.code() == absl::StatusCode::kUnavailable);
  for (int i = 0; i < 50; ++i) {
    const absl::Status s = call();
    CHECK(s.code() == absl::StatusCode::kUnavailable);
    CHECK_THAT(std::string(s.message()), Catch::Contains("not reconnecting for another 100ms") &&
                                             Catch::Contains("cannot connect"));
  }
  auto stats = client->Stats();
  CHECK(stats.connect_attempts_total == 1);
  CHECK(stats.connects_delayed_total == 50);

  // Each failure doubles the wait, up to the cap: attempts at +100ms, +300ms, +700ms, +1100ms.
  clock.Advance(100ms);
  CHECK(call().code() == absl::StatusCode::kUnavailable);
  CHECK(client->Stats().connect_attempts_total == 2);
  clock.Advance(199ms);
  CHECK(call().code() == absl::StatusCode::kUnavailable);
  CHECK(client->Stats().connect_attempts_total == 2);
  clock.Advance(1ms);
  CHECK(call().code() == absl::StatusCode::kUnavailable);
  CHECK(client->Stats().connect_attempts_total == 3);
  clock.Advance(400ms);
  CHECK(call().code() == absl::StatusCode::kUnavailable);
  CHECK(client->Stats().connect_attempts_total == 4);
  clock.Advance(400ms);
  CHECK(call().code() == absl::StatusCode::kUnavailable);
  CHECK(client->Stats().connect_attempts_total == 5);
  CHECK(client->Stats().connect_failures_total == 5);
}

TEST_CASE("client: no error message carries the password of the URL") {
  const std::string secret = "s3cr3t-Pa55";
  // Connect error (nothing listens).
  {
    auto o = Options::FromUrl("redis://app:" + secret +
                              "@127.0.0.1:" + std::to_string(keel::test::FreeLoopbackPort()));
    REQUIRE(o.ok());
    auto client = std::move(Client::Create(*o).value());
    auto r = client->Command(Deadline::After(1s), "PING");
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(std::string(r.status().ToString()), !Catch::Contains(secret));
  }
  // AUTH rejected.
  {
    keel::test::RedisServer server({"--requirepass", "right"});
    auto o = Options::FromUrl("redis://:" + secret + "@127.0.0.1:" + std::to_string(server.port()));
    REQUIRE(o.ok());
    auto client = std::move(Client::Create(*o).value());
    auto r = client->Command(Deadline::After(1s), "PING");
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kUnavailable);  // the pool's create failure
    CHECK_THAT(std::string(r.status().message()), Catch::Contains("AUTH failed"));
    CHECK_THAT(std::string(r.status().ToString()), !Catch::Contains(secret));
  }
  // Sentinel errors (no sentinel answers).
  {
    auto o = Options::FromUrl("redis+sentinel://app:" + secret + "@127.0.0.1:" +
                              std::to_string(keel::test::FreeLoopbackPort()) + "/mymaster");
    REQUIRE(o.ok());
    auto client = std::move(Client::Create(*o).value());
    auto r = client->Command(Deadline::After(1s), "PING");
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(std::string(r.status().message()), Catch::Contains("sentinel"));
    CHECK_THAT(std::string(r.status().ToString()), !Catch::Contains(secret));
  }
}

TEST_CASE("client: a connection still owing a late reply after late_reply_timeout is replaced") {
  keel::test::RedisServer server({"--enable-debug-command", "yes"});
  keel::ManualClock clock;
  auto o = Options::FromUrl(server.url());
  // Pooled: the next call on the same connection drains the late reply (the multiplexed
  // counterpart is in mux_test.cc).
  o->transport = keel::redis::Transport::kPooled;
  o->pool.max_size = 1;
  o->pool.background_maintenance = false;
  o->pool.validation_bypass = std::chrono::hours(1);
  o->late_reply_timeout = 5s;
  auto client = std::move(Client::Create(*o, clock).value());
  // The manual clock does not move by itself: the socket timeout still ends the wait in 50 ms.
  auto slow = client->Command(Deadline::After(50ms, clock), "DEBUG", "SLEEP", "0.3");
  CHECK(slow.status().code() == absl::StatusCode::kDeadlineExceeded);
  clock.Advance(4s);  // behind for 4 s: kept, and the next call drains the late reply
  std::this_thread::sleep_for(400ms);
  auto echo = client->Command(Deadline::After(1s, clock), "ECHO", "kept");
  REQUIRE(echo.ok());
  CHECK(echo->str() == "kept");
  CHECK(client->Stats().late_replies_drained_total == 1);
  CHECK(client->Stats().pool.created_total == 1);

  slow = client->Command(Deadline::After(50ms, clock), "DEBUG", "SLEEP", "0.3");
  CHECK(slow.status().code() == absl::StatusCode::kDeadlineExceeded);
  clock.Advance(5s);  // behind for late_reply_timeout: replaced, not drained
  auto fresh = client->Command(Deadline::After(1s, clock), "ECHO", "fresh");
  REQUIRE(fresh.ok());
  CHECK(fresh->str() == "fresh");
  const auto stats = client->Stats();
  CHECK(stats.late_connections_closed_total == 1);
  CHECK(stats.pool.created_total == 2);
}
