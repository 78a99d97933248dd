// One Connection against real servers: the shared test server for harmless commands, servers of
// the test's own for anything that kills, pauses or reconfigures.
#include "keel/redis/connection.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "integration/redis/test_server.h"
#include "keel/redis/script.h"
#include "support/subprocess.h"

using keel::Deadline;
using keel::redis::Connection;
using keel::redis::Options;
using keel::redis::Reply;
using namespace std::chrono_literals;

namespace {

Options SharedOptions() {
  auto o = Options::FromUrl(keel::test::RequireEnv("KEEL_TEST_REDIS_URL"));
  REQUIRE(o.ok());
  return *o;
}

std::unique_ptr<Connection> Connect(const Options& o) {
  auto c = Connection::Connect(o.server, o, Deadline::After(2s));
  REQUIRE(c.ok());
  return std::move(*c);
}

Options OwnOptions(const keel::test::RedisServer& server) {
  return *Options::FromUrl(server.url());
}

}  // namespace

TEST_CASE("connection: values are binary-safe and replies are typed") {
  auto c = Connect(SharedOptions());
  const std::string key = "keel:test:conn:bin";
  const std::string value("a\0b\r\n%s $3\r\n", 13);
  CHECK(c->Command(Deadline::After(1s), "SET", key, value)->is_status());
  auto got = c->Command(Deadline::After(1s), "GET", key);
  REQUIRE(got.ok());
  CHECK(got->is_string());
  CHECK(got->str() == value);
  CHECK(c->Command(Deadline::After(1s), "GET", "keel:test:conn:absent")->is_nil());
  CHECK(c->Command(Deadline::After(1s), "DEL", "keel:test:conn:list").ok());
  CHECK(c->Command(Deadline::After(1s), "RPUSH", "keel:test:conn:list", 1, "two")->integer() == 2);
  auto list = c->Command(Deadline::After(1s), "LRANGE", "keel:test:conn:list", 0, -1);
  REQUIRE(list.ok());
  CHECK(*list == Reply::Array({Reply::String("1"), Reply::String("two")}));
  CHECK_FALSE(c->broken());
}

TEST_CASE("connection: a server error reply becomes a Status and the connection stays usable") {
  auto c = Connect(SharedOptions());
  const std::string key = "keel:test:conn:wrongtype";
  REQUIRE(c->Command(Deadline::After(1s), "SET", key, "x").ok());
  auto r = c->Command(Deadline::After(1s), "LPUSH", key, "y");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("WRONGTYPE"));
  CHECK_FALSE(c->broken());
  CHECK(c->Command(Deadline::After(1s), "PING")->str() == "PONG");
}

TEST_CASE("connection: a pipeline returns one result per command in order, errors per entry") {
  auto c = Connect(SharedOptions());
  keel::redis::Pipeline p;
  p.Add("DEL", "keel:test:conn:pipe");
  for (int i = 0; i < 100; ++i) p.Add("INCR", "keel:test:conn:pipe");
  p.Add("HGET", "keel:test:conn:pipe", "f");  // wrong type: fails only this entry
  p.Add("GET", "keel:test:conn:pipe");
  auto results = c->Run(Deadline::After(2s), p);
  REQUIRE(results.ok());
  REQUIRE(results->size() == 103);
  for (int i = 1; i <= 100; ++i) {
    REQUIRE((*results)[i].ok());
    CHECK((*results)[i]->integer() == i);
  }
  CHECK((*results)[101].status().code() == absl::StatusCode::kInvalidArgument);
  CHECK((*results)[102]->str() == "100");
  CHECK(c->Run(Deadline::After(1s), keel::redis::Pipeline())->empty());
}

TEST_CASE("script: runs by SHA-1 and reloads itself after SCRIPT FLUSH") {
  keel::test::RedisServer server;
  auto c = Connect(OwnOptions(server));
  const keel::redis::Script script("return {KEYS[1], ARGV[1], tonumber(ARGV[2]) + 1}");
  auto loaded = c->Command(Deadline::After(1s), "SCRIPT", "LOAD", script.source());
  REQUIRE(loaded.ok());
  CHECK(loaded->str() == script.sha1());
  auto r = script.Run(*c, Deadline::After(1s), {"k"}, {"v", 41});
  REQUIRE(r.ok());
  CHECK(*r == Reply::Array({Reply::String("k"), Reply::String("v"), Reply::Integer(42)}));
  REQUIRE(c->Command(Deadline::After(1s), "SCRIPT", "FLUSH").ok());
  auto again = script.Run(*c, Deadline::After(1s), {"k"}, {"v", 1});
  REQUIRE(again.ok());
  CHECK(again->elements()[2].integer() == 2);
  // ... and the fallback cached it: EVALSHA works directly now.
  CHECK(c->Command(Deadline::After(1s), "EVALSHA", script.sha1(), 1, "k", "v", 2).ok());
}

TEST_CASE("script: RunMany runs a batch in one pipeline and reloads itself after SCRIPT FLUSH") {
  keel::test::RedisServer server;
  auto c = Connect(OwnOptions(server));
  const keel::redis::Script script(
      "if ARGV[1] == 'fail' then return redis.error_reply('FAILED as asked') end "
      "return redis.call('INCR', KEYS[1])");
  const std::string_view a[] = {"a"}, b[] = {"b"};
  const std::string_view go[] = {"go"}, fail[] = {"fail"};
  const keel::redis::Script::Call calls[] = {{a, go}, {b, go}, {a, fail}, {a, go}};
  // A new server does not know the script: every entry is NOSCRIPT at first, then runs once.
  auto first = script.RunMany(*c, Deadline::After(1s), calls);
  REQUIRE(first.ok());
  REQUIRE(first->size() == 4);
  CHECK((*first)[0]->integer() == 1);
  CHECK((*first)[1]->integer() == 1);
  CHECK(keel::redis::ServerError((*first)[2].status()).value_or("") == "FAILED as asked");
  CHECK((*first)[3]->integer() == 2);  // a ran twice in all, not three or four times
  REQUIRE(c->Command(Deadline::After(1s), "SCRIPT", "FLUSH").ok());
  auto again = script.RunMany(*c, Deadline::After(1s), calls);
  REQUIRE(again.ok());
  CHECK((*again)[0]->integer() == 3);
  CHECK((*again)[1]->integer() == 2);
  CHECK_FALSE((*again)[2].ok());
  CHECK((*again)[3]->integer() == 4);
  // Loaded again: a plain EVALSHA works now.
  CHECK(c->Command(Deadline::After(1s), "EVALSHA", script.sha1(), 1, "b", "go")->integer() == 3);
  CHECK(script.RunMany(*c, Deadline::After(1s), {})->empty());
}

TEST_CASE("script: an error raised by the script is a Status with its message") {
  auto c = Connect(SharedOptions());
  const keel::redis::Script script("return redis.error_reply('LIMITED over quota')");
  auto r = script.Run(*c, Deadline::After(1s), {});
  REQUIRE_FALSE(r.ok());
  CHECK(keel::redis::ServerError(r.status()).value_or("") == "LIMITED over quota");
  CHECK_FALSE(c->broken());
}

TEST_CASE("connection: the deadline bounds a slow reply and keeps the connection, owing it") {
  keel::test::RedisServer server({"--enable-debug-command", "yes"});
  auto c = Connect(OwnOptions(server));
  const auto start = std::chrono::steady_clock::now();
  auto r = c->Command(Deadline::After(100ms), "DEBUG", "SLEEP", "0.5");
  const auto took = std::chrono::steady_clock::now() - start;
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("redis \"127.0.0.1:"));
  CHECK(took >= 95ms);
  CHECK(took < 150ms);
  CHECK_FALSE(c->broken());
  CHECK(c->late_replies() == 1);

  // While the server still sleeps, a call cannot drain the late reply in time: it fails by its
  // own deadline and sends nothing (the INCR must not run).
  auto blocked = c->Command(Deadline::After(50ms), "INCR", "keel:test:late");
  CHECK(blocked.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK_THAT(std::string(blocked.status().message()), Catch::Contains("1 late reply"));
  CHECK(c->late_replies() == 1);

  // Once the server answers, the next call drains the late +OK and gets its own reply.
  auto own = c->Command(Deadline::After(2s), "ECHO", "mine");
  REQUIRE(own.ok());
  CHECK(own->str() == "mine");
  CHECK(c->late_replies() == 0);
  CHECK(c->TakeDrainedCount() == 1);
  CHECK(c->Command(Deadline::After(1s), "GET", "keel:test:late")->is_nil());
}

TEST_CASE("connection: a pipeline that times out owes each unread reply, in order") {
  keel::test::RedisServer server({"--enable-debug-command", "yes"});
  auto c = Connect(OwnOptions(server));
  keel::redis::Pipeline p;
  p.Add("DEBUG", "SLEEP", "0.2").Add("ECHO", "a").Add("ECHO", "b");
  auto r = c->Run(Deadline::After(50ms), p);
  CHECK(r.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(c->late_replies() == 3);
  auto own = c->Command(Deadline::After(2s), "ECHO", "c");
  REQUIRE(own.ok());
  CHECK(own->str() == "c");
  CHECK(c->TakeDrainedCount() == 3);
}

TEST_CASE("connection: Receive with an infinite deadline waits command_timeout, never forever") {
  Options o = SharedOptions();
  o.command_timeout = 100ms;
  auto c = Connect(o);
  const auto start = std::chrono::steady_clock::now();
  auto got = c->Receive(Deadline::Infinite());
  const auto took = std::chrono::steady_clock::now() - start;
  REQUIRE(got.ok());
  CHECK_FALSE(got->has_value());
  CHECK(took >= 95ms);
  CHECK(took < 300ms);
  CHECK_FALSE(c->broken());
}

TEST_CASE("connection: an empty command fails at once with INVALID_ARGUMENT") {
  auto c = Connect(SharedOptions());
  const auto start = std::chrono::steady_clock::now();
  CHECK(c->CommandArgv(Deadline::After(5s), {}).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(c->Send(Deadline::After(5s), {}).code() == absl::StatusCode::kInvalidArgument);
  keel::redis::Pipeline p;
  p.Add("PING").AddArgv({});
  auto r = c->Run(Deadline::After(5s), p);
  CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("command #1"));
  CHECK(std::chrono::steady_clock::now() - start < 100ms);
  CHECK(c->Command(Deadline::After(1s), "PING").ok());
}

TEST_CASE("connection: session_clean follows MULTI/EXEC and WATCH, and SELECT is permanent") {
  auto c = Connect(SharedOptions());
  CHECK(c->session_clean());
  REQUIRE(c->Command(Deadline::After(1s), "multi").ok());
  CHECK_FALSE(c->session_clean());
  REQUIRE(c->Command(Deadline::After(1s), "Exec").ok());
  CHECK(c->session_clean());
  REQUIRE(c->Command(Deadline::After(1s), "WATCH", "k").ok());
  CHECK_FALSE(c->session_clean());
  REQUIRE(c->Command(Deadline::After(1s), "UNWATCH").ok());
  CHECK(c->session_clean());
  REQUIRE(c->Command(Deadline::After(1s), "SELECT", 1).ok());
  CHECK_FALSE(c->session_clean());
}

TEST_CASE("connection: an infinite deadline is bounded by command_timeout") {
  keel::test::RedisServer server({"--enable-debug-command", "yes"});
  Options o = OwnOptions(server);
  o.command_timeout = 100ms;
  auto c = Connect(o);
  const auto start = std::chrono::steady_clock::now();
  auto r = c->Command(Deadline::Infinite(), "DEBUG", "SLEEP", "1");
  CHECK(r.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK_THAT(std::string(r.status().message()), Catch::Contains("command_timeout 100ms"));
  CHECK(std::chrono::steady_clock::now() - start < 200ms);
}

TEST_CASE("connection: an expired deadline fails without I/O and keeps the connection") {
  auto c = Connect(SharedOptions());
  auto r = c->Command(Deadline::After(-1ms), "PING");
  CHECK(r.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK_FALSE(c->broken());
  CHECK(c->Command(Deadline::After(1s), "PING").ok());
}

TEST_CASE("connection: refused connections fail fast with UNAVAILABLE") {
  Options o;
  o.server.port = keel::test::FreeLoopbackPort();
  const auto start = std::chrono::steady_clock::now();
  auto c = Connection::Connect(o.server, o, Deadline::After(5s));
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == absl::StatusCode::kUnavailable);
  CHECK_THAT(std::string(c.status().message()), Catch::Contains("cannot connect"));
  CHECK(std::chrono::steady_clock::now() - start < 100ms);
}

TEST_CASE("connection: a killed server gives UNAVAILABLE and a broken connection") {
  keel::test::RedisServer server;
  auto c = Connect(OwnOptions(server));
  REQUIRE(c->Command(Deadline::After(1s), "PING").ok());
  server.Kill();
  auto r = c->Command(Deadline::After(1s), "PING");
  CHECK(r.status().code() == absl::StatusCode::kUnavailable);
  CHECK(c->broken());
  CHECK(c->Command(Deadline::After(1s), "PING").status().code() ==
        absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("connection: AUTH with an ACL user and SELECT run on connect") {
  keel::test::RedisServer server({"--requirepass", "adminpw"});
  {
    Options admin = OwnOptions(server);
    admin.password = "adminpw";
    auto c = Connect(admin);
    REQUIRE(c->Command(Deadline::After(1s), "ACL", "SETUSER", "app", "on", ">app pw", "~*", "+@all")
                .ok());
  }
  auto o =
      Options::FromUrl("redis://app:app%20pw@127.0.0.1:" + std::to_string(server.port()) + "/5");
  REQUIRE(o.ok());
  auto c = Connect(*o);
  CHECK(c->Command(Deadline::After(1s), "ACL", "WHOAMI")->str() == "app");
  CHECK(c->Command(Deadline::After(1s), "CLIENT", "INFO")->str().find(" db=5 ") !=
        std::string::npos);

  o->password = "wrong";
  auto denied = Connection::Connect(o->server, *o, Deadline::After(1s));
  REQUIRE_FALSE(denied.ok());
  CHECK(denied.status().code() == absl::StatusCode::kPermissionDenied);
  CHECK_THAT(std::string(denied.status().message()), Catch::Contains("WRONGPASS"));
}

TEST_CASE("connection: a paused server makes connect fail by the connect timeout") {
  keel::test::RedisServer server({"--requirepass", "pw"});
  Options o = OwnOptions(server);
  o.password = "pw";
  o.connect_timeout = 100ms;
  server.Stop();
  const auto start = std::chrono::steady_clock::now();
  auto c = Connection::Connect(o.server, o, Deadline::After(5s));
  const auto took = std::chrono::steady_clock::now() - start;
  server.Continue();
  REQUIRE_FALSE(c.ok());
  CHECK(c.status().code() == absl::StatusCode::kUnavailable);
  CHECK(took < 200ms);
}
