// The multiplexed transport against a real redis-server of the test's own: ordering under many
// threads, late replies while Redis is slowed and paused, kill -9 and restart, backpressure.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "integration/redis/test_server.h"
#include "keel/async/io_loop.h"
#include "keel/metrics.h"
#include "keel/redis/client.h"
#include "keel/redis/connection.h"
#include "keel/status.h"
#include "redis/transport/call.h"
#include "redis/transport/mux_connection.h"
#include "support/sanitizers.h"

using keel::Deadline;
using keel::IoLoop;
using keel::redis::Client;
using keel::redis::Connection;
using keel::redis::Options;
using keel::redis::Pipeline;
using keel::redis::transport::Call;
using keel::redis::transport::CallResult;
using keel::redis::transport::MuxConnection;
using namespace std::chrono_literals;
using SteadyTime = std::chrono::steady_clock;

namespace {

Options OptionsFor(const keel::test::RedisServer& server) {
  auto o = Options::FromUrl(server.url());
  REQUIRE(o.ok());
  o->connect_timeout = 200ms;
  return *o;
}

// One multiplexed connection on its own loop, with callback calls: what the Client's transport
// is, without a thread per call in flight.
struct Transport {
  Options options;
  std::atomic<int> connects{0};  // setups the connector ran
  std::shared_ptr<IoLoop> loop;
  std::unique_ptr<MuxConnection> mux;
  explicit Transport(Options o, size_t max_calls = 4096, MuxConnection::ConnectGate gate = nullptr)
      : options(std::move(o)) {
    auto l = IoLoop::Create({.name = "redis-test"});
    REQUIRE(l.ok());
    loop = std::move(*l);
    mux = std::make_unique<MuxConnection>(
        MuxConnection::Options{.name = "redis \"test\"",
                               .connect_timeout = options.connect_timeout,
                               .late_reply_timeout = options.late_reply_timeout,
                               .max_calls = max_calls},
        loop,
        [this](Deadline) {
          ++connects;
          return Connection::Connect(options.server, options, Deadline::Infinite());
        },
        std::move(gate));
  }
  ~Transport() {
    mux->Shutdown();
    loop->Stop();
  }
};

// A callback call that records what it got and when.
struct Probe {
  std::atomic<bool> done{false};
  std::atomic<int64_t> done_ns{0};
  absl::StatusCode code = absl::StatusCode::kUnknown;
  std::string reply;
  std::shared_ptr<Call> call;
  explicit Probe(Deadline deadline)
      : call(std::make_shared<Call>(1, deadline, [this](CallResult&& r) {
          code = r.status.code();
          if (r.status.ok()) reply = r.replies[0].str();
          done_ns.store(SteadyTime::now().time_since_epoch().count());
          done.store(true, std::memory_order_release);
        })) {}
};

std::string Encode(std::vector<std::string_view> argv) {
  std::string out;
  keel::redis::AppendRespCommand(argv, out);
  return out;
}

bool WaitAll(const std::vector<std::unique_ptr<Probe>>& probes, std::chrono::milliseconds limit) {
  const auto until = SteadyTime::now() + limit;
  for (const auto& p : probes) {
    while (!p->done.load(std::memory_order_acquire)) {
      if (SteadyTime::now() > until) return false;
      std::this_thread::sleep_for(1ms);
    }
  }
  return true;
}

// Sends ECHO <value> and waits for the reply on the blocking path.
absl::StatusOr<std::string> Echo(Transport& t, const std::string& value, Deadline deadline) {
  auto call = std::make_shared<Call>(1, deadline);
  t.mux->Submit(call, Encode({"ECHO", value}));
  CallResult r = call->Wait("timed out");
  if (!r.status.ok()) return r.status;
  return r.replies[0].str();
}

}  // namespace

TEST_CASE("redis mux: 64 threads over one connection each get their own replies") {
  keel::test::RedisServer server;
  Options options = OptionsFor(server);
  auto client = Client::Create(options);
  REQUIRE(client.ok());
#if defined(KEEL_TEST_TSAN)
  constexpr int kPerThread = 1000;  // TSan runs ~10x slower; the interleavings are what matter
#else
  constexpr int kPerThread = 10000;
#endif
  constexpr int kThreads = 64;
  std::atomic<int> wrong{0}, failed{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string key = "mux:order:" + std::to_string(t);
      Client& c = **client;
      for (int i = 0; i < kPerThread; ++i) {
        const std::string value = std::to_string(t) + ":" + std::to_string(i);
        const Deadline d = Deadline::After(5s);
        switch (i % 5) {
          case 0: {
            auto r = c.Command(d, "SET", key, value);
            if (!r.ok()) ++failed;
            break;
          }
          case 1: {
            auto r = c.Command(d, "GET", key);
            if (!r.ok()) {
              ++failed;
            } else if (r->str() != std::to_string(t) + ":" + std::to_string(i - 1)) {
              ++wrong;
            }
            break;
          }
          case 2: {
            auto r = c.Command(d, "INCR", key + ":n");
            if (!r.ok()) {
              ++failed;
            } else if (r->integer() != i / 5 + 1) {
              ++wrong;
            }
            break;
          }
          case 3: {
            auto r = c.Command(d, "ECHO", value);
            if (!r.ok()) {
              ++failed;
            } else if (r->str() != value) {
              ++wrong;
            }
            break;
          }
          default: {
            Pipeline p;
            p.Add("ECHO", value).Add("SET", key, value).Add("GET", key);
            auto r = c.Run(d, p);
            if (!r.ok() || r->size() != 3 || !(*r)[2].ok()) {
              ++failed;
            } else if ((*r)[0]->str() != value || (*r)[2]->str() != value) {
              ++wrong;
            }
          }
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(wrong.load() == 0);
  CHECK(failed.load() == 0);
  const auto stats = (*client)->Stats();
  CHECK(stats.transport.calls_total == uint64_t{kThreads} * kPerThread);
  CHECK(stats.transport.reconnects_total == 0);
  CHECK(stats.pool.total == 0);  // nothing needed a dedicated connection
}

TEST_CASE("redis mux: a slowed and a paused server cost each call only its deadline") {
  keel::test::RedisServer server({"--enable-debug-command", "yes"});
  Transport t(OptionsFor(server));
  REQUIRE(Echo(t, "warm", Deadline::After(2s)).ok());

  auto run = [&](const char* what, auto stall) {
    INFO(what);
    std::vector<std::unique_ptr<Probe>> probes;
    std::vector<int64_t> deadlines_ns;
    stall();
    for (int i = 0; i < 1000; ++i) {
      const auto budget = std::chrono::milliseconds(20 + i % 31);  // 20..50 ms
      const Deadline d = Deadline::After(budget);
      deadlines_ns.push_back(d.time().time_since_epoch().count());
      probes.push_back(std::make_unique<Probe>(d));
      t.mux->Submit(probes.back()->call, Encode({"ECHO", "late" + std::to_string(i)}));
    }
    REQUIRE(WaitAll(probes, 2s));
    int64_t worst_ns = 0;
    for (size_t i = 0; i < probes.size(); ++i) {
      CHECK(probes[i]->code == absl::StatusCode::kDeadlineExceeded);
      worst_ns = std::max(worst_ns, probes[i]->done_ns.load() - deadlines_ns[i]);
    }
    CHECK(worst_ns <= std::chrono::nanoseconds(50ms).count());
  };
  SECTION("DEBUG SLEEP") {
    auto sleeper = std::make_shared<Call>(1, Deadline::After(3s));
    run("DEBUG SLEEP 0.5", [&] { t.mux->Submit(sleeper, Encode({"DEBUG", "SLEEP", "0.5"})); });
    CallResult slept = sleeper->Wait("timed out");
    CHECK(slept.status.ok());
  }
  SECTION("SIGSTOP") {
    run("SIGSTOP", [&] { server.Stop(); });
    std::this_thread::sleep_for(1s);
    server.Continue();
  }
  // The connection survived, and calls made afterwards get their own replies, not late ones.
  for (int i = 0; i < 100; ++i) {
    auto r = Echo(t, "after" + std::to_string(i), Deadline::After(2s));
    REQUIRE(r.ok());
    CHECK(*r == "after" + std::to_string(i));
  }
  const auto stats = t.mux->Stats();
  CHECK(stats.reconnects_total == 0);
  CHECK(stats.late_replies_discarded_total >= 1000);
}

// Polls `done` every millisecond for up to `limit`.
template <typename Pred>
bool WaitFor(Pred done, std::chrono::milliseconds limit = 5s) {
  const auto until = SteadyTime::now() + limit;
  while (!done()) {
    if (SteadyTime::now() > until) return false;
    std::this_thread::sleep_for(1ms);
  }
  return true;
}

// Run's blocking ECHO: a lone caller reads its own reply.
absl::StatusOr<std::string> RunEcho(Transport& t, const std::string& value, Deadline deadline) {
  CallResult r =
      t.mux->Run(std::make_shared<Call>(1, deadline), Encode({"ECHO", value}), "timed out");
  if (!r.status.ok()) return r.status;
  return r.replies[0].str();
}

TEST_CASE("redis mux: a lone blocking caller reads its own reply, and a late one is discarded") {
  keel::test::RedisServer server({"--enable-debug-command", "yes"});
  Transport t(OptionsFor(server));
  REQUIRE(Echo(t, "warm", Deadline::After(2s)).ok());  // Submit: the I/O thread reads
  CHECK(t.mux->Stats().direct_calls_total == 0);
  // The warm call's completion runs before the I/O thread retires its slot: idle only then.
  REQUIRE(WaitFor([&] { return t.mux->Stats().in_flight == 0; }));
  for (int i = 0; i < 100; ++i) {
    const std::string v = "direct" + std::to_string(i);
    REQUIRE(RunEcho(t, v, Deadline::After(2s)).value_or("") == v);
  }
  CHECK(t.mux->Stats().direct_calls_total == 100);

  // A direct call that runs out of time: DEADLINE_EXCEEDED by its deadline; while it waits,
  // calls submitted by others queue and get their own replies once it has handed its slot on.
  const auto start = SteadyTime::now();
  std::atomic<bool> slept_done{false};
  absl::StatusCode slept_code = absl::StatusCode::kUnknown;
  std::thread sleeper([&] {
    CallResult r = t.mux->Run(std::make_shared<Call>(1, Deadline::After(100ms)),
                              Encode({"DEBUG", "SLEEP", "0.3"}), "timed out");
    slept_code = r.status.code();
    slept_done = true;
  });
  REQUIRE(WaitFor([&] { return t.mux->Stats().direct_calls_total == 101; }));
  std::vector<std::unique_ptr<Probe>> probes;
  for (int i = 0; i < 10; ++i) {
    probes.push_back(std::make_unique<Probe>(Deadline::After(2s)));
    t.mux->Submit(probes.back()->call, Encode({"ECHO", "queued" + std::to_string(i)}));
  }
  sleeper.join();
  CHECK(slept_code == absl::StatusCode::kDeadlineExceeded);
  CHECK(SteadyTime::now() - start < 100ms + 50ms);
  REQUIRE(WaitAll(probes, 2s));
  for (int i = 0; i < 10; ++i) {
    CHECK(probes[i]->code == absl::StatusCode::kOk);
    CHECK(probes[i]->reply == "queued" + std::to_string(i));
  }
  // The late reply was read and dropped by the I/O thread; the connection was kept, and the
  // next lone call reads its own reply again, not the late one.
  const auto stats = t.mux->Stats();
  CHECK(stats.late_replies_discarded_total == 1);
  CHECK(stats.reconnects_total == 0);
  CHECK(RunEcho(t, "after", Deadline::After(2s)).value_or("") == "after");
  CHECK(t.mux->Stats().direct_calls_total == 102);
  CHECK(t.mux->Stats().in_flight == 0);
}

TEST_CASE("redis mux: a lone caller's connection lost mid-call fails it UNAVAILABLE and recovers") {
  keel::test::RedisServer server({"--enable-debug-command", "yes"});
  Transport t(OptionsFor(server));
  REQUIRE(RunEcho(t, "warm", Deadline::After(2s)).ok());  // connects: not direct
  REQUIRE(WaitFor([&] { return t.mux->Stats().in_flight == 0; }));
  const uint64_t direct_before = t.mux->Stats().direct_calls_total;
  absl::StatusCode code = absl::StatusCode::kUnknown;
  std::string message;
  std::thread caller([&] {
    CallResult r = t.mux->Run(std::make_shared<Call>(1, Deadline::After(5s)),
                              Encode({"DEBUG", "SLEEP", "2"}), "timed out");
    code = r.status.code();
    message = std::string(r.status.message());
  });
  REQUIRE(WaitFor([&] { return t.mux->Stats().direct_calls_total == direct_before + 1; }));
  std::this_thread::sleep_for(50ms);
  const auto killed = SteadyTime::now();
  server.Kill();
  caller.join();
  CHECK(code == absl::StatusCode::kUnavailable);
  CHECK(message.find("connection lost") != std::string::npos);
  CHECK(SteadyTime::now() - killed < 500ms);
  REQUIRE(server.Start());
  absl::StatusOr<std::string> after = absl::UnavailableError("not yet");
  for (int i = 0; i < 100 && !after.ok(); ++i) {
    after = RunEcho(t, "back", Deadline::After(1s));
    if (!after.ok()) std::this_thread::sleep_for(20ms);
  }
  CHECK(after.value_or("") == "back");
  CHECK(t.mux->Stats().in_flight == 0);
}

TEST_CASE("redis mux: a setup hanging on a paused server does not stall async deadlines") {
  // AUTH makes the setup wait for the server after the kernel accepted the TCP connection.
  keel::test::RedisServer server({"--requirepass", "s3cret"});
  auto o = Options::FromUrl("redis://:s3cret@127.0.0.1:" + std::to_string(server.port()));
  REQUIRE(o.ok());
  o->connect_timeout = 1s;
  Transport t(*o);
  server.Stop();
  std::vector<std::unique_ptr<Probe>> probes;
  std::vector<int64_t> deadlines_ns;
  for (int i = 0; i < 50; ++i) {
    const Deadline d = Deadline::After(std::chrono::milliseconds(30 + i));
    deadlines_ns.push_back(d.time().time_since_epoch().count());
    probes.push_back(std::make_unique<Probe>(d));
    t.mux->Submit(probes.back()->call, Encode({"ECHO", "during setup"}));
  }
  // Every call ends by its deadline + 50 ms, long before the setup gives up (1 s).
  REQUIRE(WaitAll(probes, 900ms));
  for (size_t i = 0; i < probes.size(); ++i) {
    CHECK(probes[i]->code == absl::StatusCode::kDeadlineExceeded);
    CHECK(probes[i]->done_ns.load() - deadlines_ns[i] <= std::chrono::nanoseconds(50ms).count());
  }
  server.Continue();
  absl::StatusOr<std::string> after = absl::UnavailableError("not yet");
  REQUIRE(WaitFor([&] {
    after = Echo(t, "after", Deadline::After(500ms));
    return after.ok();
  }));
  CHECK(*after == "after");
}

TEST_CASE("redis mux: while the reconnect backoff runs, a call fails in Submit without a setup") {
  keel::test::RedisServer server;
  std::atomic<bool> backing_off{true};
  Transport t(OptionsFor(server), 4096, [&]() -> absl::Status {
    if (!backing_off.load()) return absl::OkStatus();
    return absl::UnavailableError("redis \"test\": not reconnecting for another 40ms");
  });
  // Down (never connected) and refused by the gate: completed before Submit returns, on this
  // thread, with the gate's status; the connector never ran.
  for (int i = 0; i < 3; ++i) {
    Probe probe(Deadline::After(2s));
    t.mux->Submit(probe.call, Encode({"ECHO", "refused"}));
    REQUIRE(probe.done.load(std::memory_order_acquire));
    CHECK(probe.code == absl::StatusCode::kUnavailable);
  }
  CHECK(t.connects.load() == 0);
  CHECK(t.mux->Stats().in_flight == 0);
  // The backoff over, the next call connects and is answered.
  backing_off.store(false);
  CHECK(Echo(t, "open", Deadline::After(2s)).value_or("") == "open");
  CHECK(t.connects.load() == 1);
}

TEST_CASE("redis mux: kill -9 fails every call in flight and new calls work after a restart") {
  keel::test::RedisServer server({"--enable-debug-command", "yes"});
  Options options = OptionsFor(server);
  auto client = Client::Create(options);
  REQUIRE(client.ok());
  REQUIRE((*client)->Command(Deadline::After(2s), "SET", "k", "v").ok());
  // Keep calls in flight: BLPOP is not multiplexed, so stall the connection with DEBUG SLEEP.
  std::vector<std::thread> callers;
  std::atomic<int> unavailable{0}, other{0}, unexplained{0};
  for (int i = 0; i < 8; ++i) {
    // The sleeper first, so every GET queues behind it on the one connection.
    if (i == 1) std::this_thread::sleep_for(50ms);
    callers.emplace_back([&, i] {
      auto r = i == 0 ? (*client)->Command(Deadline::After(3s), "DEBUG", "SLEEP", "2")
                      : (*client)->Command(Deadline::After(3s), "GET", "k");
      // Catch2's assertions are not thread-safe: count here, check on the main thread.
      if (!r.ok() && r.status().code() == absl::StatusCode::kUnavailable) {
        if (std::string(r.status().message()).find("may or may not have been applied") ==
            std::string::npos) {
          ++unexplained;
        }
        ++unavailable;
      } else {
        ++other;
      }
    });
  }
  std::this_thread::sleep_for(200ms);
  server.Kill();
  for (auto& th : callers) th.join();
  CHECK(unavailable.load() == 8);
  CHECK(unexplained.load() == 0);  // each says a write may have been applied
  REQUIRE(server.Start());
  // No user action: the next calls reconnect (after at most the reconnect backoff's cap).
  const auto until = SteadyTime::now() + 3s;
  bool ok = false;
  while (!ok && SteadyTime::now() < until) {
    auto r = (*client)->Command(Deadline::After(500ms), "PING");
    ok = r.ok();
    if (!ok) {
      CHECK(r.status().code() == absl::StatusCode::kUnavailable);
      std::this_thread::sleep_for(20ms);
    }
  }
  CHECK(ok);
  CHECK((*client)->Stats().transport.reconnects_total >= 1);
}

TEST_CASE("redis mux: a full connection refuses calls with RESOURCE_EXHAUSTED and a hint") {
  keel::test::RedisServer server;
  Transport t(OptionsFor(server), /*max_calls=*/8);
  REQUIRE(Echo(t, "warm", Deadline::After(2s)).ok());
  // The answered call's share of the budget comes back just after its caller was woken.
  while (t.mux->Stats().in_flight != 0) std::this_thread::sleep_for(1ms);
  server.Stop();
  std::vector<std::unique_ptr<Probe>> probes;
  for (int i = 0; i < 10; ++i) {
    probes.push_back(std::make_unique<Probe>(Deadline::After(300ms)));
    t.mux->Submit(probes.back()->call, Encode({"PING"}));
  }
  // The two over the cap are refused at once, without waiting for the server.
  for (int i = 8; i < 10; ++i) {
    REQUIRE(probes[i]->done.load());
    CHECK(probes[i]->code == absl::StatusCode::kResourceExhausted);
  }
  auto refused = std::make_shared<Call>(1, Deadline::After(300ms));
  t.mux->Submit(refused, Encode({"PING"}));
  CallResult r = refused->Wait("timed out");
  CHECK(r.status.code() == absl::StatusCode::kResourceExhausted);
  CHECK(keel::RetryAfter(r.status).has_value());
  CHECK_THAT(std::string(r.status.message()), Catch::Contains("mux.max_queued_calls 8"));
  REQUIRE(WaitAll(probes, 2s));
  for (int i = 0; i < 8; ++i) CHECK(probes[i]->code == absl::StatusCode::kDeadlineExceeded);
  server.Continue();
  CHECK(t.mux->Stats().rejected_full_total == 3);
  // Once the late replies are discarded the budget is back.
  const auto until = SteadyTime::now() + 2s;
  while (t.mux->Stats().in_flight != 0 && SteadyTime::now() < until) {
    std::this_thread::sleep_for(1ms);
  }
  CHECK(t.mux->Stats().late_replies_discarded_total == 8);
  auto again = Echo(t, "again", Deadline::After(2s));
  REQUIRE(again.ok());
  CHECK(*again == "again");
}

TEST_CASE("redis mux: a connection owing late replies for late_reply_timeout is replaced") {
  keel::test::RedisServer server;
  Options options = OptionsFor(server);
  options.late_reply_timeout = 200ms;
  Transport t(options);
  REQUIRE(Echo(t, "warm", Deadline::After(2s)).ok());
  server.Stop();
  CHECK(Echo(t, "stuck", Deadline::After(20ms)).status().code() ==
        absl::StatusCode::kDeadlineExceeded);
  std::this_thread::sleep_for(400ms);  // 200 ms past the deadline, plus housekeeping's period
  CHECK(t.mux->Stats().late_connections_closed_total == 1);
  server.Continue();
  auto fresh = Echo(t, "fresh", Deadline::After(2s));
  REQUIRE(fresh.ok());
  CHECK(*fresh == "fresh");
  CHECK(t.mux->Stats().reconnects_total == 1);
}

TEST_CASE("redis mux: the transport's series are registered under the pool's name") {
  keel::test::RedisServer server;
  Options options = OptionsFor(server);
  options.pool.name = "redis-mux";
  keel::MetricsRegistry registry;
  auto client = Client::Create(options, keel::SteadyClock(), &registry);
  REQUIRE(client.ok());
  REQUIRE((*client)->Command(Deadline::After(2s), "PING").ok());
  REQUIRE((*client)->Command(Deadline::After(2s), "PING").ok());
  const std::string text = registry.RenderPrometheus();
  CHECK_THAT(text, Catch::Contains("keel_redis_client_mux_calls_total{name=\"redis-mux\"} 2"));
  CHECK_THAT(text,
             Catch::Contains("keel_redis_client_mux_rejected_full_total{name=\"redis-mux\"} 0"));
  CHECK_THAT(text, Catch::Contains("# TYPE keel_redis_client_mux_in_flight gauge"));
  CHECK_THAT(text, Catch::Contains("keel_redis_client_mux_queued_bytes{name=\"redis-mux\"}"));
}

TEST_CASE("redis mux: shutdown completes the calls in flight with CANCELLED and refuses new ones") {
  keel::test::RedisServer server;
  Options options = OptionsFor(server);
  auto client = Client::Create(options);
  REQUIRE(client.ok());
  REQUIRE((*client)->Command(Deadline::After(2s), "PING").ok());
  server.Stop();  // nothing will answer
  std::atomic<int> cancelled{0};
  std::vector<std::thread> callers;
  for (int i = 0; i < 4; ++i) {
    callers.emplace_back([&] {
      auto r = (*client)->Command(Deadline::After(5s), "PING");
      if (r.status().code() == absl::StatusCode::kCancelled) ++cancelled;
    });
  }
  // Let the calls reach the connection, then shut down well before their deadline.
  while ((*client)->Stats().transport.in_flight < 4) std::this_thread::sleep_for(1ms);
  const auto start = SteadyTime::now();
  (*client)->Shutdown();
  for (auto& th : callers) th.join();
  CHECK(SteadyTime::now() - start < 1s);
  CHECK(cancelled.load() == 4);
  CHECK((*client)->Command(Deadline::After(1s), "PING").status().code() ==
        absl::StatusCode::kFailedPrecondition);
  server.Continue();
}
