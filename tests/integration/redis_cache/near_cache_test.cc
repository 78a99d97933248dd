// keel::redis::NearCacheTier: local tiers that Redis invalidates (CLIENT TRACKING BCAST through
// the Subscriber's on_connect hook), against a redis-server of the test's own. Two caches with
// their own clients and invalidation connections stand for two processes.
#include "keel/redis/near_cache.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "integration/redis/client_list.h"
#include "integration/redis/test_server.h"
#include "integration/redis_limits/helpers.h"
#include "keel/cache/cache.h"
#include "keel/redis/cache_store.h"
#include "support/poll.h"

using keel::Deadline;
using keel::cache::Cache;
using keel::redis::NearCacheMode;
using keel::redis::NearCacheTier;
using namespace std::chrono_literals;

namespace {

using StringCache = Cache<std::string>;

template <typename Pred>
bool Within(std::chrono::milliseconds limit, Pred done) {
  return keel::test::PollUntil(done, limit);
}

// One "process": its own client, near tier and Redis tier.
struct Process {
  Process(const std::string& url, const std::string& name,
          NearCacheMode mode = NearCacheMode::kBroadcast) {
    auto o = keel::redis::Options::FromUrl(url).value();
    o.connect_timeout = 200ms;
    o.command_timeout = 200ms;
    client = keel::redis::Client::Create(o).value();
    auto n = NearCacheTier<std::string>::Create(
        {.name = name, .local = {.max_entries = 100}, .mode = mode}, o);
    REQUIRE(n.ok());
    near = n->get();
    // Per key, the Redis tier reads through the near tier's client (its reads are tracked).
    reads = mode == NearCacheMode::kPerKey ? (*n)->client() : nullptr;
    REQUIRE((mode == NearCacheMode::kPerKey) == (reads != nullptr));
    StringCache::Tiers tiers;
    tiers.push_back(std::move(*n));
    tiers.push_back(keel::redis::CacheTier<std::string>::Create({.name = name},
                                                                reads != nullptr ? *reads : *client)
                        .value());
    cache = StringCache::Create({.name = name, .ttl = 60s}, std::move(tiers)).value();
  }
  bool Tracking() {
    return Within(10s, [&] { return near->Stats().tracking; });
  }
  std::optional<std::string> Local(const std::string& key) {
    auto v = near->store().Get(key);
    if (!v || !*v) return std::nullopt;
    return **v;
  }
  // Loads `key` as `value` (a miss: the cache writes it to Redis), waits for the invalidation
  // this process's own write sends it, then warms the local tier. Without the wait the local copy
  // can be a fill made before that invalidation, which then drops it; per key Redis has also
  // forgotten the key by then (an invalidation ends its tracking until the next read from Redis),
  // so no later write would be sent here.
  bool Fill(const std::string& key, const std::string& value) {
    const uint64_t before = near->Stats().invalidations_total;
    if (Read(key, value) != value) return false;
    if (!Within(1s, [&] { return near->Stats().invalidations_total > before; })) return false;
    return Warm(key, value);
  }
  // Reads `key` until the local tier holds `value`: a fill is dropped when an invalidation of the
  // key (this process's own earlier write's, delivered late) arrives while it is made.
  bool Warm(const std::string& key, const std::string& value) {
    return Within(2s, [&] {
      Read(key);
      return Local(key) == value;
    });
  }
  std::string Read(const std::string& key, const std::string& load_as = "loaded") {
    auto v = cache->GetOrLoad(Deadline::After(1s), key, [&](Deadline) {
      ++loads;
      return absl::StatusOr<std::string>(load_as);
    });
    REQUIRE(v.ok());
    return *v;
  }

  std::unique_ptr<keel::redis::Client> client;
  std::shared_ptr<keel::redis::Client> reads;  // kPerKey: outlives the tiers built on it
  NearCacheTier<std::string>* near = nullptr;
  std::unique_ptr<StringCache> cache;
  int loads = 0;
};

}  // namespace

TEST_CASE(
    "near cache: a write in one process drops the key from another's local tier within "
    "100 ms",
    "[redis_cache]") {
  const NearCacheMode mode = GENERATE(NearCacheMode::kBroadcast, NearCacheMode::kPerKey);
  INFO((mode == NearCacheMode::kPerKey ? "per key" : "broadcast"));
  keel::test::RedisServer server;
  Process a(server.url(), "near", mode), b(server.url(), "near", mode);
  REQUIRE(a.Tracking());
  REQUIRE(b.Tracking());
  // A's own write to Redis invalidates its local copy; the next read fills it from Redis.
  REQUIRE(a.Fill("k", "v1"));
  CHECK(b.Read("k") == "v1");
  REQUIRE(b.Warm("k", "v1"));

  const auto start = std::chrono::steady_clock::now();
  REQUIRE(b.cache
              ->Put(Deadline::After(1s), "k", "v2",
                    [](Deadline, const std::string&) { return absl::OkStatus(); })
              .ok());
  REQUIRE(Within(1s, [&] { return !a.Local("k").has_value(); }));
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(took < 100ms);
  CHECK(a.Read("k") == "v2");  // no stale read
  CHECK(a.loads == 1);
  CHECK(a.near->Stats().invalidations_total >= 2);

  // Any write to the Redis key counts, keel's or not; other caches' keys do not.
  REQUIRE(a.Warm("k", "v2"));
  REQUIRE(a.client->Command(Deadline::After(1s), "SET", "keel:cache:other:k", "x").ok());
  REQUIRE(a.client->Command(Deadline::After(1s), "DEL", "keel:cache:near:k").ok());
  REQUIRE(Within(1s, [&] { return !a.Local("k").has_value(); }));
  // FLUSHALL clears the whole local tier.
  REQUIRE(a.Fill("j", "loaded"));
  REQUIRE(a.client->Command(Deadline::After(1s), "FLUSHALL").ok());
  CHECK(Within(1s, [&] { return !a.Local("j").has_value(); }));
}

TEST_CASE(
    "near cache: a Redis restart clears the local tier on reconnect, with no stale read "
    "after it",
    "[redis_cache]") {
  const NearCacheMode mode = GENERATE(NearCacheMode::kBroadcast, NearCacheMode::kPerKey);
  INFO((mode == NearCacheMode::kPerKey ? "per key" : "broadcast"));
  keel::test::RedisServer server;
  Process a(server.url(), "restart", mode);
  REQUIRE(a.Tracking());
  REQUIRE(a.Fill("k", "old"));
  const uint64_t clears = a.near->Stats().clears_total;
  server.Kill();
  // The dropped connection clears the tier and stops it from keeping anything.
  REQUIRE(Within(5s, [&] { return !a.near->Stats().tracking; }));
  CHECK(!a.Local("k").has_value());
  REQUIRE(server.Start());
  REQUIRE(a.Tracking());
  CHECK(a.near->Stats().clears_total >= clears + 2);
  // The restarted Redis is empty: the read loads the source of truth's current value.
  CHECK(a.Read("k", "new") == "new");
  CHECK(a.loads == 2);
}

namespace {

// A Redis tier that lets the test act between its read and the fill of the tiers above.
class InterposedTier final : public keel::cache::Tier<std::string> {
 public:
  InterposedTier(std::unique_ptr<keel::cache::Tier<std::string>> inner,
                 std::function<void()> after_get)
      : inner_(std::move(inner)), after_get_(std::move(after_get)) {}
  std::string_view kind() const override { return "redis"; }
  absl::StatusOr<std::optional<Hit>> Get(Deadline d, std::string_view key) override {
    auto got = inner_->Get(d, key);
    after_get_();
    return got;
  }
  absl::Status Set(Deadline d, std::string_view key, const std::optional<std::string>& v,
                   keel::Duration ttl, keel::Duration load_time) override {
    return inner_->Set(d, key, v, ttl, load_time);
  }
  absl::Status Erase(Deadline d, std::string_view key) override { return inner_->Erase(d, key); }

 private:
  std::unique_ptr<keel::cache::Tier<std::string>> inner_;
  std::function<void()> after_get_;
};

}  // namespace

TEST_CASE("near cache: a fill that races with an invalidation of its key is not kept",
          "[redis_cache]") {
  keel::test::RedisServer server;
  auto o = keel::redis::Options::FromUrl(server.url()).value();
  auto client = keel::redis::Client::Create(o).value();
  auto other = keel::redis::Client::Create(o).value();  // "another process"
  auto n = NearCacheTier<std::string>::Create({.name = "race", .local = {.max_entries = 10}}, o);
  REQUIRE(n.ok());
  NearCacheTier<std::string>* near = n->get();
  REQUIRE(Within(10s, [&] { return near->Stats().tracking; }));
  bool interpose = false;
  StringCache::Tiers tiers;
  tiers.push_back(std::move(*n));
  tiers.push_back(std::make_unique<InterposedTier>(
      keel::redis::CacheTier<std::string>::Create({.name = "race"}, *client).value(), [&] {
        if (!interpose) return;
        // Another process writes the key after this read of it, before the fill above: its
        // invalidation arrives while the old value is on its way into the local tier.
        const uint64_t before = near->Stats().invalidations_total;
        REQUIRE(other->Command(Deadline::After(1s), "SET", "keel:cache:race:k", "vnew").ok());
        REQUIRE(Within(1s, [&] { return near->Stats().invalidations_total > before; }));
      }));
  auto cache = StringCache::Create({.name = "race", .ttl = 60s}, std::move(tiers)).value();
  REQUIRE(client->Command(Deadline::After(1s), "SET", "keel:cache:race:k", "vold").ok());
  interpose = true;
  const auto loader = [](Deadline) { return absl::StatusOr<std::string>("loaded"); };
  // The read itself happened before the write: the old value is a fair answer to it...
  CHECK(cache->GetOrLoad(Deadline::After(1s), "k", loader).value() == "old");
  // ...but it must not stay in the local tier, where nothing would ever invalidate it again.
  CHECK(!near->store().Get("k").has_value());
  CHECK(near->Stats().fills_skipped_total >= 1);
  interpose = false;
  CHECK(cache->GetOrLoad(Deadline::After(1s), "k", loader).value() == "new");
}

namespace {

// The id of the one connection of `admin`'s server whose CLIENT LIST flags contain `flag`.
std::string IdWithFlag(keel::redis::Client& admin, char flag) {
  std::string found;
  for (auto& c : keel::test::ClientList(admin)) {
    if (c["flags"].find(flag) == std::string::npos) continue;
    REQUIRE(found.empty());  // exactly one
    found = c["id"];
  }
  REQUIRE(!found.empty());
  return found;
}

}  // namespace

TEST_CASE("near cache per key: only keys this process read are sent to it, unlike broadcast",
          "[redis_cache]") {
  keel::test::RedisServer server;
  Process per_key(server.url(), "only", NearCacheMode::kPerKey);
  Process bcast(server.url(), "only", NearCacheMode::kBroadcast);
  REQUIRE(per_key.Tracking());
  REQUIRE(bcast.Tracking());
  auto other =
      keel::redis::Client::Create(keel::redis::Options::FromUrl(server.url()).value()).value();
  REQUIRE(other->Command(Deadline::After(1s), "SET", "keel:cache:only:k", "vk").ok());
  REQUIRE(per_key.Warm("k", "k"));
  REQUIRE(bcast.Warm("k", "k"));
  const uint64_t per_key_before = per_key.near->Stats().invalidations_total;
  const uint64_t bcast_before = bcast.near->Stats().invalidations_total;
  // Neither process ever read "unread"; both hold "k". Writes are delivered in order, so once
  // "k"'s invalidation is in, "unread"'s would have been too.
  REQUIRE(other->Command(Deadline::After(1s), "SET", "keel:cache:only:unread", "v").ok());
  REQUIRE(other->Command(Deadline::After(1s), "SET", "keel:cache:only:k", "vk2").ok());
  REQUIRE(Within(1s, [&] { return !per_key.Local("k") && !bcast.Local("k"); }));
  CHECK(per_key.near->Stats().invalidations_total == per_key_before + 1);
  CHECK(bcast.near->Stats().invalidations_total == bcast_before + 2);
  CHECK(per_key.Read("k") == "k2");
}

TEST_CASE(
    "near cache per key: after its invalidation connection is killed the reading "
    "connection is pointed at the new one and invalidations still arrive",
    "[redis_cache]") {
  keel::test::RedisServer server;
  Process a(server.url(), "repoint", NearCacheMode::kPerKey);
  Process b(server.url(), "repoint", NearCacheMode::kBroadcast);  // the writer
  REQUIRE(a.Tracking());
  auto admin =
      keel::redis::Client::Create(keel::redis::Options::FromUrl(server.url()).value()).value();
  REQUIRE(a.Fill("k", "v1"));
  const uint64_t repoints = a.near->Stats().repoints_total;
  const uint64_t clears = a.near->Stats().clears_total;
  // Kill a's subscriber (the one pubsub connection of the per-key process: b's is 'P' too, so
  // kill by the tracking redirect target instead: the connection a's reader redirects to).
  auto info = a.reads->Command(Deadline::After(1s), "CLIENT", "TRACKINGINFO");
  REQUIRE(info.ok());
  REQUIRE(info->elements().size() >= 4);
  const int64_t redirect = info->elements()[3].integer();
  REQUIRE(redirect > 0);
  REQUIRE(admin->Command(Deadline::After(1s), "CLIENT", "KILL", "ID", redirect).ok());
  REQUIRE(Within(5s, [&] { return a.near->Stats().repoints_total > repoints; }));
  REQUIRE(a.Tracking());
  CHECK(a.near->Stats().clears_total >= clears + 2);
  CHECK(!a.Local("k").has_value());  // cleared: invalidations may have been missed
  auto again = a.reads->Command(Deadline::After(1s), "CLIENT", "TRACKINGINFO");
  REQUIRE(again.ok());
  CHECK(again->elements()[3].integer() != redirect);
  // Tracking works through the new invalidation connection.
  REQUIRE(a.Warm("k", "v1"));
  REQUIRE(b.cache
              ->Put(Deadline::After(1s), "k", "v2",
                    [](Deadline, const std::string&) { return absl::OkStatus(); })
              .ok());
  REQUIRE(Within(1s, [&] { return !a.Local("k").has_value(); }));
  CHECK(a.Read("k") == "v2");
}

TEST_CASE(
    "near cache per key: losing the reading connection clears the tier, and tracking "
    "comes back on its replacement",
    "[redis_cache]") {
  keel::test::RedisServer server;
  Process a(server.url(), "reader", NearCacheMode::kPerKey);
  REQUIRE(a.Tracking());
  auto admin =
      keel::redis::Client::Create(keel::redis::Options::FromUrl(server.url()).value()).value();
  REQUIRE(a.Fill("k", "v1"));
  // The reader is the only connection with tracking on ('t') in per-key mode.
  REQUIRE(
      admin->Command(Deadline::After(1s), "CLIENT", "KILL", "ID", IdWithFlag(*admin, 't')).ok());
  // Redis forgot what that connection read: the local copy must go at once, not on next use.
  REQUIRE(Within(5s, [&] { return !a.Local("k").has_value(); }));
  REQUIRE(a.Tracking());
  REQUIRE(a.Warm("k", "v1"));
  REQUIRE(admin->Command(Deadline::After(1s), "SET", "keel:cache:reader:k", "vv3").ok());
  REQUIRE(Within(1s, [&] { return !a.Local("k").has_value(); }));
  CHECK(a.Read("k") == "v3");
}
