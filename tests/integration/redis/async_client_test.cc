// Client::AsyncCommand / AsyncRun / Script::AsyncRun on the multiplexed transport: futures that
// complete on the I/O thread with the caller's own reply, coroutines awaiting them, and a
// coroutine chain (limiter, breaker, Redis, PostgreSQL) with no thread per waiting call.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "integration/redis/test_server.h"
#include "keel/async/task.h"
#include "keel/limit/token_bucket.h"
#include "keel/postgres/pool.h"
#include "keel/redis/client.h"
#include "keel/redis/script.h"
#include "keel/resilience/circuit_breaker.h"
#include "keel/sync.h"
#include "support/subprocess.h"

namespace keel::redis {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Client> MakeClient(const std::string& url, Transport transport = {}) {
  auto options = Options::FromUrl(url);
  REQUIRE(options.ok());
  options->transport = transport;
  auto client = Client::Create(*options);
  REQUIRE(client.ok());
  return std::move(*client);
}

TEST_CASE("async commands from one thread each complete with their own reply", "[redis][async]") {
  keel::test::RedisServer server;
  auto client = MakeClient(server.url());
  constexpr int kCalls = 1000;
  std::vector<Future<Reply>> calls;
  for (int i = 0; i < kCalls; ++i) {
    calls.push_back(client->AsyncCommand(Deadline::After(5s), "ECHO", absl::StrCat("v", i)));
  }
  Pipeline p;
  p.Add("SET", "async:k", "1").Add("INCR", "async:k").Add("HGET", "async:k", "f");
  Future<PipelineReplies> batch = client->AsyncRun(Deadline::After(5s), p);
  for (int i = 0; i < kCalls; ++i) {
    absl::StatusOr<Reply> r = calls[i].Get(Deadline::After(5s));
    REQUIRE(r.ok());
    CHECK(r->str() == absl::StrCat("v", i));
  }
  absl::StatusOr<PipelineReplies> replies = batch.Get(Deadline::After(5s));
  REQUIRE(replies.ok());
  CHECK((*replies)[1]->integer() == 2);
  CHECK((*replies)[2].status().code() != absl::StatusCode::kOk);  // WRONGTYPE, its own entry
  CHECK(client->Stats().transport.reconnects_total <= 1);
}

TEST_CASE("async calls refuse what cannot share a connection, and the pooled transport",
          "[redis][async]") {
  keel::test::RedisServer server;
  auto client = MakeClient(server.url());
  CHECK(client->AsyncCommand(Deadline::After(1s), "BLPOP", "q", 1).Get().status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(client->AsyncCommand(Deadline::After(1s), "MULTI").Get().status().code() ==
        absl::StatusCode::kInvalidArgument);
  auto pooled = MakeClient(server.url(), Transport::kPooled);
  CHECK(pooled->AsyncCommand(Deadline::After(1s), "PING").Get().status().code() ==
        absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("the callback form of AsyncCommandArgv completes on the I/O thread, refusals at once",
          "[redis][async]") {
  keel::test::RedisServer server;
  auto client = MakeClient(server.url());
  struct Seen {
    keel::Mutex mu;
    keel::CondVar cv;
    bool done = false;
    bool on_io_thread = false;
    std::string reply;
    absl::StatusCode code = absl::StatusCode::kUnknown;
  } seen;
  const std::string_view echo[] = {"ECHO", "called back"};
  client->AsyncCommandArgv(Deadline::After(2s), echo, [&](absl::StatusOr<Reply> r) {
    keel::MutexLock lock(seen.mu);
    seen.on_io_thread = client->OnIoThread();
    seen.code = r.status().code();
    if (r.ok()) seen.reply = r->str();
    seen.done = true;
    seen.cv.SignalAll();
  });
  {
    keel::MutexLock lock(seen.mu);
    while (!seen.done) seen.cv.Wait(seen.mu);
    CHECK(seen.code == absl::StatusCode::kOk);
    CHECK(seen.reply == "called back");
    CHECK(seen.on_io_thread);
  }
  // A blocking command cannot share the connection: refused before the call returns.
  const std::string_view blpop[] = {"BLPOP", "k", "1"};
  bool refused = false;
  client->AsyncCommandArgv(Deadline::After(2s), blpop, [&](absl::StatusOr<Reply> r) {
    refused = r.status().code() == absl::StatusCode::kInvalidArgument;
  });
  CHECK(refused);
}

TEST_CASE("Script::AsyncRun falls back to EVAL after SCRIPT FLUSH", "[redis][async]") {
  keel::test::RedisServer server;
  auto client = MakeClient(server.url());
  const Script add("return tonumber(ARGV[1]) + tonumber(ARGV[2])");
  REQUIRE(client->Command(Deadline::After(1s), "SCRIPT", "FLUSH").ok());
  absl::StatusOr<Reply> sum = add.AsyncRun(*client, Deadline::After(2s), {}, {40, 2}).Get();
  REQUIRE(sum.ok());
  CHECK(sum->integer() == 42);
}

Task<std::string> Slow(Client& client, std::atomic<int>* resumed) {
  absl::StatusOr<Reply> r = co_await client.AsyncCommand(Deadline::After(10s), "PING");
  resumed->fetch_add(1);
  if (!r.ok()) co_return r.status();
  co_return std::string(r->str());
}

TEST_CASE("a client shut down under awaiting coroutines resumes them with CANCELLED",
          "[redis][async]") {
  keel::test::RedisServer server;
  auto client = MakeClient(server.url());
  REQUIRE(client->Command(Deadline::After(1s), "PING").ok());  // connected
  server.Stop();                                               // SIGSTOP: nothing answers
  std::atomic<int> resumed{0};
  std::vector<Future<std::string>> waiting;
  for (int i = 0; i < 8; ++i) waiting.push_back(Slow(*client, &resumed).Start());
  CHECK(resumed.load() == 0);
  client.reset();  // Shutdown in the destructor: every awaiting coroutine resumes first
  CHECK(resumed.load() == 8);
  for (auto& w : waiting) CHECK(w.Get().status().code() == absl::StatusCode::kCancelled);
  server.Continue();
}

// The chain a request handler runs: a local limiter, a breaker, a Redis cache read, then the
// database, each awaited without a thread waiting.
Task<std::string> Handle(limit::TokenBucket& limiter, CircuitBreaker& breaker, Client& redis,
                         postgres::Pool& db, int id) {
  absl::StatusOr<limit::Decision> admitted = limiter.TryAcquire(1);
  if (!admitted.ok()) co_return admitted.status();
  if (!admitted->allowed) co_return absl::ResourceExhaustedError("rate limited");
  absl::StatusOr<CircuitBreaker::Permit> permit = breaker.TryAcquire();
  if (!permit.ok()) co_return permit.status();
  absl::StatusOr<Reply> cached =
      co_await redis.AsyncCommand(Deadline::After(2s), "GET", absl::StrCat("user:", id));
  if (!cached.ok()) {
    permit->Record(cached.status(), Duration::zero());
    co_return cached.status();
  }
  if (!cached->is_nil()) co_return std::string(cached->str());
  absl::StatusOr<postgres::Rows> row =
      co_await db.AsyncExecute(Deadline::After(2s), "SELECT 'user-' || $1::text", id);
  permit->Record(row.status(), Duration::zero());
  if (!row.ok()) co_return row.status();
  const std::string name(row->Text(0, 0));
  absl::StatusOr<Reply> stored = co_await redis.AsyncCommand(
      Deadline::After(2s), "SET", absl::StrCat("user:", id), name, "PX", 60000);
  if (!stored.ok()) co_return stored.status();
  co_return name;
}

TEST_CASE("a coroutine chain: limiter, breaker, Redis GET, PostgreSQL, Redis SET",
          "[redis][postgres][async]") {
  keel::test::RedisServer server;
  auto redis = MakeClient(server.url());
  auto db = postgres::Pool::Create({.conninfo = keel::test::RequireEnv("KEEL_TEST_POSTGRES_URL"),
                                    .pool = {.name = "chain", .background_maintenance = false}})
                .value();
  auto limiter = limit::TokenBucket::Create({.rate = 1000, .burst = 100}).value();
  auto breaker = CircuitBreaker::Create({.name = "db"}).value();
  std::vector<Future<std::string>> first;
  for (int id = 0; id < 20; ++id)
    first.push_back(Handle(limiter, *breaker, *redis, *db, id).Start());
  for (int id = 0; id < 20; ++id) {
    CHECK(first[id].Get(Deadline::After(5s)).value() == absl::StrCat("user-", id));
  }
  CHECK(db->GetAsyncStats().completed_total == 20);  // every first read went to the database
  // Second time round the cache answers.
  CHECK(Handle(limiter, *breaker, *redis, *db, 7).Start().Get(Deadline::After(5s)).value() ==
        "user-7");
  CHECK(db->GetAsyncStats().completed_total == 20);
  CHECK(breaker->Stats().successful_total == 20);
}

}  // namespace
}  // namespace keel::redis
