#include "keel/cache/local_store.h"

#include <catch2/catch.hpp>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "keel/metrics.h"

using namespace std::chrono_literals;
using keel::cache::Eviction;
using keel::cache::LocalStore;
using keel::cache::RemovalCause;

namespace {

using Store = LocalStore<std::string>;

std::string Key(int i) { return absl::StrCat("key-", i); }

// Which keys of [0, n) the store holds (Get would count hits: read through GetEntry's
// absence instead is the same, so tests use Contains only after the sequence they check).
std::vector<int> Held(Store& store, int n) {
  std::vector<int> held;
  for (int i = 0; i < n; ++i) {
    if (store.Get(Key(i))) held.push_back(i);
  }
  return held;
}

}  // namespace

TEST_CASE("local store returns what was put and counts hits and misses") {
  keel::ManualClock clock;
  auto store = Store::Create({.max_entries = 100}, clock).value();
  REQUIRE(store->Put("a", "1").ok());
  CHECK(store->Get("a") == std::optional<std::string>("1"));
  CHECK_FALSE(store->Get("b").has_value());
  REQUIRE(store->Put("a", "2").ok());
  CHECK(store->Get("a") == std::optional<std::string>("2"));
  const auto s = store->Stats();
  CHECK(s.entries == 1);
  CHECK(s.hits_total == 2);
  CHECK(s.misses_total == 1);
  CHECK(s.puts_total == 2);
  CHECK(s.replaced_total == 1);
}

TEST_CASE("local store keys may hold any bytes, NUL included") {
  auto store = Store::Create({.max_entries = 100}).value();
  const std::string k1("a\0b", 3), k2("a\0c", 3);
  REQUIRE(store->Put(k1, "one").ok());
  REQUIRE(store->Put(k2, "two").ok());
  REQUIRE(store->Put("", "empty").ok());
  CHECK(store->Get(k1) == std::optional<std::string>("one"));
  CHECK(store->Get(k2) == std::optional<std::string>("two"));
  CHECK(store->Get("") == std::optional<std::string>("empty"));
  CHECK_FALSE(store->Get("a").has_value());
}

TEST_CASE("LRU store evicts in exact least-recently-used order") {
  std::vector<std::string> evicted;
  auto store = Store::Create({.max_entries = 4,
                              .eviction = Eviction::kLru,
                              .shards = 1,
                              .removal_listener =
                                  [&](std::string_view key, const std::string&, RemovalCause c) {
                                    if (c == RemovalCause::kSize) evicted.emplace_back(key);
                                  }})
                   .value();
  for (int i = 0; i < 4; ++i) REQUIRE(store->Put(Key(i), "v").ok());
  // Recency now, oldest first: 0 1 2 3. Reading 0 and 2 makes it 1 3 0 2.
  REQUIRE(store->Get(Key(0)));
  REQUIRE(store->Get(Key(2)));
  REQUIRE(store->Put(Key(4), "v").ok());  // evicts 1
  REQUIRE(store->Put(Key(5), "v").ok());  // evicts 3
  // A replacement is an access: 0 moves to the most recent end (order 2 4 5 0).
  REQUIRE(store->Put(Key(0), "w").ok());
  REQUIRE(store->Put(Key(6), "v").ok());  // evicts 2
  REQUIRE(store->Put(Key(7), "v").ok());  // evicts 4
  CHECK(evicted == std::vector<std::string>{Key(1), Key(3), Key(2), Key(4)});
  CHECK(Held(*store, 8) == std::vector<int>{0, 5, 6, 7});
  CHECK(store->Stats().evicted_size_total == 4);
}

TEST_CASE("W-TinyLFU keeps a frequently used key through a one-time scan that LRU loses") {
  const auto run = [](Eviction eviction) {
    auto store = Store::Create({.max_entries = 100, .eviction = eviction, .shards = 1}).value();
    // The working set: 50 keys, each read 10 times.
    for (int round = 0; round < 10; ++round) {
      for (int i = 0; i < 50; ++i) {
        if (!store->Get(Key(i))) REQUIRE(store->Put(Key(i), "hot").ok());
      }
    }
    // A scan of 1000 keys never seen before and never seen again.
    for (int i = 0; i < 1000; ++i) {
      const std::string k = absl::StrCat("scan-", i);
      if (!store->Get(k)) REQUIRE(store->Put(k, "cold").ok());
    }
    return Held(*store, 50).size();
  };
  CHECK(run(Eviction::kWTinyLfu) == 50);
  CHECK(run(Eviction::kLru) == 0);
}

TEST_CASE("weight capacity holds exactly") {
  std::vector<std::pair<std::string, RemovalCause>> removed;
  auto store =
      LocalStore<std::string>::Create(
          {.max_entries = std::nullopt,
           .max_weight = 100,
           .weigher = [](std::string_view, const std::string& v) { return v.size(); },
           .eviction = Eviction::kLru,
           .removal_listener = [&](std::string_view key, const std::string&,
                                   RemovalCause c) { removed.emplace_back(std::string(key), c); }})
          .value();
  REQUIRE(store->shards() == 1);  // 100 units: one shard of 100
  REQUIRE(store->Put("a", std::string(40, 'a')).ok());
  REQUIRE(store->Put("b", std::string(30, 'b')).ok());
  REQUIRE(store->Put("c", std::string(30, 'c')).ok());
  CHECK(store->Stats().weight == 100);  // full to the unit: nothing evicted
  CHECK(removed.empty());
  REQUIRE(store->Put("d", std::string(1, 'd')).ok());  // 101: the oldest (40) goes
  CHECK(store->Stats().weight == 61);
  CHECK(removed == std::vector<std::pair<std::string, RemovalCause>>{{"a", RemovalCause::kSize}});
  // Growing a value past the bound evicts the oldest until it fits: b (30) then c (30).
  REQUIRE(store->Put("d", std::string(100, 'd')).ok());
  CHECK(store->Stats().weight == 100);
  CHECK(store->Stats().entries == 1);
  CHECK(removed.size() == 4);  // + d's old value (replaced), b, c
  CHECK(removed[1] == std::pair<std::string, RemovalCause>{"d", RemovalCause::kReplaced});
  CHECK(removed[2].first == "b");
  CHECK(removed[3].first == "c");
  // Heavier than the whole store: refused, nothing changes.
  const absl::Status s = store->Put("e", std::string(101, 'e'));
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message() ==
        "local store \"local\": weight must be <= max_weight / shards (100 in each of 1 shards), "
        "got 101");
  CHECK(store->Stats().weight == 100);
}

TEST_CASE("W-TinyLFU store never exceeds its weight") {
  auto store = LocalStore<std::string>::Create(
                   {.max_entries = std::nullopt,
                    .max_weight = 1000,
                    .weigher = [](std::string_view, const std::string& v) { return v.size(); },
                    .shards = 1})
                   .value();
  uint64_t x = 1;
  for (int i = 0; i < 5000; ++i) {
    x = x * 6364136223846793005ULL + 1442695040888963407ULL;
    const int key = static_cast<int>((x >> 33) % 300);
    const size_t size = 1 + (x >> 20) % 50;
    if (!store->Get(Key(key))) REQUIRE(store->Put(Key(key), std::string(size, 'x')).ok());
    REQUIRE(store->Stats().weight <= 1000);
  }
  CHECK(store->Stats().weight > 900);  // and it does fill up
}

TEST_CASE("entries expire after their TTL on the store's clock") {
  keel::ManualClock clock;
  std::vector<std::string> expired;
  auto store = Store::Create({.default_ttl = 10s,
                              .removal_listener =
                                  [&](std::string_view key, const std::string&, RemovalCause c) {
                                    if (c == RemovalCause::kExpired) expired.emplace_back(key);
                                  }},
                             clock)
                   .value();
  REQUIRE(store->Put("default", "v").ok());
  REQUIRE(store->Put("short", "v", {.ttl = 1s}).ok());
  clock.Advance(999ms);
  CHECK(store->Get("short"));
  clock.Advance(1ms);  // exactly 1s: expired
  CHECK_FALSE(store->Get("short"));
  CHECK(store->Get("default"));
  clock.Advance(9s);
  CHECK_FALSE(store->Get("default"));
  CHECK(expired == std::vector<std::string>{"short", "default"});
  const auto s = store->Stats();
  CHECK(s.expired_total == 2);
  CHECK(s.entries == 0);
  CHECK(s.misses_total == 2);
}

TEST_CASE("entries without a TTL never expire") {
  keel::ManualClock clock;
  auto store = Store::Create({}, clock).value();
  REQUIRE(store->Put("k", "v").ok());
  clock.Advance(std::chrono::hours(24 * 365 * 100));
  CHECK(store->Get("k"));
  CHECK(store->PurgeExpired() == 0);
}

TEST_CASE("PurgeExpired removes every expired entry and only those") {
  keel::ManualClock clock;
  auto store = Store::Create({}, clock).value();
  for (int i = 0; i < 100; ++i) {
    REQUIRE(store->Put(Key(i), "v", {.ttl = i % 2 == 0 ? 1s : 1h}).ok());
  }
  clock.Advance(2s);
  CHECK(store->PurgeExpired() == 50);
  CHECK(store->Stats().entries == 50);
  CHECK(store->Stats().expired_total == 50);
}

TEST_CASE("an expired entry is reported as expired when evicted, erased or replaced") {
  keel::ManualClock clock;
  std::vector<RemovalCause> causes;
  auto store = Store::Create({.max_entries = 2,
                              .eviction = Eviction::kLru,
                              .removal_listener = [&](std::string_view, const std::string&,
                                                      RemovalCause c) { causes.push_back(c); }},
                             clock)
                   .value();
  REQUIRE(store->Put("a", "v", {.ttl = 1s}).ok());
  REQUIRE(store->Put("b", "v", {.ttl = 1s}).ok());
  clock.Advance(1s);
  REQUIRE(store->Put("c", "v").ok());  // evicts a, already expired
  CHECK_FALSE(store->Erase("b"));      // b was expired: not a live entry
  REQUIRE(store->Put("c", "w").ok());  // c is live: replaced
  CHECK(causes == std::vector<RemovalCause>{RemovalCause::kExpired, RemovalCause::kExpired,
                                            RemovalCause::kReplaced});
  const auto s = store->Stats();
  CHECK(s.expired_total == 2);
  CHECK(s.evicted_size_total == 0);
  CHECK(s.removed_explicit_total == 0);
}

TEST_CASE("GetEntry returns the write time, expiry, load time and weight") {
  keel::ManualClock clock;
  auto store = Store::Create({}, clock).value();
  const keel::TimePoint t0 = clock.Now();
  REQUIRE(store->Put("k", "v", {.ttl = 30s, .load_time = 120ms}).ok());
  clock.Advance(5s);
  const auto found = store->GetEntry("k");
  REQUIRE(found);
  CHECK(found->value == "v");
  CHECK(found->metadata.written == t0);
  CHECK(found->metadata.expires == std::optional<keel::TimePoint>(t0 + 30s));
  CHECK(found->metadata.load_time == 120ms);
  CHECK(found->metadata.weight == 1);
  REQUIRE(store->Put("forever", "v").ok());
  CHECK_FALSE(store->GetEntry("forever")->metadata.expires.has_value());
}

TEST_CASE("Erase and Clear remove entries as explicit removals") {
  std::vector<std::pair<std::string, RemovalCause>> removed;
  auto store = Store::Create({.removal_listener = [&](std::string_view key, const std::string&,
                                                      RemovalCause c) {
                 removed.emplace_back(std::string(key), c);
               }}).value();
  REQUIRE(store->Put("a", "1").ok());
  REQUIRE(store->Put("b", "2").ok());
  REQUIRE(store->Put("c", "3").ok());
  CHECK(store->Erase("a"));
  CHECK_FALSE(store->Erase("a"));
  CHECK(removed ==
        std::vector<std::pair<std::string, RemovalCause>>{{"a", RemovalCause::kExplicit}});
  store->Clear();
  CHECK(removed.size() == 3);
  CHECK(store->Stats().entries == 0);
  CHECK(store->Stats().removed_explicit_total == 3);
  CHECK_FALSE(store->Get("b"));
}

TEST_CASE("a removal listener that calls back into the store does not deadlock") {
  std::unique_ptr<Store> store;
  int reentered = 0;
  store =
      Store::Create(
          {.max_entries = 2,
           .eviction = Eviction::kLru,
           .shards = 1,
           .removal_listener =
               [&](std::string_view key, const std::string&, RemovalCause c) {
                 // Same shard (there is one): this would deadlock under its lock.
                 ++reentered;
                 CHECK_FALSE(store->Get(key));
                 if (c == RemovalCause::kSize && !key.starts_with("log:")) {
                   CHECK(store
                             ->Put(absl::StrCat("log:", absl::string_view(key.data(), key.size())),
                                   "evicted")
                             .ok());
                 }
                 (void)store->Stats();
               }})
          .value();
  REQUIRE(store->Put("a", "1").ok());
  REQUIRE(store->Put("b", "2").ok());
  // Evicts a; the listener puts log:a, which evicts b, whose listener puts log:b, evicting c, ...
  REQUIRE(store->Put("c", "3").ok());
  CHECK(reentered == 4);  // a, b, c, then log:a (which logs nothing)
  CHECK(store->Stats().entries == 2);
  store->Clear();  // the listener runs for each, reading the store
}

TEST_CASE("a removal listener that throws is counted and does not stop the store") {
  auto store = Store::Create({.max_entries = 1,
                              .removal_listener =
                                  [](std::string_view, const std::string&, RemovalCause) {
                                    throw std::runtime_error("listener bug");
                                  }})
                   .value();
  REQUIRE(store->Put("a", "1").ok());
  REQUIRE(store->Put("a", "2").ok());  // replaced: listener throws
  CHECK(store->Erase("a"));
  CHECK(store->Stats().listener_errors_total == 2);
  REQUIRE(store->Put("b", "3").ok());
  CHECK(store->Get("b"));
}

TEST_CASE("a weigher that throws fails the Put with INTERNAL and changes nothing") {
  auto store = LocalStore<std::string>::Create(
                   {.max_weight = 100,
                    .weigher = [](std::string_view, const std::string& v) -> uint64_t {
                      if (v == "bad") throw std::runtime_error("boom");
                      return v.size();
                    }})
                   .value();
  const absl::Status s = store->Put("k", "bad");
  CHECK(s.code() == absl::StatusCode::kInternal);
  CHECK(s.message() == "local store \"local\": the weigher threw an exception: boom");
  CHECK(store->Stats().entries == 0);
  CHECK(store->Put("k", "").code() == absl::StatusCode::kInvalidArgument);  // weight 0
}

TEST_CASE("local store rejects bad options naming the field") {
  const auto error = [](Store::Options o) {
    auto store = Store::Create(std::move(o));
    REQUIRE_FALSE(store.ok());
    CHECK(store.status().code() == absl::StatusCode::kInvalidArgument);
    return std::string(store.status().message());
  };
  CHECK(error({.name = "s", .max_entries = 0}) ==
        "local store \"s\": max_entries must be >= 1, got 0");
  CHECK(error({.name = "s", .max_entries = std::nullopt}) ==
        "local store \"s\": max_entries or max_weight must be set (an unbounded cache is a leak)");
  CHECK(error({.name = "s", .max_weight = 0}) ==
        "local store \"s\": max_weight must be >= 1, got 0");
  CHECK(error({.name = "s", .max_weight = 10}) == "local store \"s\": weigher must be set");
  CHECK(error({.name = "s", .default_ttl = 0s}) ==
        "local store \"s\": default_ttl must be > 0, got 0");
  CHECK(error({.name = "s", .default_ttl = -5s}) ==
        "local store \"s\": default_ttl must be > 0, got -5s");
  CHECK(error({.name = "s", .shards = 3}) ==
        "local store \"s\": shards must be a power of two in [1, 1024], got 3");
  CHECK(error({.name = "s", .shards = 0}) ==
        "local store \"s\": shards must be a power of two in [1, 1024], got 0");
}

TEST_CASE("local store rejects a zero or negative TTL on Put, naming the field") {
  auto store = Store::Create({.name = "s"}).value();
  absl::Status s = store->Put("k", "v", {.ttl = 0s});
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message() == "local store \"s\": ttl must be > 0, got 0");
  s = store->Put("k", "v", {.ttl = -250ms});
  CHECK(s.message() == "local store \"s\": ttl must be > 0, got -250ms");
  s = store->Put("k", "v", {.load_time = -1ms});
  CHECK(s.message() == "local store \"s\": load_time must be >= 0, got -1ms");
  CHECK(store->Stats().entries == 0);
  CHECK(store->Stats().puts_total == 0);
}

TEST_CASE("a small store uses fewer shards, and shard budgets add up to the store's") {
  CHECK(Store::Create({.max_entries = 100}).value()->shards() == 1);
  CHECK(Store::Create({.max_entries = 1000}).value()->shards() == 8);
  CHECK(Store::Create({.max_entries = 1'000'000}).value()->shards() == 16);
  CHECK(Store::Create({.max_entries = 1'000'000, .shards = 1}).value()->shards() == 1);
  // 1000 entries over 8 shards: the store holds exactly 1000 when every shard is full.
  auto store = Store::Create({.max_entries = 1000, .eviction = Eviction::kLru}).value();
  for (int i = 0; i < 20'000; ++i) REQUIRE(store->Put(Key(i), "v").ok());
  CHECK(store->Stats().entries == 1000);
}

TEST_CASE("local store registers its series in the metrics registry") {
  keel::MetricsRegistry registry;
  keel::ManualClock clock;
  auto store =
      Store::Create({.name = "profiles", .max_entries = 1, .shards = 1}, clock, &registry).value();
  REQUIRE(store->Put("a", "1").ok());
  REQUIRE(store->Get("a"));
  CHECK_FALSE(store->Get("b"));
  REQUIRE(store->Put("b", "2").ok());  // one of a, b is evicted for size
  const std::string text = registry.RenderPrometheus();
  CHECK_THAT(text,
             Catch::Contains(
                 "keel_cache_requests_total{name=\"profiles\",result=\"hit\",tier=\"local\"} 1"));
  CHECK_THAT(text,
             Catch::Contains(
                 "keel_cache_requests_total{name=\"profiles\",result=\"miss\",tier=\"local\"} 1"));
  CHECK_THAT(text,
             Catch::Contains(
                 "keel_cache_evictions_total{cause=\"size\",name=\"profiles\",tier=\"local\"} 1"));
  CHECK_THAT(text, Catch::Contains("keel_cache_entries{name=\"profiles\",tier=\"local\"} 1"));
  CHECK_THAT(text, Catch::Contains("keel_cache_puts_total{name=\"profiles\",tier=\"local\"} 2"));
  // A second store with the same name cannot register the same series.
  CHECK(Store::Create({.name = "profiles"}, clock, &registry).status().code() ==
        absl::StatusCode::kAlreadyExists);
}
