// One keel::IoLoop shared by a Redis client and a PostgreSQL pool: both run their async calls on
// the loop's one thread, callers on many threads interleave, either client can go (with calls in
// flight, from another thread or from the other's callback on the loop) while the other goes on,
// and a loop stopped under both fails their calls instead of leaving them waiting.
#include <dirent.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <fstream>
#include <functional>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "integration/redis/test_server.h"
#include "keel/async/io_loop.h"
#include "keel/postgres/pool.h"
#include "keel/redis/client.h"
#include "keel/sync.h"
#include "support/subprocess.h"

namespace keel {
namespace {

using namespace std::chrono_literals;
using Steady = std::chrono::steady_clock;

std::shared_ptr<IoLoop> MakeLoop(std::string name) {
  auto loop = IoLoop::Create({.name = std::move(name)});
  REQUIRE(loop.ok());
  return std::move(*loop);
}

std::unique_ptr<redis::Client> MakeRedis(const std::string& url, std::string name,
                                         std::shared_ptr<IoLoop> loop) {
  auto options = redis::Options::FromUrl(url);
  REQUIRE(options.ok());
  options->io_loop = std::move(loop);
  options->pool.name = std::move(name);
  auto client = redis::Client::Create(*options);
  REQUIRE(client.ok());
  return std::move(*client);
}

std::unique_ptr<postgres::Pool> MakePg(std::string name, std::shared_ptr<IoLoop> loop) {
  auto pool =
      postgres::Pool::Create({.conninfo = test::RequireEnv("KEEL_TEST_POSTGRES_URL"),
                              .async = {.io_loop = std::move(loop)},
                              .pool = {.name = std::move(name), .background_maintenance = false}});
  REQUIRE(pool.ok());
  return std::move(*pool);
}

// The threads of this process whose name (comm) is `name`.
int ThreadsNamed(const std::string& name) {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/task")) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] == '.') continue;
      std::ifstream comm(absl::StrCat("/proc/self/task/", e->d_name, "/comm"));
      std::string line;
      std::getline(comm, line);
      n += line == name;
    }
    ::closedir(d);
  }
  return n;
}

// Holds the loop thread in a task until Release(): what is submitted meanwhile completes after
// its callbacks are attached, so they surely run on the loop thread.
class Gate {
 public:
  explicit Gate(IoLoop& loop) : scope_(std::move(loop.OpenScope("test gate").value())) {
    REQUIRE(scope_->Post([f = released_.get_future().share()] { f.wait(); }));
  }
  ~Gate() { Release(); }
  void Release() {
    if (!released_flag_.exchange(true)) released_.set_value();
  }

 private:
  std::atomic<bool> released_flag_{false};
  std::promise<void> released_;
  std::unique_ptr<IoLoop::Scope> scope_;
};

TEST_CASE("async Redis and PostgreSQL calls on one shared loop complete on its one thread",
          "[async][io_loop][redis][postgres]") {
  const std::string redis_url = test::RequireEnv("KEEL_TEST_REDIS_URL");
  auto loop = MakeLoop("shared-io");
  auto redis = MakeRedis(redis_url, "redis-shared", loop);
  auto pg = MakePg("pg-shared", loop);
  // The clients' own loops, for comparison: each starts a thread named after its pool.
  auto redis_own = MakeRedis(redis_url, "redis-own", nullptr);
  auto pg_own = MakePg("pg-own", nullptr);
  REQUIRE(redis_own->AsyncCommand(Deadline::After(5s), "PING").Get().ok());
  REQUIRE(pg_own->AsyncExecute(Deadline::After(5s), "SELECT 1").Get().ok());

  Mutex mu;
  std::vector<std::thread::id> ran_on;
  auto record = [&] {
    MutexLock lock(mu);
    ran_on.push_back(std::this_thread::get_id());
  };
  {
    Gate gate(*loop);
    std::promise<void> redis_done, pg_done;
    redis->AsyncCommand(Deadline::After(5s), "PING").Then([&](absl::StatusOr<redis::Reply> r) {
      if (r.ok()) record();
      redis_done.set_value();
    });
    pg->AsyncExecute(Deadline::After(5s), "SELECT 1").Then([&](absl::StatusOr<postgres::Rows> r) {
      if (r.ok()) record();
      pg_done.set_value();
    });
    gate.Release();
    redis_done.get_future().wait();
    pg_done.get_future().wait();
  }
  REQUIRE(ran_on.size() == 2);
  CHECK(ran_on[0] == loop->thread_id());
  CHECK(ran_on[1] == loop->thread_id());

  // Interleaved from many threads: every caller gets its own reply and result.
  constexpr int kThreads = 8, kCalls = 200;
  std::atomic<int> wrong{0}, failed{0};
  std::vector<std::thread> callers;
  for (int t = 0; t < kThreads; ++t) {
    callers.emplace_back([&, t] {
      for (int i = 0; i < kCalls; ++i) {
        const std::string key = absl::StrCat("{ioloop}:", t, ":", i);
        Future<redis::Reply> set = redis->AsyncCommand(Deadline::After(10s), "SET", key, i);
        Future<postgres::Rows> row =
            pg->AsyncExecute(Deadline::After(10s), "SELECT $1::int * 3", t * kCalls + i);
        Future<redis::Reply> get = redis->AsyncCommand(Deadline::After(10s), "GET", key);
        if (!set.Get().ok()) failed.fetch_add(1);
        absl::StatusOr<postgres::Rows> r = row.Get();
        absl::StatusOr<redis::Reply> g = get.Get();
        if (!r.ok() || !g.ok()) {
          failed.fetch_add(1);
          continue;
        }
        if (r->Get<int>(0, 0).value_or(-1) != 3 * (t * kCalls + i)) wrong.fetch_add(1);
        if (g->str() != std::to_string(i)) wrong.fetch_add(1);
      }
    });
  }
  for (auto& c : callers) c.join();
  CHECK(failed.load() == 0);
  CHECK(wrong.load() == 0);
  CHECK(pg->GetAsyncStats().completed_total == 1 + kThreads * kCalls);

  // One I/O thread for both shared clients; each own-loop client has its own.
  CHECK(ThreadsNamed("shared-io") == 1);
  CHECK(ThreadsNamed("redis-shared") == 0);
  CHECK(ThreadsNamed("pg-shared") == 0);
  CHECK(ThreadsNamed("redis-own") == 1);
  CHECK(ThreadsNamed("pg-own") == 1);
  CHECK(loop->Stats().scopes == 2);
  pg_own.reset();
  redis_own.reset();
  CHECK(ThreadsNamed("redis-own") == 0);
  CHECK(ThreadsNamed("pg-own") == 0);
}

TEST_CASE("async calls go on when the other client on a shared loop is destroyed",
          "[async][io_loop][redis][postgres]") {
  const std::string redis_url = test::RequireEnv("KEEL_TEST_REDIS_URL");
  auto loop = MakeLoop("shared-io");
  // Runs `calls` on a thread until stopped; counts failures.
  struct Caller {
    std::atomic<bool> stop{false};
    std::atomic<int> ok{0}, failed{0};
    std::thread thread;
    void Start(std::function<bool()> call) {
      thread = std::thread([this, call = std::move(call)] {
        while (!stop.load()) (call() ? ok : failed).fetch_add(1);
      });
    }
    void Join() {
      stop = true;
      thread.join();
    }
  };

  SECTION("the Redis client goes while PostgreSQL calls continue") {
    auto pg = MakePg("pg-stays", loop);
    auto redis = MakeRedis(redis_url, "redis-goes", loop);
    REQUIRE(redis->AsyncCommand(Deadline::After(5s), "PING").Get().ok());
    Caller caller;
    caller.Start([&] { return pg->AsyncExecute(Deadline::After(5s), "SELECT 1").Get().ok(); });
    std::vector<Future<redis::Reply>> in_flight;
    for (int i = 0; i < 100; ++i) {
      in_flight.push_back(redis->AsyncCommand(Deadline::After(5s), "PING"));
    }
    redis.reset();
    for (auto& f : in_flight) {
      const absl::StatusCode code = f.Get(Deadline::After(5s)).status().code();
      CHECK((code == absl::StatusCode::kOk || code == absl::StatusCode::kCancelled));
    }
    const int before = caller.ok.load();
    const auto t0 = Steady::now();
    while (caller.ok.load() < before + 50 && Steady::now() - t0 < 10s) std::this_thread::yield();
    caller.Join();
    CHECK(caller.failed.load() == 0);
    CHECK(loop->Stats().scopes == 1);
  }
  SECTION("the PostgreSQL pool goes while Redis calls continue") {
    auto redis = MakeRedis(redis_url, "redis-stays", loop);
    auto pg = MakePg("pg-goes", loop);
    REQUIRE(pg->AsyncExecute(Deadline::After(5s), "SELECT 1").Get().ok());
    Caller caller;
    caller.Start([&] { return redis->AsyncCommand(Deadline::After(5s), "PING").Get().ok(); });
    std::vector<Future<postgres::Rows>> in_flight;
    for (int i = 0; i < 100; ++i) {
      in_flight.push_back(pg->AsyncExecute(Deadline::After(5s), "SELECT 1"));
    }
    pg.reset();
    for (auto& f : in_flight) {
      const absl::StatusCode code = f.Get(Deadline::After(5s)).status().code();
      CHECK((code == absl::StatusCode::kOk || code == absl::StatusCode::kCancelled));
    }
    const int before = caller.ok.load();
    const auto t0 = Steady::now();
    while (caller.ok.load() < before + 50 && Steady::now() - t0 < 10s) std::this_thread::yield();
    caller.Join();
    CHECK(caller.failed.load() == 0);
    CHECK(loop->Stats().scopes == 1);
  }
}

TEST_CASE("clients destroyed with async calls waiting on a shared loop complete them CANCELLED",
          "[async][io_loop][redis][postgres]") {
  keel::test::RedisServer server;
  auto loop = MakeLoop("shared-io");
  auto redis = MakeRedis(server.url(), "redis-paused", loop);
  auto pg = MakePg("pg-sleeping", loop);
  REQUIRE(redis->AsyncCommand(Deadline::After(5s), "PING").Get().ok());
  REQUIRE(pg->AsyncExecute(Deadline::After(5s), "SELECT 1").Get().ok());
  server.Stop();  // SIGSTOP: nothing answers
  std::vector<Future<redis::Reply>> redis_waiting;
  std::vector<Future<postgres::Rows>> pg_waiting;
  for (int i = 0; i < 20; ++i) {
    redis_waiting.push_back(redis->AsyncCommand(Deadline::After(30s), "PING"));
    pg_waiting.push_back(pg->AsyncExecute(Deadline::After(30s), "SELECT pg_sleep(30)"));
  }
  const auto start = Steady::now();
  redis.reset();
  for (auto& f : redis_waiting) {
    CHECK(f.Get(Deadline::After(1s)).status().code() == absl::StatusCode::kCancelled);
  }
  pg.reset();
  for (auto& f : pg_waiting) {
    CHECK(f.Get(Deadline::After(1s)).status().code() == absl::StatusCode::kCancelled);
  }
  CHECK(Steady::now() - start < 3s);
  server.Continue();
  // The loop serves a new client as before.
  auto again = MakeRedis(server.url(), "redis-again", loop);
  CHECK(again->AsyncCommand(Deadline::After(5s), "PING").Get().ok());
}

TEST_CASE("a Redis client destroyed in a PostgreSQL async callback on the shared loop",
          "[async][io_loop][redis][postgres]") {
  keel::test::RedisServer server;
  auto loop = MakeLoop("shared-io");
  auto redis = MakeRedis(server.url(), "redis-paused", loop);
  auto pg = MakePg("pg-stays", loop);
  REQUIRE(redis->AsyncCommand(Deadline::After(5s), "PING").Get().ok());
  server.Stop();
  Future<redis::Reply> waiting = redis->AsyncCommand(Deadline::After(30s), "PING");
  std::promise<bool> destroyed;
  // On the loop thread: the client's connection closes at once (the fence cannot wait for the
  // thread it runs on), failing its call there.
  pg->AsyncExecute(Deadline::After(5s), "SELECT 1").Then([&](absl::StatusOr<postgres::Rows> r) {
    const bool on_loop = loop->InLoop();
    redis.reset();
    destroyed.set_value(r.ok() && on_loop);
  });
  CHECK(destroyed.get_future().get());
  CHECK(waiting.Get(Deadline::After(1s)).status().code() == absl::StatusCode::kCancelled);
  server.Continue();
  CHECK(pg->AsyncExecute(Deadline::After(5s), "SELECT 2").Get().ok());
  CHECK(loop->Stats().scopes == 1);
}

TEST_CASE("async and blocking calls fail, naming the loop, when a shared loop stops under them",
          "[async][io_loop][redis][postgres]") {
  keel::test::RedisServer server;
  auto loop = MakeLoop("stopping-io");
  auto redis = MakeRedis(server.url(), "redis-orphan", loop);
  auto pg = MakePg("pg-orphan", loop);
  REQUIRE(redis->AsyncCommand(Deadline::After(5s), "PING").Get().ok());
  REQUIRE(pg->AsyncExecute(Deadline::After(5s), "SELECT 1").Get().ok());
  server.Stop();
  Future<redis::Reply> redis_waiting = redis->AsyncCommand(Deadline::After(30s), "PING");
  Future<postgres::Rows> pg_waiting = pg->AsyncExecute(Deadline::After(30s), "SELECT pg_sleep(30)");
  const auto start = Steady::now();
  loop->Stop();
  auto in_flight = redis_waiting.Get(Deadline::After(1s));
  CHECK(in_flight.status().code() == absl::StatusCode::kCancelled);
  CHECK_THAT(std::string(in_flight.status().message()),
             Catch::Contains("I/O loop \"stopping-io\" was stopped"));
  CHECK(pg_waiting.Get(Deadline::After(1s)).status().code() == absl::StatusCode::kCancelled);
  auto later = redis->AsyncCommand(Deadline::After(5s), "PING").Get(Deadline::After(1s));
  CHECK(later.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK_THAT(std::string(later.status().message()), Catch::Contains("stopping-io"));
  auto blocking = redis->Command(Deadline::After(5s), "PING");
  CHECK(blocking.status().code() == absl::StatusCode::kFailedPrecondition);
  auto pg_later = pg->AsyncExecute(Deadline::After(5s), "SELECT 1").Get(Deadline::After(1s));
  CHECK(pg_later.status().code() == absl::StatusCode::kFailedPrecondition);
  CHECK_THAT(std::string(pg_later.status().message()), Catch::Contains("stopping-io"));
  CHECK(Steady::now() - start < 3s);
  server.Continue();
  // A client created on a stopped loop is refused at once.
  auto options = redis::Options::FromUrl(server.url());
  REQUIRE(options.ok());
  options->io_loop = loop;
  CHECK(redis::Client::Create(*options).status().code() == absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace keel
