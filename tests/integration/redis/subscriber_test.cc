// Subscriber against servers of the test's own: delivery, patterns, reconnect + resubscribe.
#include "keel/redis/subscriber.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "integration/redis/test_server.h"
#include "keel/redis/client.h"
#include "keel/sync.h"

using keel::Deadline;
using keel::redis::Message;
using keel::redis::Options;
using keel::redis::Subscriber;
using namespace std::chrono_literals;

namespace {

// Messages and reconnects seen by the subscriber thread, awaited by the test thread.
class Inbox {
 public:
  void Add(const Message& m) {
    {
      keel::MutexLock lock(mu_);
      messages_.push_back(m);
    }
    cv_.SignalAll();
  }
  void Reconnected() {
    {
      keel::MutexLock lock(mu_);
      ++reconnects_;
    }
    cv_.SignalAll();
  }
  // Waits (up to 5 s) until `n` messages arrived; returns them.
  std::vector<Message> Await(size_t n) {
    keel::MutexLock lock(mu_);
    keel::SteadyClock().WaitUntil(mu_, cv_, std::chrono::steady_clock::now() + 5s, [&] {
      mu_.AssertHeld();
      return messages_.size() >= n;
    });
    return messages_;
  }
  int AwaitReconnects(int n) {
    keel::MutexLock lock(mu_);
    keel::SteadyClock().WaitUntil(mu_, cv_, std::chrono::steady_clock::now() + 10s, [&] {
      mu_.AssertHeld();
      return reconnects_ >= n;
    });
    return reconnects_;
  }

 private:
  keel::Mutex mu_;
  keel::CondVar cv_;
  std::vector<Message> messages_ ABSL_GUARDED_BY(mu_);
  int reconnects_ ABSL_GUARDED_BY(mu_) = 0;
};

std::unique_ptr<Subscriber> MakeSubscriber(const std::string& url, Inbox& inbox) {
  auto sub = Subscriber::Create(*Options::FromUrl(url),
                                {.on_message = [&](const Message& m) { inbox.Add(m); },
                                 .on_reconnect = [&] { inbox.Reconnected(); }});
  REQUIRE(sub.ok());
  return std::move(*sub);
}

void Publish(keel::redis::Client& client, const std::string& channel, const std::string& msg) {
  REQUIRE(client.Command(Deadline::After(1s), "PUBLISH", channel, msg).ok());
}

}  // namespace

TEST_CASE("subscriber: delivers channel and pattern messages, binary-safe, until unsubscribed") {
  keel::test::RedisServer server;
  Inbox inbox;
  auto sub = MakeSubscriber(server.url(), inbox);
  auto client = std::move(keel::redis::Client::Create(*Options::FromUrl(server.url())).value());
  REQUIRE(sub->Subscribe(Deadline::After(2s), {"news"}).ok());
  REQUIRE(sub->PSubscribe(Deadline::After(2s), {"ev:*"}).ok());
  const std::string binary("a\0\r\nb", 5);
  Publish(*client, "news", binary);
  Publish(*client, "ev:1", "x");
  auto got = inbox.Await(2);
  REQUIRE(got.size() == 2);
  CHECK(got[0].channel == "news");
  CHECK(got[0].payload == binary);
  CHECK(got[0].pattern.empty());
  CHECK(got[1].channel == "ev:1");
  CHECK(got[1].pattern == "ev:*");

  REQUIRE(sub->Unsubscribe({"news"}).ok());
  // UNSUBSCRIBE is confirmed asynchronously: wait until the server counts no subscriber.
  for (int i = 0; i < 100; ++i) {
    auto n = client->Command(Deadline::After(1s), "PUBSUB", "NUMSUB", "news");
    if (n.ok() && n->elements()[1].integer() == 0) break;
    std::this_thread::sleep_for(10ms);
  }
  Publish(*client, "news", "dropped");
  Publish(*client, "ev:2", "y");
  got = inbox.Await(3);
  REQUIRE(got.size() == 3);
  CHECK(got[2].payload == "y");
  CHECK(sub->Stats().messages_total == 3);
}

TEST_CASE("subscriber: reconnects after a server restart, resubscribes, then calls on_reconnect") {
  keel::test::RedisServer server;
  Inbox inbox;
  auto sub = MakeSubscriber(server.url(), inbox);
  REQUIRE(sub->Subscribe(Deadline::After(2s), {"inval"}).ok());
  REQUIRE(sub->PSubscribe(Deadline::After(2s), {"p:*"}).ok());
  server.Kill();
  REQUIRE(server.Start());
  // At least one reconnect: a SIGKILLed server's listening socket may still complete one more
  // handshake while the process dies, which costs a second (harmless) reconnect.
  const int reconnects = inbox.AwaitReconnects(1);
  REQUIRE(reconnects >= 1);
  auto client = std::move(keel::redis::Client::Create(*Options::FromUrl(server.url())).value());
  // on_reconnect runs after SUBSCRIBE was sent; wait for the server to have registered it.
  for (int i = 0; i < 200; ++i) {
    auto n = client->Command(Deadline::After(1s), "PUBSUB", "NUMPAT");
    if (n.ok() && n->integer() == 1) break;
    std::this_thread::sleep_for(10ms);
  }
  Publish(*client, "inval", "k1");
  Publish(*client, "p:1", "k2");
  auto got = inbox.Await(2);
  REQUIRE(got.size() == 2);
  CHECK(got[0].payload == "k1");
  CHECK(got[1].payload == "k2");
  CHECK(sub->Stats().reconnects_total >= 1);
  CHECK(sub->Stats().connected);
}

TEST_CASE("subscriber: a subscription made while Redis is down applies once it is up") {
  keel::test::RedisServer server;
  server.Kill();
  Inbox inbox;
  auto sub = MakeSubscriber(server.url(), inbox);
  const auto s = sub->Subscribe(Deadline::After(100ms), {"later"});
  CHECK(s.code() == absl::StatusCode::kDeadlineExceeded);
  REQUIRE(server.Start());
  auto client = std::move(keel::redis::Client::Create(*Options::FromUrl(server.url())).value());
  REQUIRE(sub->Subscribe(Deadline::After(5s), {"later"}).ok());
  Publish(*client, "later", "hello");
  REQUIRE(inbox.Await(1).size() == 1);
  CHECK(inbox.AwaitReconnects(0) == 0);  // the first connection is not a reconnect
  sub->Shutdown();
  CHECK(sub->Subscribe(Deadline::After(1s), {"x"}).code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("subscriber: a hook that throws is counted and delivery goes on") {
  keel::test::RedisServer server;
  Inbox inbox;
  auto sub =
      Subscriber::Create(*Options::FromUrl(server.url()), {.on_message = [&](const Message& m) {
        inbox.Add(m);
        if (m.payload == "bad") throw std::runtime_error("hook failed");
        if (m.payload == "worse") throw 42;  // not even an exception
      }});
  REQUIRE(sub.ok());
  REQUIRE((*sub)->Subscribe(Deadline::After(2s), {"c"}).ok());
  auto client = std::move(keel::redis::Client::Create(*Options::FromUrl(server.url())).value());
  Publish(*client, "c", "bad");
  Publish(*client, "c", "worse");
  Publish(*client, "c", "good");
  const auto got = inbox.Await(3);
  REQUIRE(got.size() == 3);
  CHECK(got[2].payload == "good");
  const auto stats = (*sub)->Stats();
  CHECK(stats.hook_errors_total == 2);
  CHECK(stats.messages_total == 3);
  CHECK(stats.connected);
  // Still subscribing and confirming after the throws: the thread is not wedged.
  CHECK((*sub)->Subscribe(Deadline::After(2s), {"d"}).ok());
}

TEST_CASE("subscriber: Subscribe waits on the deadline's own clock") {
  // A ManualClock deadline that never advances on a subscriber whose server is absent: the wait
  // ends only when the test moves that clock, whatever the subscriber's own (steady) clock says.
  keel::ManualClock manual;
  auto sub = std::move(
      Subscriber::Create(
          *Options::FromUrl("redis://127.0.0.1:" + std::to_string(keel::test::FreeLoopbackPort())),
          {.on_message = [](const Message&) {}})
          .value());
  std::atomic<bool> done{false};
  absl::Status status;
  std::thread waiter([&] {
    status = sub->Subscribe(Deadline::After(1s, manual), {"x"});
    done = true;
  });
  std::this_thread::sleep_for(1200ms);  // past 1 s on the steady clock
  CHECK_FALSE(done.load());
  manual.Advance(1s);
  waiter.join();
  CHECK(status.code() == absl::StatusCode::kDeadlineExceeded);
}
