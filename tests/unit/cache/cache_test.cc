// keel::cache::Cache<T>: tiers, cache-aside with TTL jitter and negative caching, fail-open
// tiers, write-through, options. ManualClock and fixed random sources only.
#include "keel/cache/cache.h"

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <random>
#include <set>
#include <string>

#include "keel/cache/local_tier.h"
#include "keel/metrics.h"
#include "unit/cache/cache_fakes.h"

using keel::Deadline;
using keel::ManualClock;
using keel::cache::Cache;
using keel::cache::LocalTier;
using keel::test::FakeRemoteTier;
using namespace std::chrono_literals;

namespace {

using StringCache = Cache<std::string>;

struct Fixture {
  ManualClock clock;
  std::mt19937_64 random{7};
  LocalTier<std::string>* local = nullptr;
  FakeRemoteTier* remote = nullptr;
  std::atomic<int> loads{0};

  std::unique_ptr<StringCache> Make(StringCache::Options options, bool with_local = true,
                                    bool with_remote = true) {
    StringCache::Tiers tiers;
    if (with_local) {
      auto l = LocalTier<std::string>::Create({.max_entries = 1000}, clock).value();
      local = l.get();
      tiers.push_back(std::move(l));
    }
    if (with_remote) {
      auto r = std::make_unique<FakeRemoteTier>();
      remote = r.get();
      tiers.push_back(std::move(r));
    }
    auto cache = StringCache::Create(std::move(options), std::move(tiers), clock, nullptr, random);
    REQUIRE(cache.ok());
    return std::move(*cache);
  }

  StringCache::Loader Returning(std::string value) {
    return [this, value](Deadline) -> absl::StatusOr<std::string> {
      loads.fetch_add(1);
      return value;
    };
  }
  StringCache::Loader Failing(absl::Status status) {
    return [this, status](Deadline) -> absl::StatusOr<std::string> {
      loads.fetch_add(1);
      return status;
    };
  }
};

}  // namespace

TEST_CASE("cache GetOrLoad loads a miss once and then answers from the local tier", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "aside"});
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("v")).value() == "v");
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("other")).value() == "v");
  CHECK(f.loads == 1);
  CHECK(f.remote->Peek("k") == std::optional<std::optional<std::string>>("v"));
  const auto s = cache->Stats();
  CHECK(s.misses_total == 1);
  CHECK(s.hits_total == 1);
  CHECK(s.loads_total == 1);
  REQUIRE(s.tiers.size() == 2);
  CHECK(s.tiers[0].kind == "local");
  CHECK(s.tiers[0].hits_total == 1);
  CHECK(s.tiers[1].misses_total == 1);
}

TEST_CASE("cache stores each load for ttl plus a jitter drawn in [0, ttl_jitter]", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "jitter", .ttl = 60s, .ttl_jitter = 10s});
  std::set<keel::Duration> seen;
  for (int i = 0; i < 200; ++i) {
    const std::string key = std::string("k").append(std::to_string(i));
    REQUIRE(cache->GetOrLoad(Deadline::Infinite(), key, f.Returning("v")).ok());
    auto entry = f.local->store().GetEntry(key);
    REQUIRE(entry.has_value());
    REQUIRE(entry->metadata.expires.has_value());
    const keel::Duration ttl = *entry->metadata.expires - entry->metadata.written;
    CHECK(ttl >= 60s);
    CHECK(ttl <= 70s);
    CHECK(f.remote->TtlOf(key) == ttl);  // one draw per write, the same in every tier
    seen.insert(ttl);
  }
  // Keys loaded together do not expire together: the draws spread over the jitter range.
  CHECK(seen.size() > 190);
  CHECK(*seen.begin() < 61s);
  CHECK(*seen.rbegin() > 69s);
}

TEST_CASE("cache without jitter stores exactly ttl, and the entry expires after it", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "exact", .ttl = 30s}, true, false);
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("v")).ok());
  auto entry = f.local->store().GetEntry("k");
  REQUIRE(entry.has_value());
  CHECK(*entry->metadata.expires - entry->metadata.written == 30s);
  f.clock.Advance(30s - 1ns);
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("v2")).value() == "v");
  f.clock.Advance(1ns);
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("v2")).value() == "v2");
  CHECK(f.loads == 2);
}

TEST_CASE("cache caches NOT_FOUND for negative_ttl, and only when it is set", "[cache]") {
  Fixture f;
  SECTION("with negative_ttl") {
    auto cache = f.Make({.name = "neg", .ttl = 60s, .negative_ttl = 5s});
    auto first = cache->GetOrLoad(Deadline::Infinite(), "gone",
                                  f.Failing(absl::NotFoundError("no such user")));
    CHECK(absl::IsNotFound(first.status()));
    auto second = cache->GetOrLoad(Deadline::Infinite(), "gone", f.Returning("back"));
    CHECK(absl::IsNotFound(second.status()));
    CHECK(f.loads == 1);
    CHECK(f.remote->Peek("gone") ==
          std::optional<std::optional<std::string>>(std::optional<std::string>()));
    CHECK(f.remote->TtlOf("gone") == 5s);
    CHECK(cache->Stats().negative_hits_total == 1);
    f.clock.Advance(5s);
    f.remote->Erase(Deadline::Infinite(), "gone").IgnoreError();  // the remote's own expiry
    CHECK(cache->GetOrLoad(Deadline::Infinite(), "gone", f.Returning("back")).value() == "back");
    CHECK(f.loads == 2);
  }
  SECTION("without negative_ttl") {
    auto cache = f.Make({.name = "noneg"});
    for (int i = 0; i < 3; ++i) {
      CHECK(absl::IsNotFound(
          cache->GetOrLoad(Deadline::Infinite(), "gone", f.Failing(absl::NotFoundError("no")))
              .status()));
    }
    CHECK(f.loads == 3);
    CHECK(!f.remote->Peek("gone").has_value());
  }
}

TEST_CASE("cache never caches loader errors other than NOT_FOUND", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "errors", .negative_ttl = 5s});
  auto r = cache->GetOrLoad(Deadline::Infinite(), "k", f.Failing(absl::UnavailableError("db")));
  CHECK(absl::IsUnavailable(r.status()));
  CHECK(r.status().message() == "db");
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("v")).value() == "v");
  CHECK(f.loads == 2);
  CHECK(cache->Stats().load_errors_total == 1);
}

TEST_CASE("cache returns a throwing loader as INTERNAL, counted, and stays usable", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "throws"});
  auto r = cache->GetOrLoad(Deadline::Infinite(), "k", [](Deadline) -> absl::StatusOr<std::string> {
    throw std::runtime_error("boom");
  });
  CHECK(absl::IsInternal(r.status()));
  CHECK(r.status().message() == "cache \"throws\": the loader threw an exception: boom");
  CHECK(cache->Stats().loader_exceptions_total == 1);
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("v")).value() == "v");
}

TEST_CASE("cache fills the tiers above a lower-tier hit", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "fill", .ttl = 60s});
  f.remote->Put("k", "from-remote");
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("loaded")).value() ==
        "from-remote");
  CHECK(f.loads == 0);
  CHECK(f.local->store().Get("k") == std::optional<std::optional<std::string>>("from-remote"));
  f.remote->down = true;  // the next read is the local tier's
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("loaded")).value() ==
        "from-remote");
  CHECK(f.remote->gets == 1);
}

TEST_CASE("cache reads fall through to the loader when a tier fails, counted (fail open)",
          "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "failopen"}, false, true);
  f.remote->down = true;
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("v")).value() == "v");
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("v")).value() == "v");
  CHECK(f.loads == 2);
  // The tier that failed the read is not written in the same call.
  CHECK(f.remote->sets == 0);
  const auto s = cache->Stats();
  CHECK(s.tiers[0].errors_total == 2);
  CHECK(s.misses_total == 2);
  f.remote->down = false;
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("v")).value() == "v");
  CHECK(f.remote->Peek("k").has_value());
}

TEST_CASE("cache with no tier still single-flights and loads every read", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "none"}, false, false);
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("v")).value() == "v");
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("v")).value() == "v");
  CHECK(f.loads == 2);
  CHECK(cache->Get(Deadline::Infinite(), "k").value() == std::nullopt);
}

TEST_CASE("cache Get reads the tiers only", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "get", .negative_ttl = 5s});
  CHECK(cache->Get(Deadline::Infinite(), "k").value() == std::nullopt);
  f.remote->Put("k", "v");
  f.remote->Put("gone", std::nullopt);
  CHECK(cache->Get(Deadline::Infinite(), "k").value() == std::optional<std::string>("v"));
  CHECK(absl::IsNotFound(cache->Get(Deadline::Infinite(), "gone").status()));
}

TEST_CASE("cache write-through updates every tier after the writer succeeds", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "wt", .ttl = 60s});
  std::string source;
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("old")).ok());
  const auto writer = [&](Deadline, const std::string& v) {
    source = v;
    return absl::OkStatus();
  };
  REQUIRE(cache->Put(Deadline::Infinite(), "k", "new", writer).ok());
  CHECK(source == "new");
  CHECK(f.local->store().Get("k") == std::optional<std::optional<std::string>>("new"));
  CHECK(f.remote->Peek("k") == std::optional<std::optional<std::string>>("new"));
  CHECK(cache->Stats().writes_total == 1);
}

TEST_CASE("cache write-through changes no tier when the writer fails", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "wtfail"});
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("old")).ok());
  absl::Status s = cache->Put(Deadline::Infinite(), "k", "new", [](Deadline, const std::string&) {
    return absl::AbortedError("serialization failure");
  });
  CHECK(absl::IsAborted(s));
  CHECK(f.local->store().Get("k") == std::optional<std::optional<std::string>>("old"));
  CHECK(f.remote->Peek("k") == std::optional<std::optional<std::string>>("old"));
  s = cache->Put(Deadline::Infinite(), "k", "new",
                 [](Deadline, const std::string&) -> absl::Status { throw 42; });
  CHECK(absl::IsInternal(s));
  CHECK(f.remote->Peek("k") == std::optional<std::optional<std::string>>("old"));
  CHECK(cache->Stats().writer_errors_total == 2);
}

TEST_CASE("cache write-through removes the key from a tier whose update failed", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "wttier"});
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("old")).ok());
  f.remote->refuse_sets = true;
  bool written = false;
  absl::Status s = cache->Put(Deadline::Infinite(), "k", "new", [&](Deadline, const std::string&) {
    written = true;
    return absl::OkStatus();
  });
  CHECK(written);
  CHECK(absl::IsUnavailable(s));
  CHECK(s.message() ==
        "cache \"wttier\": written, but tier remote was not updated (its entry was removed): "
        "remote tier down");
  CHECK(!f.remote->Peek("k").has_value());  // nothing stale survives there
  CHECK(f.local->store().Get("k") == std::optional<std::optional<std::string>>("new"));
  CHECK(cache->Stats().tiers[1].write_errors_total == 1);
}

TEST_CASE("cache Invalidate removes the key from every tier", "[cache]") {
  Fixture f;
  auto cache = f.Make({.name = "inval"});
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "k", f.Returning("v")).ok());
  REQUIRE(cache->Invalidate(Deadline::Infinite(), "k").ok());
  CHECK(!f.local->store().Get("k").has_value());
  CHECK(!f.remote->Peek("k").has_value());
  f.remote->down = true;
  CHECK(absl::IsUnavailable(cache->Invalidate(Deadline::Infinite(), "k")));
}

TEST_CASE("cache options are validated, naming the field", "[cache]") {
  ManualClock clock;
  const auto error = [&](StringCache::Options o) {
    auto c = StringCache::Create(std::move(o), {}, clock);
    REQUIRE(!c.ok());
    CHECK(absl::IsInvalidArgument(c.status()));
    return std::string(c.status().message());
  };
  CHECK(error({.name = "c", .ttl = 0s}) == "cache \"c\": ttl must be > 0, got 0");
  CHECK(error({.name = "c", .ttl = -5s}) == "cache \"c\": ttl must be > 0, got -5s");
  CHECK(error({.name = "c", .ttl = 10s, .ttl_jitter = -1s}) ==
        "cache \"c\": ttl_jitter must be in [0, ttl], got -1s");
  CHECK(error({.name = "c", .ttl = 10s, .ttl_jitter = 11s}) ==
        "cache \"c\": ttl_jitter must be in [0, ttl], got 11s");
  CHECK(error({.name = "c", .negative_ttl = 0s}) == "cache \"c\": negative_ttl must be > 0, got 0");
  CHECK(error({.name = "c", .negative_ttl = -1ms}) ==
        "cache \"c\": negative_ttl must be > 0, got -1ms");
  CHECK(error({.name = "c", .ttl = 10s, .refresh_after = 10s}) ==
        "cache \"c\": refresh_after must be < ttl, got 10s");
  CHECK(error({.name = "c", .refresh_after = 0s}) ==
        "cache \"c\": refresh_after must be > 0, got 0");
  CHECK(error({.name = "c", .xfetch = true, .xfetch_beta = 0}) ==
        "cache \"c\": xfetch_beta must be > 0 and finite, got 0");
  CHECK(error({.name = "c", .background_timeout = 0s}) ==
        "cache \"c\": background_timeout must be > 0, got 0");
  CHECK(error({.name = "c", .background_threads = 0}) ==
        "cache \"c\": background_threads must be >= 1, got 0");
  CHECK(error({.name = "c", .stampede_poll_interval = 0s}) ==
        "cache \"c\": stampede_poll_interval must be > 0, got 0");
  StringCache::Tiers null_tier;
  null_tier.push_back(nullptr);
  CHECK(!StringCache::Create({}, std::move(null_tier), clock).ok());
  // Capacity 0 is the local tier's own option.
  auto local = LocalTier<std::string>::Create({.name = "l", .max_entries = 0}, clock);
  REQUIRE(!local.ok());
  CHECK(absl::IsInvalidArgument(local.status()));
  CHECK(local.status().message() == "local store \"l\": max_entries must be >= 1, got 0");
}

TEST_CASE("cache registers its metrics and they follow its counters", "[cache]") {
  Fixture f;
  keel::MetricsRegistry registry;
  StringCache::Tiers tiers;
  tiers.push_back(std::make_unique<FakeRemoteTier>());
  auto cache =
      StringCache::Create({.name = "m", .negative_ttl = 1s}, std::move(tiers), f.clock, &registry)
          .value();
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "a", f.Returning("v")).ok());
  REQUIRE(cache->GetOrLoad(Deadline::Infinite(), "a", f.Returning("v")).ok());
  (void)cache->GetOrLoad(Deadline::Infinite(), "b", f.Failing(absl::NotFoundError("x")));
  const std::string text = registry.RenderPrometheus();
  CHECK_THAT(text, Catch::Contains("keel_cache_lookups_total{name=\"m\",result=\"hit\"} 1"));
  CHECK_THAT(text, Catch::Contains("keel_cache_lookups_total{name=\"m\",result=\"miss\"} 2"));
  CHECK_THAT(text, Catch::Contains("keel_cache_loads_total{name=\"m\",result=\"ok\"} 1"));
  CHECK_THAT(text, Catch::Contains("keel_cache_loads_total{name=\"m\",result=\"not_found\"} 1"));
  CHECK_THAT(text, Catch::Contains(
                       "keel_cache_tier_reads_total{name=\"m\",result=\"hit\",tier=\"remote\"} 1"));
  CHECK_THAT(text, Catch::Contains("keel_cache_load_seconds_count{name=\"m\"} 2"));
  StringCache::Tiers none;
  CHECK(absl::IsAlreadyExists(
      StringCache::Create({.name = "m"}, std::move(none), f.clock, &registry).status()));
}
