// keel::cache::Cache<T>::Warm: bulk load through the tiers and one batch loader call.
// ManualClock and fixed random sources only.
#include <catch2/catch.hpp>
#include <chrono>
#include <random>
#include <string>
#include <vector>

#include "keel/cache/cache.h"
#include "keel/cache/local_tier.h"
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
  std::vector<std::vector<std::string>> loader_calls;

  std::unique_ptr<StringCache> Make(StringCache::Options options) {
    StringCache::Tiers tiers;
    auto l = LocalTier<std::string>::Create({.max_entries = 1000}, clock).value();
    local = l.get();
    tiers.push_back(std::move(l));
    auto r = std::make_unique<FakeRemoteTier>();
    remote = r.get();
    tiers.push_back(std::move(r));
    return StringCache::Create(std::move(options), std::move(tiers), clock, nullptr, random)
        .value();
  }
  // Answers "v:<key>", nullopt for keys starting with "gone".
  StringCache::BatchLoader Loader() {
    return [this](Deadline, std::span<const std::string_view> keys)
               -> absl::StatusOr<std::vector<std::optional<std::string>>> {
      loader_calls.emplace_back(keys.begin(), keys.end());
      std::vector<std::optional<std::string>> out;
      for (std::string_view k : keys) {
        if (k.substr(0, 4) == "gone") {
          out.emplace_back();
        } else {
          out.emplace_back("v:" + std::string(k));
        }
      }
      return out;
    };
  }
};

StringCache::Loader NeverLoads() {
  return [](Deadline) -> absl::StatusOr<std::string> {
    FAIL("the loader must not run");
    return absl::InternalError("unreachable");
  };
}

}  // namespace

TEST_CASE(
    "cache Warm reads every tier once, fills the upper ones and loads the rest in one "
    "batch loader call",
    "[cache][warm]") {
  Fixture f;
  auto cache = f.Make({.name = "warm", .negative_ttl = 30s});
  f.remote->Put("in-remote", "r");
  const std::string_view keys[] = {"in-remote", "cold-1", "gone-1", "cold-2", "cold-1"};
  auto warmed = cache->Warm(Deadline::Infinite(), keys, f.Loader());
  REQUIRE(warmed.ok());
  CHECK(warmed->found == 1);
  CHECK(warmed->loaded == 2);
  CHECK(warmed->not_found == 1);
  // The duplicate is loaded once, and only what no tier had reaches the loader.
  CHECK(f.loader_calls == std::vector<std::vector<std::string>>{{"cold-1", "gone-1", "cold-2"}});
  // Everything is now answered by the local tier: no loader, no remote read.
  const int remote_gets = f.remote->gets.load();
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "in-remote", NeverLoads()).value() == "r");
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "cold-2", NeverLoads()).value() == "v:cold-2");
  CHECK(absl::IsNotFound(cache->GetOrLoad(Deadline::Infinite(), "gone-1", NeverLoads()).status()));
  CHECK(f.remote->gets.load() == remote_gets);
  CHECK(f.remote->Peek("cold-1") == std::optional<std::optional<std::string>>("v:cold-1"));
  CHECK(f.remote->Peek("gone-1") ==
        std::optional<std::optional<std::string>>(std::in_place, std::nullopt));
  CHECK(cache->Stats().warmed_total == 3);
  CHECK(cache->Stats().loads_total == 1);
}

TEST_CASE("cache Warm returns the batch loader's error and stores nothing it did not load",
          "[cache][warm]") {
  Fixture f;
  auto cache = f.Make({.name = "warm"});
  const std::string_view keys[] = {"a", "b"};
  auto failed = cache->Warm(Deadline::Infinite(), keys,
                            [](Deadline, std::span<const std::string_view>)
                                -> absl::StatusOr<std::vector<std::optional<std::string>>> {
                              return absl::UnavailableError("db down");
                            });
  CHECK(absl::IsUnavailable(failed.status()));
  auto wrong = cache->Warm(Deadline::Infinite(), keys,
                           [](Deadline, std::span<const std::string_view>)
                               -> absl::StatusOr<std::vector<std::optional<std::string>>> {
                             return std::vector<std::optional<std::string>>{"only one"};
                           });
  CHECK(absl::IsInternal(wrong.status()));
  CHECK(!f.remote->Peek("a").has_value());
  // A tier that is down is skipped: the loader still warms the others.
  f.remote->down = true;
  auto warmed = cache->Warm(Deadline::Infinite(), keys, f.Loader());
  REQUIRE(warmed.ok());
  CHECK(warmed->loaded == 2);
  CHECK(cache->Get(Deadline::Infinite(), "a").value() == std::optional<std::string>("v:a"));
  CHECK(cache->Stats().tiers[1].errors_total == 1);
}
