// keel::redis::CacheStore and CacheTier against a real redis-server of the test's own: the
// commands, key namespacing, sizes, and the facade failing open when Redis is down or paused.
#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <vector>

#include "integration/redis/test_server.h"
#include "integration/redis_limits/helpers.h"
#include "keel/cache/cache.h"
#include "keel/cache/local_tier.h"
#include "keel/redis/cache_store.h"

using keel::Deadline;
using keel::cache::Cache;
using keel::cache::LocalTier;
using keel::redis::CacheStore;
using keel::redis::CacheTier;
using namespace std::chrono_literals;

namespace {

using StringCache = Cache<std::string>;

std::unique_ptr<keel::redis::Client> FastClient(const std::string& url) {
  auto o = keel::redis::Options::FromUrl(url);
  REQUIRE(o.ok());
  o->connect_timeout = 200ms;
  o->command_timeout = 200ms;
  auto c = keel::redis::Client::Create(*o);
  REQUIRE(c.ok());
  return std::move(*c);
}

std::string Raw(keel::redis::Client& client, const std::string& key) {
  auto r = client.Command(Deadline::After(1s), "GET", key);
  REQUIRE(r.ok());
  return r->is_nil() ? "<nil>" : r->str();
}

int64_t Pttl(keel::redis::Client& client, const std::string& key) {
  auto r = client.Command(Deadline::After(1s), "PTTL", key);
  REQUIRE(r.ok());
  return r->integer();
}

}  // namespace

TEST_CASE("redis cache store: GET, SET PX, DEL, MGET and a pipelined multi-set, namespaced",
          "[redis_cache]") {
  keel::test::RedisServer server;
  auto client = FastClient(server.url());
  auto store = CacheStore::Create({.name = "profiles"}, *client).value();
  CHECK(store->RedisKey("user:1") == "keel:cache:profiles:user:1");
  CHECK(store->Get(Deadline::After(1s), "user:1").value() == std::nullopt);
  const std::string binary("a\0b\r\n", 5);
  REQUIRE(store->Set(Deadline::After(1s), "user:1", binary, 60s).ok());
  CHECK(store->Get(Deadline::After(1s), "user:1").value() == std::optional<std::string>(binary));
  CHECK(Raw(*client, "keel:cache:profiles:user:1") == binary);
  const int64_t pttl = Pttl(*client, "keel:cache:profiles:user:1");
  CHECK(pttl > 59'000);
  CHECK(pttl <= 60'000);
  // A sub-millisecond remainder rounds up (1.5 ms -> PX 2), never down to no expiry: the key has
  // at most 2 ms left, or is already gone on a slow machine, but never lacks a TTL (-1).
  REQUIRE(store->Set(Deadline::After(1s), "short", "x", 1500us).ok());
  const int64_t short_pttl = Pttl(*client, "keel:cache:profiles:short");
  CHECK((short_pttl == -2 || (short_pttl > 0 && short_pttl <= 2)));

  const CacheStore::Write writes[] = {{"a", "1", 60s}, {"b", "2", 60s}, {"c", "3", 30s}};
  REQUIRE(store->SetMany(Deadline::After(1s), writes).ok());
  const std::string_view keys[] = {"a", "missing", "c", "b"};
  auto many = store->GetMany(Deadline::After(1s), keys);
  REQUIRE(many.ok());
  CHECK(*many == std::vector<std::optional<std::string>>{"1", std::nullopt, "3", "2"});
  CHECK(Pttl(*client, "keel:cache:profiles:c") <= 30'000);
  CHECK(Pttl(*client, "keel:cache:profiles:a") > 30'000);

  REQUIRE(store->Erase(Deadline::After(1s), "a").ok());
  REQUIRE(store->Erase(Deadline::After(1s), "never-there").ok());
  CHECK(store->Get(Deadline::After(1s), "a").value() == std::nullopt);

  // Another cache's store on the same Redis sees none of it.
  auto other = CacheStore::Create({.name = "orders"}, *client).value();
  CHECK(other->Get(Deadline::After(1s), "b").value() == std::nullopt);
  const auto s = store->Stats();
  CHECK(s.hits_total == 4);
  CHECK(s.misses_total == 3);
  CHECK(s.sets_total == 5);
}

TEST_CASE("redis cache store refuses keys and values over their maximum, and bad options",
          "[redis_cache]") {
  keel::test::RedisServer server;
  auto client = FastClient(server.url());
  auto store =
      CacheStore::Create({.name = "small", .max_key_bytes = 8, .max_value_bytes = 4}, *client)
          .value();
  auto long_key = store->Get(Deadline::After(1s), "123456789");
  CHECK(absl::IsInvalidArgument(long_key.status()));
  CHECK(long_key.status().message() ==
        "redis cache store \"small\": key of 9 bytes is longer than max_key_bytes (8)");
  absl::Status big = store->Set(Deadline::After(1s), "k", "12345", 1s);
  CHECK(absl::IsInvalidArgument(big));
  CHECK(big.message() ==
        "redis cache store \"small\": value of 5 bytes is longer than max_value_bytes (4)");
  CHECK(Raw(*client, "keel:cache:small:k") == "<nil>");  // stored as given or not at all
  CHECK(absl::IsInvalidArgument(store->Set(Deadline::After(1s), "k", "1", 0s)));
  CHECK(store->Stats().refused_total == 3);

  const auto error = [&](CacheStore::Options o) {
    auto s = CacheStore::Create(std::move(o), *client);
    REQUIRE(!s.ok());
    CHECK(absl::IsInvalidArgument(s.status()));
    return std::string(s.status().message());
  };
  CHECK(error({.name = ""}) == "redis cache store \"\": name must be 1 to 128 bytes, got 0");
  CHECK(error({.name = "x", .max_key_bytes = 0}) ==
        "redis cache store \"x\": max_key_bytes must be >= 1, got 0");
  CHECK(error({.name = "x", .max_value_bytes = 0}) ==
        "redis cache store \"x\": max_value_bytes must be >= 1, got 0");
  CHECK(error({.name = "x", .command_timeout = 0s}) ==
        "redis cache store \"x\": command_timeout must be > 0, got 0");

  // Through the facade, an oversized key is the caller's error, not a tier failure.
  StringCache::Tiers tiers;
  tiers.push_back(
      CacheTier<std::string>::Create({.name = "facade", .max_key_bytes = 4}, *client).value());
  auto cache = StringCache::Create({.name = "facade"}, std::move(tiers)).value();
  int loads = 0;
  auto r = cache->GetOrLoad(Deadline::After(1s), "too-long", [&](Deadline) {
    ++loads;
    return absl::StatusOr<std::string>("v");
  });
  CHECK(absl::IsInvalidArgument(r.status()));
  CHECK(loads == 0);
}

TEST_CASE("redis cache tier: values and negative entries round-trip through the facade",
          "[redis_cache]") {
  keel::test::RedisServer server;
  auto client = FastClient(server.url());
  const auto make = [&] {
    StringCache::Tiers tiers;
    tiers.push_back(LocalTier<std::string>::Create({.max_entries = 100}).value());
    tiers.push_back(CacheTier<std::string>::Create({.name = "rt"}, *client).value());
    return StringCache::Create({.name = "rt", .ttl = 60s, .negative_ttl = 5s}, std::move(tiers))
        .value();
  };
  auto writer = make();
  int loads = 0;
  const auto loader = [&](std::string v) {
    return [&loads, v](Deadline) -> absl::StatusOr<std::string> {
      ++loads;
      if (v.empty()) return absl::NotFoundError("no such row");
      return v;
    };
  };
  REQUIRE(writer->GetOrLoad(Deadline::After(1s), "k", loader("value")).value() == "value");
  CHECK(absl::IsNotFound(writer->GetOrLoad(Deadline::After(1s), "gone", loader("")).status()));
  CHECK(Raw(*client, "keel:cache:rt:k") == "vvalue");
  CHECK(Raw(*client, "keel:cache:rt:gone") == "n");
  CHECK(Pttl(*client, "keel:cache:rt:gone") <= 5000);
  // Another process (a second cache with its own local tier) is served from Redis.
  auto reader = make();
  CHECK(reader->GetOrLoad(Deadline::After(1s), "k", loader("other")).value() == "value");
  CHECK(absl::IsNotFound(reader->GetOrLoad(Deadline::After(1s), "gone", loader("x")).status()));
  CHECK(loads == 2);
  CHECK(reader->Stats().tiers[1].hits_total == 2);
  // An entry keel did not write is a tier error: loaded again and overwritten.
  REQUIRE(client->Command(Deadline::After(1s), "SET", "keel:cache:rt:alien", "xyz").ok());
  CHECK(reader->GetOrLoad(Deadline::After(1s), "alien", loader("mine")).value() == "mine");
  CHECK(reader->Stats().tiers[1].errors_total == 1);
  CHECK(Raw(*client, "keel:cache:rt:alien") == "vmine");
}

TEST_CASE(
    "redis cache tier fails open: with Redis paused or down, reads reach the loader within "
    "their deadlines, counted",
    "[redis_cache]") {
  keel::test::RedisServer server;
  auto client = FastClient(server.url());
  StringCache::Tiers tiers;
  tiers.push_back(
      CacheTier<std::string>::Create({.name = "fo", .command_timeout = 100ms}, *client).value());
  auto cache = StringCache::Create({.name = "fo"}, std::move(tiers)).value();
  int loads = 0;
  const StringCache::Loader loader = [&](Deadline d) -> absl::StatusOr<std::string> {
    ++loads;
    if (d.Expired()) return absl::DeadlineExceededError("the loader got no time");
    return std::string("from-db");
  };
  REQUIRE(cache->GetOrLoad(Deadline::After(1s), "warm", loader).ok());

  const auto read_within = [&](const std::string& key) {
    const auto start = std::chrono::steady_clock::now();
    absl::StatusOr<std::string> v = cache->GetOrLoad(Deadline::After(1s), key, loader);
    const auto took = std::chrono::steady_clock::now() - start;
    CHECK(v.ok());
    if (v.ok()) CHECK(*v == "from-db");
    CHECK(took < 1s);
    return took;
  };
  SECTION("paused (SIGSTOP)") {
    server.Stop();
    for (int i = 0; i < 3; ++i) {
      // The read waits command_timeout, the loader runs, the write to the failed tier is skipped.
      CHECK(read_within(std::string("cold").append(std::to_string(i))) < 600ms);
    }
    server.Continue();
  }
  SECTION("killed") {
    server.Kill();
    for (int i = 0; i < 3; ++i) read_within(std::string("cold").append(std::to_string(i)));
  }
  CHECK(loads == 4);
  const auto s = cache->Stats();
  CHECK(s.tiers[0].errors_total == 3);
  CHECK(s.tiers[0].write_errors_total == 0);  // not written in the call whose read failed
}

TEST_CASE(
    "redis cache tier: a write-through with Redis down reports the tier error and keeps the "
    "source-of-truth write",
    "[redis_cache]") {
  keel::test::RedisServer server;
  auto client = FastClient(server.url());
  StringCache::Tiers tiers;
  tiers.push_back(LocalTier<std::string>::Create({.max_entries = 100}).value());
  tiers.push_back(CacheTier<std::string>::Create({.name = "wt"}, *client).value());
  auto cache = StringCache::Create({.name = "wt"}, std::move(tiers)).value();
  std::string source_of_truth;
  const StringCache::Writer writer = [&](Deadline, const std::string& v) {
    source_of_truth = v;
    return absl::OkStatus();
  };
  REQUIRE(cache->Put(Deadline::After(1s), "k", "v1", writer).ok());
  CHECK(Raw(*client, "keel:cache:wt:k") == "vv1");
  server.Stop();
  absl::Status s = cache->Put(Deadline::After(1s), "k", "v2", writer);
  CHECK(!s.ok());
  CHECK(absl::IsDeadlineExceeded(s));
  CHECK_THAT(std::string(s.message()),
             Catch::StartsWith("cache \"wt\": written, but tier redis was not updated (removing "
                               "its entry failed too)"));
  CHECK(source_of_truth == "v2");
  // This process reads the new value from its local tier.
  CHECK(cache->Get(Deadline::After(1s), "k").value() == std::optional<std::string>("v2"));
  server.Continue();
}
