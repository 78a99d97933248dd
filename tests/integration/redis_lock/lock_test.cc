// redis::Lock against a real Redis: exclusion, fencing, release by a stale holder, validity, the
// watchdog, lease loss, and the unlock/renewal race.
#include "keel/redis/lock.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "integration/redis/test_server.h"
#include "integration/redis_lock/helpers.h"
#include "keel/async/timer.h"
#include "support/tcp_proxy.h"

using keel::Deadline;
using keel::redis::Lock;
using keel::redis::LockGuard;
using keel::test::MakeLock;
using keel::test::MustAcquire;
using keel::test::UniqueName;
using namespace std::chrono_literals;

TEST_CASE("redis lock excludes a second holder until released, with one round trip each way",
          "[redis_lock]") {
  auto client = keel::test::SharedRedisClient();
  keel::test::TcpProxy proxy(
      keel::redis::Options::FromUrl(keel::test::RequireEnv("KEEL_TEST_REDIS_URL"))->server.port);
  auto counted = keel::test::MakeRedisClient("redis://127.0.0.1:" + std::to_string(proxy.port()));
  REQUIRE(counted->Command(Deadline::After(2s), "PING").ok());
  keel::MetricsRegistry metrics;
  auto made = Lock::Create({.name = UniqueName("basic"), .ttl = 5s}, *counted, keel::SteadyClock(),
                           &metrics);
  REQUIRE(made.ok());
  auto lock = std::move(*made);
  auto other = MakeLock(*client, {.name = lock->options().name, .ttl = 5s});
  // The first run of each script on a server that does not know it yet (a fresh server, or after
  // SCRIPT FLUSH) costs a second round trip, the EVAL fallback: count the round trips of a
  // server that knows them.
  {
    auto warm_lock = MakeLock(*counted, {.name = UniqueName("warm"), .ttl = 5s});
    LockGuard warm = MustAcquire(*warm_lock);
    REQUIRE(warm.Release().ok());
  }

  const uint64_t before = proxy.flights();
  LockGuard guard = MustAcquire(*lock);
  CHECK(proxy.flights() - before == 1);  // SET NX PX + INCR: one script, one round trip
  REQUIRE(guard.fencing_token().has_value());
  CHECK(guard.held());
  CHECK_FALSE(guard.lost());

  auto held = other->TryAcquire(Deadline::After(2s));
  REQUIRE(held.ok());
  CHECK_FALSE(held->has_value());  // a value, not an error
  // The key holds a 128-bit token (32 hex digits), with the ttl as its expiry.
  auto token = client->Command(Deadline::After(2s), "GET", lock->RedisKey());
  REQUIRE(token.ok());
  CHECK(token->str().size() == 32);
  auto pttl = client->Command(Deadline::After(2s), "PTTL", lock->RedisKey());
  CHECK(pttl->integer() > 4'000);
  CHECK(pttl->integer() <= 5'000);
  // The fencing counter never expires; both keys share one hash tag.
  CHECK(client->Command(Deadline::After(2s), "PTTL", lock->FencingKey())->integer() == -1);
  CHECK(lock->FencingKey().rfind(lock->RedisKey(), 0) == 0);

  const uint64_t before_release = proxy.flights();
  CHECK(guard.Release().ok());
  CHECK(proxy.flights() - before_release == 1);
  CHECK_FALSE(guard.held());
  CHECK(absl::IsFailedPrecondition(guard.Release()));
  CHECK(client->Command(Deadline::After(2s), "EXISTS", lock->RedisKey())->integer() == 0);
  auto again = other->TryAcquire(Deadline::After(2s));
  REQUIRE(again.ok());
  CHECK(again->has_value());

  const keel::redis::LockStats stats = lock->Stats();
  CHECK(stats.acquired_total == 1);
  CHECK(stats.released_total == 1);
  const std::string text = metrics.RenderPrometheus();
  const std::string labels = "{backend=\"redis\",name=\"" + lock->options().name + "\"}";
  CHECK(text.find("keel_lock_acquired_total" + labels + " 1") != std::string::npos);
  CHECK(text.find("keel_lock_released_total" + labels + " 1") != std::string::npos);
  CHECK(text.find("keel_lock_lost_total" + labels + " 0") != std::string::npos);
  CHECK(other->Stats().contended_total == 1);
}

TEST_CASE("redis lock fencing tokens strictly increase across holders", "[redis_lock]") {
  auto client = keel::test::SharedRedisClient();
  const std::string name = UniqueName("fence");
  auto a = MakeLock(*client, {.name = name, .ttl = 5s});
  auto b = MakeLock(*client, {.name = name, .ttl = 5s});
  int64_t last = 0;
  for (int i = 0; i < 10; ++i) {
    LockGuard g = MustAcquire(i % 2 == 0 ? *a : *b);
    REQUIRE(g.fencing_token().has_value());
    CHECK(*g.fencing_token() > last);
    last = *g.fencing_token();
  }
  // A contended attempt does not consume a token.
  LockGuard g = MustAcquire(*a);
  CHECK_FALSE(b->TryAcquire(Deadline::After(2s))->has_value());
  const int64_t held = *g.fencing_token();
  CHECK(g.Release().ok());
  CHECK(*MustAcquire(*b).fencing_token() == held + 1);
}

TEST_CASE("redis lock: a stale holder's release and extend are ABORTED and leave the new holder",
          "[redis_lock]") {
  auto client = keel::test::SharedRedisClient();
  const std::string name = UniqueName("stale");
  auto a = MakeLock(*client, {.name = name, .ttl = 5s});
  auto b = MakeLock(*client, {.name = name, .ttl = 5s});
  LockGuard stale = MustAcquire(*a);
  // The lease runs out (what a pause past the ttl does), and someone else takes the lock.
  REQUIRE(client->Command(Deadline::After(2s), "DEL", a->RedisKey())->integer() == 1);
  LockGuard fresh = MustAcquire(*b);
  CHECK(*fresh.fencing_token() > *stale.fencing_token());

  const absl::Status extended = stale.Extend(Deadline::After(2s));
  CHECK(absl::IsAborted(extended));
  CHECK(extended.message().find("redis lock \"" + name + "\": ") == 0);
  const absl::Status released = stale.Release(Deadline::After(2s));
  CHECK(absl::IsAborted(released));
  CHECK(a->Stats().release_aborted_total == 1);
  // The new holder's lease is untouched.
  auto token = client->Command(Deadline::After(2s), "GET", b->RedisKey());
  REQUIRE(token.ok());
  CHECK_FALSE(token->is_nil());
  CHECK(fresh.Release().ok());
}

TEST_CASE("redis lock Acquire waits for the holder and gives up at the deadline", "[redis_lock]") {
  auto client = keel::test::SharedRedisClient();
  const std::string name = UniqueName("wait");
  auto a = MakeLock(*client, {.name = name, .ttl = 5s});
  auto b = MakeLock(
      *client, {.name = name,
                .ttl = 5s,
                .retry = {.kind = keel::Backoff::Kind::kFullJitter, .base = 5ms, .cap = 20ms}});
  std::optional<LockGuard> holder(MustAcquire(*a));
  const auto t0 = std::chrono::steady_clock::now();
  auto timed_out = b->Acquire(Deadline::After(150ms));
  const auto waited = std::chrono::steady_clock::now() - t0;
  CHECK(absl::IsDeadlineExceeded(timed_out.status()));
  CHECK(timed_out.status().message().find("held by someone else") != std::string::npos);
  CHECK(waited >= 150ms);
  CHECK(waited < 1s);

  std::thread release([&] {
    std::this_thread::sleep_for(100ms);
    holder.reset();
  });
  auto got = b->Acquire(Deadline::After(3s));
  release.join();
  REQUIRE(got.ok());
  CHECK(got->held());
}

TEST_CASE("redis lock excludes threads: a non-atomic read-modify-write under it loses nothing",
          "[redis_lock]") {
  auto client = keel::test::SharedRedisClient(8);
  const std::string name = UniqueName("threads");
  auto lock = MakeLock(
      *client, {.name = name,
                .ttl = 5s,
                .retry = {.kind = keel::Backoff::Kind::kFullJitter, .base = 1ms, .cap = 5ms}});
  const std::string counter = "{keel:lock:" + name + "}:counter";
  constexpr int kThreads = 4;
  constexpr int kSections = 50;
  std::atomic<int> inside{0};
  std::atomic<int> overlaps{0};
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kSections; ++i) {
        auto guard = lock->Acquire(Deadline::After(10s));
        if (!guard.ok()) {
          failures.fetch_add(1);
          continue;
        }
        if (inside.fetch_add(1) != 0) overlaps.fetch_add(1);
        auto v = client->Command(Deadline::After(2s), "GET", counter);
        const int64_t n = v.ok() && !v->is_nil() ? std::stoll(v->str()) : 0;
        (void)client->Command(Deadline::After(2s), "SET", counter, n + 1);
        inside.fetch_sub(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  CHECK(failures.load() == 0);
  CHECK(overlaps.load() == 0);
  CHECK(client->Command(Deadline::After(2s), "GET", counter)->str() ==
        std::to_string(kThreads * kSections));
  CHECK(lock->Stats().acquired_total == kThreads * kSections);
}

TEST_CASE("redis lock validity is ttl minus elapsed minus the drift allowance, on the lock's clock",
          "[redis_lock]") {
  auto client = keel::test::SharedRedisClient();
  keel::ManualClock clock;
  auto lock = MakeLock(*client, {.name = UniqueName("validity"), .ttl = 10s}, clock);
  LockGuard guard = MustAcquire(*lock);
  const auto drift = std::chrono::milliseconds(10s) / 100 + 2ms;
  CHECK(guard.Validity() == 10s - drift);
  clock.Advance(4s);
  CHECK(guard.Validity() == 6s - drift);
  // An extension restarts the lease from when it was sent.
  REQUIRE(guard.Extend(Deadline::After(2s)).ok());
  CHECK(guard.Validity() == 10s - drift);
  clock.Advance(10s);
  CHECK(guard.Validity() == 0s);
  REQUIRE(guard.Release().ok());
  CHECK(guard.Validity() == 0s);
}

TEST_CASE("redis lock watchdog keeps a guard held well past its ttl", "[redis_lock]") {
  auto client = keel::test::SharedRedisClient();
  const std::string name = UniqueName("watchdog");
  keel::test::LostProbe lost;
  auto lock =
      MakeLock(*client, {.name = name, .ttl = 300ms, .watchdog = true, .on_lost = lost.callback()});
  auto other = MakeLock(*client, {.name = name, .ttl = 300ms});
  LockGuard guard = MustAcquire(*lock);
  // Four ttls: without extensions the key would be gone after the first.
  const auto until = std::chrono::steady_clock::now() + 1200ms;
  while (std::chrono::steady_clock::now() < until) {
    CHECK_FALSE(other->TryAcquire(Deadline::After(1s))->has_value());
    std::this_thread::sleep_for(25ms);
  }
  CHECK(guard.Validity() > 0s);
  CHECK_FALSE(guard.lost());
  CHECK_FALSE(guard.cancellation().cancelled());
  CHECK(lock->Stats().extended_total >= 8);  // every ttl/3 = 100 ms
  CHECK(lock->Stats().lost_total == 0);
  CHECK(guard.Release().ok());
  CHECK_FALSE(lost.future.ready());
  CHECK(other->TryAcquire(Deadline::After(1s))->has_value());
}

TEST_CASE("redis lock watchdogs of one client share the client's timer thread", "[redis_lock]") {
  auto client = keel::test::MakeRedisClient(keel::test::RequireEnv("KEEL_TEST_REDIS_URL"));
  absl::StatusOr<keel::Timer*> shared = client->SharedTimer();
  REQUIRE(shared.ok());
  CHECK(client->SharedTimer().value() == *shared);  // one per client
  const uint64_t before = (*shared)->Stats().scheduled_total;
  auto a = MakeLock(*client, {.name = UniqueName("shared-a"), .ttl = 3s, .watchdog = true});
  auto b = MakeLock(*client, {.name = UniqueName("shared-b"), .ttl = 3s, .watchdog = true});
  LockGuard ga = MustAcquire(*a);
  LockGuard gb = MustAcquire(*b);
  // Both guards' first extensions are waiting on the client's timer.
  CHECK((*shared)->Stats().scheduled_total >= before + 2);
  CHECK((*shared)->Stats().pending >= 2);
  REQUIRE(ga.Release().ok());
  REQUIRE(gb.Release().ok());
  CHECK((*shared)->Stats().pending == 0);
}

TEST_CASE("redis lock watchdog reports a lease whose key vanished: on_lost and the token cancelled",
          "[redis_lock]") {
  auto client = keel::test::SharedRedisClient();
  keel::test::LostProbe lost;
  auto lock = MakeLock(
      *client,
      {.name = UniqueName("vanished"), .ttl = 300ms, .watchdog = true, .on_lost = lost.callback()});
  LockGuard guard = MustAcquire(*lock);
  const keel::CancellationToken token = guard.cancellation();
  CHECK_FALSE(token.cancelled());
  REQUIRE(client->Command(Deadline::After(2s), "DEL", lock->RedisKey())->integer() == 1);
  // The next extension (within ttl/3) finds the token gone.
  const absl::Status reason = lost.future.Get(Deadline::After(2s));
  CHECK(absl::IsAborted(reason));
  CHECK(guard.lost());
  CHECK(token.cancelled());
  CHECK(guard.Validity() == 0s);
  CHECK(lock->Stats().lost_total == 1);
  CHECK(absl::IsAborted(guard.Extend(Deadline::After(1s))));
  CHECK(absl::IsAborted(guard.Release(Deadline::After(1s))));
}

TEST_CASE("redis lock: an on_lost that throws is counted, and the guard is still lost",
          "[redis_lock]") {
  auto client = keel::test::SharedRedisClient();
  auto lock = MakeLock(*client, {.name = UniqueName("throws"),
                                 .ttl = 300ms,
                                 .watchdog = true,
                                 .on_lost = [](const keel::redis::LockLost&) {
                                   throw std::runtime_error("listener bug");
                                 }});
  LockGuard guard = MustAcquire(*lock);
  REQUIRE(client->Command(Deadline::After(2s), "DEL", lock->RedisKey())->integer() == 1);
  const auto give_up = std::chrono::steady_clock::now() + 3s;
  while (lock->Stats().on_lost_exceptions_total == 0 &&
         std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(5ms);
  }
  CHECK(lock->Stats().on_lost_exceptions_total == 1);
  CHECK(guard.lost());
  CHECK(guard.cancellation().cancelled());
  // The watchdog's thread survived: another guard of the lock is still extended.
  CHECK(absl::IsAborted(guard.Release(Deadline::After(1s))));
  LockGuard next = MustAcquire(*lock);
  const uint64_t extended = lock->Stats().extended_total;
  const auto until = std::chrono::steady_clock::now() + 3s;
  while (lock->Stats().extended_total == extended && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(5ms);
  }
  CHECK(lock->Stats().extended_total > extended);
}

TEST_CASE("redis lock watchdog reports a lease it cannot extend while Redis is paused",
          "[redis_lock]") {
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  keel::test::LostProbe lost;
  auto lock = MakeLock(
      *client,
      {.name = UniqueName("paused"), .ttl = 300ms, .watchdog = true, .on_lost = lost.callback()});
  LockGuard guard = MustAcquire(*lock);
  server.Stop();
  const auto t0 = std::chrono::steady_clock::now();
  const absl::Status reason = lost.future.Get(Deadline::After(3s));
  const auto took = std::chrono::steady_clock::now() - t0;
  server.Continue();
  CHECK(absl::IsDeadlineExceeded(reason));
  CHECK(guard.lost());
  CHECK(guard.cancellation().cancelled());
  // Declared lost when the lease's validity ran out (ttl - 5 ms after the acquire), not later.
  CHECK(took < 1s);
  CHECK(lock->Stats().extend_failures_total >= 1);
}

TEST_CASE("redis lock watchdog reports a lease it cannot extend once Redis is killed",
          "[redis_lock]") {
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  keel::test::LostProbe lost;
  auto lock = MakeLock(
      *client,
      {.name = UniqueName("killed"), .ttl = 300ms, .watchdog = true, .on_lost = lost.callback()});
  LockGuard guard = MustAcquire(*lock);
  server.Kill();
  // Every extension now fails at once; they are retried until the validity runs out.
  const absl::Status reason = lost.future.Get(Deadline::After(3s));
  CHECK(absl::IsUnavailable(reason));
  CHECK(guard.lost());
  CHECK(guard.cancellation().cancelled());
  CHECK(lock->Stats().extend_failures_total >= 2);
  CHECK_FALSE(guard.Release(Deadline::After(200ms)).ok());
}

TEST_CASE("redis lock: a guard released while its extension is in flight is never extended again",
          "[redis_lock]") {
  // The watchdog runs on a ManualClock timer, so the test decides when an extension starts; the
  // server is paused so that extension stays in flight while Release runs.
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  keel::ManualClock clock;
  auto timer = keel::Timer::Create({.name = "lock-race"}, clock).value();
  auto lock = MakeLock(*client, {.name = UniqueName("race"), .ttl = 3s, .watchdog = true}, clock,
                       timer.get());
  std::optional<LockGuard> guard(MustAcquire(*lock));
  CHECK(timer->Stats().pending == 1);

  server.Stop();
  clock.Advance(1s);  // ttl/3: the watchdog sends its extension
  const auto give_up = std::chrono::steady_clock::now() + 5s;
  while (client->Stats().transport.in_flight == 0 && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::yield();
  }
  REQUIRE(client->Stats().transport.in_flight == 1);

  std::atomic<bool> released{false};
  absl::Status release_status;
  std::thread releaser([&] {
    release_status = guard->Release();
    released.store(true);
  });
  // Release waits for the extension's answer before it sends the delete.
  std::this_thread::sleep_for(100ms);
  CHECK_FALSE(released.load());
  CHECK(client->Stats().transport.in_flight == 1);
  server.Continue();
  releaser.join();
  CHECK(release_status.ok());

  // The extension was answered after Release began: no further tick was scheduled, and time
  // passing sends nothing.
  CHECK(timer->Stats().pending == 0);
  const uint64_t scheduled = timer->Stats().scheduled_total;
  const uint64_t calls = client->Stats().transport.calls_total;
  clock.Advance(10s);
  CHECK(timer->Stats().scheduled_total == scheduled);
  CHECK(client->Stats().transport.calls_total == calls);
  CHECK(lock->Stats().lost_total == 0);
  CHECK(client->Command(Deadline::After(2s), "EXISTS", lock->RedisKey())->integer() == 0);
}

TEST_CASE(
    "redis lock is Lockable: try_lock, try_lock_for, try_lock_until, and destroyed while held "
    "through lock() it releases first",
    "[redis_lock]") {
  auto client = keel::test::SharedRedisClient();
  const std::string name = UniqueName("lockable");
  std::string key;
  {
    auto lock = MakeLock(*client, {.name = name, .ttl = 5s});
    key = lock->RedisKey();
    lock->lock();
    CHECK(client->Command(Deadline::After(2s), "EXISTS", key)->integer() == 1);
    auto other = MakeLock(*client, {.name = name});
    CHECK_FALSE(other->try_lock());
    CHECK_FALSE(other->try_lock_for(0s));
  }
  CHECK(client->Command(Deadline::After(2s), "EXISTS", key)->integer() == 0);
  // A time already past still tries once, as std::timed_mutex does.
  auto again = MakeLock(*client, {.name = name});
  CHECK(again->try_lock_until(std::chrono::steady_clock::now() - 1s));
  again->unlock();
  CHECK(client->Command(Deadline::After(2s), "EXISTS", key)->integer() == 0);
}
