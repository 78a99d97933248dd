// The limiters' async forms on the multiplexed transport: a thread submits many checks and no
// thread waits for each; decisions are the blocking forms' decisions.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "integration/redis/test_server.h"
#include "integration/redis_limits/helpers.h"
#include "keel/limit/gcra.h"
#include "keel/redis/concurrency_limiter.h"
#include "keel/redis/rate_limiter.h"

namespace keel::redis {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Client> ClientOn(const keel::test::RedisServer& server,
                                 Transport transport = Transport::kMultiplexed) {
  auto options = Options::FromUrl(server.url());
  REQUIRE(options.ok());
  options->transport = transport;
  options->connect_timeout = 200ms;
  auto client = Client::Create(*options);
  REQUIRE(client.ok());
  return std::move(*client);
}

RateLimiter::Options Burst(std::string name, int64_t burst,
                           FailMode fail_mode = FailMode::kClosed) {
  return RateLimiter::Options{
      .name = std::move(name),
      .algorithm = limit::Gcra::Options{.count = 1, .period = 1h, .max_burst = burst - 1},
      .fail_mode = fail_mode};
}

TEST_CASE("redis rate limiter: 200 async checks in flight admit exactly the burst",
          "[redis_limits][async]") {
  keel::test::RedisServer server;
  auto client = ClientOn(server);
  auto limiter = keel::test::MakeLimiter(*client, Burst("async-burst", 100));
  std::vector<Future<limit::Decision>> checks;
  for (int i = 0; i < 200; ++i)
    checks.push_back(limiter->TryAcquireAsync(Deadline::After(5s), "u"));
  int allowed = 0, denied = 0;
  for (auto& f : checks) {
    absl::StatusOr<limit::Decision> d = f.Get(Deadline::After(5s));
    REQUIRE(d.ok());
    (d->allowed ? allowed : denied)++;
    CHECK_FALSE(d->degraded);
  }
  CHECK(allowed == 100);
  CHECK(denied == 100);
  // The same state the blocking form sees, and the same counters.
  absl::StatusOr<limit::Decision> blocking = limiter->TryAcquire(Deadline::After(1s), "u");
  REQUIRE(blocking.ok());
  CHECK_FALSE(blocking->allowed);
  CHECK(limiter->Stats().allowed_total == 100);
  CHECK(limiter->Stats().denied_total == 101);
  // Every check ran on the one multiplexed connection; none needed a pooled one.
  CHECK(client->Stats().pool.total == 0);
}

TEST_CASE("redis rate limiter async: bad input, the pooled transport and a dead server",
          "[redis_limits][async]") {
  keel::test::RedisServer server;
  auto client = ClientOn(server);
  auto closed = keel::test::MakeLimiter(*client, Burst("async-closed", 10));
  auto open = keel::test::MakeLimiter(*client, Burst("async-open", 10, FailMode::kOpen));
  CHECK(closed->TryAcquireAsync(Deadline::After(1s), "").Get().status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(closed->TryAcquireAsync(Deadline::After(1s), "k", -1).Get().status().code() ==
        absl::StatusCode::kInvalidArgument);
  auto pooled = ClientOn(server, Transport::kPooled);
  auto on_pooled = keel::test::MakeLimiter(*pooled, Burst("async-pooled", 10));
  absl::Status refused = on_pooled->TryAcquireAsync(Deadline::After(1s), "k").Get().status();
  CHECK(refused.code() == absl::StatusCode::kFailedPrecondition);
  CHECK(refused.message().find("multiplexed") != std::string_view::npos);

  REQUIRE(closed->TryAcquireAsync(Deadline::After(1s), "k").Get().ok());
  server.Kill();
  const auto start = std::chrono::steady_clock::now();
  absl::StatusOr<limit::Decision> down = closed->TryAcquireAsync(Deadline::After(300ms), "k").Get();
  CHECK(down.status().code() == absl::StatusCode::kUnavailable);
  absl::StatusOr<limit::Decision> opened = open->TryAcquireAsync(Deadline::After(300ms), "k").Get();
  REQUIRE(opened.ok());
  CHECK(opened->allowed);
  CHECK(opened->degraded);
  CHECK(std::chrono::steady_clock::now() - start < 700ms);
  CHECK(closed->Stats().fail_closed_total == 1);
  CHECK(open->Stats().fail_open_total == 1);
}

TEST_CASE(
    "redis concurrency limiter async: permits up to max, one released on the I/O thread "
    "frees its slot without blocking it",
    "[redis_limits][async]") {
  keel::test::RedisServer server({"--enable-debug-command", "yes"});
  auto client = ClientOn(server);
  auto created = ConcurrencyLimiter::Create({.name = "async-conc", .max = 3}, *client);
  REQUIRE(created.ok());
  ConcurrencyLimiter& limiter = **created;
  std::vector<Future<std::optional<ConcurrencyLimiter::Permit>>> acquires;
  for (int i = 0; i < 4; ++i) acquires.push_back(limiter.TryAcquireAsync(Deadline::After(5s), "k"));
  std::vector<ConcurrencyLimiter::Permit> held;
  int refused = 0;
  for (auto& f : acquires) {
    auto p = f.Get(Deadline::After(5s));
    REQUIRE(p.ok());
    if (p->has_value()) {
      held.push_back(std::move(**p));
    } else {
      ++refused;
    }
  }
  CHECK(held.size() == 3);
  CHECK(refused == 1);
  CHECK(limiter.Stats().acquired_total == 3);
  CHECK(limiter.Stats().rejected_total == 1);

  // A permit dropped in a continuation on the I/O thread (after a DEBUG SLEEP, so the
  // continuation is attached before the reply comes and runs there): its release is sent, not
  // waited for (a blocking call on that thread would be refused).
  std::optional<ConcurrencyLimiter::Permit> last = std::move(held.back());
  held.pop_back();
  std::atomic<bool> on_loop{false};
  Promise<bool> done;
  Future<bool> done_future = done.future();
  client->AsyncCommand(Deadline::After(5s), "DEBUG", "SLEEP", "0.2")
      .Then([&](absl::StatusOr<Reply> slept) {
        on_loop = client->OnIoThread();
        last.reset();  // Release() on the I/O thread
        done.Set(slept.ok());
      });
  REQUIRE(done_future.Get(Deadline::After(5s)).value_or(false));
  CHECK(on_loop.load());
  // The ZREM went out before this acquire on the same connection: the slot is free.
  auto again = limiter.TryAcquire(Deadline::After(1s), "k");
  REQUIRE(again.ok());
  CHECK(again->has_value());
  CHECK(client->Stats().pool.total == 0);
}

TEST_CASE("a blocking call on the client's I/O thread is refused at once, not deadlocked",
          "[redis][async]") {
  keel::test::RedisServer server({"--enable-debug-command", "yes"});
  auto client = ClientOn(server);
  CHECK_FALSE(client->OnIoThread());
  Promise<absl::StatusCode> seen;
  Future<absl::StatusCode> seen_future = seen.future();
  const auto start = std::chrono::steady_clock::now();
  // The continuation is attached long before the reply comes: it runs on the I/O thread.
  client->AsyncCommand(Deadline::After(5s), "DEBUG", "SLEEP", "0.2")
      .Then([&](absl::StatusOr<Reply>) {
        // On the I/O thread: this call would wait for a reply only this thread can read.
        seen.Set(client->Command(Deadline::After(2s), "PING").status().code());
      });
  absl::StatusOr<absl::StatusCode> code = seen_future.Get(Deadline::After(5s));
  REQUIRE(code.ok());
  CHECK(*code == absl::StatusCode::kFailedPrecondition);
  CHECK(std::chrono::steady_clock::now() - start < 200ms + 500ms);
  CHECK(client->Stats().commands_refused_total >= 1);
  // The client is still fine, and a lone blocking caller reads its own replies (from the
  // second call on: the first may find the previous call's slot not yet retired).
  const uint64_t direct_before = client->Stats().transport.direct_calls_total;
  for (int i = 0; i < 10; ++i) CHECK(client->Command(Deadline::After(1s), "PING").ok());
  CHECK(client->Stats().transport.direct_calls_total >= direct_before + 9);
}

}  // namespace
}  // namespace keel::redis
