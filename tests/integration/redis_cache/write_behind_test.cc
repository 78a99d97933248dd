// Write-behind with the pending set in Redis (keel::redis::WriteBehindLog) against a real
// redis-server of the test's own and the shared PostgreSQL (the source of truth): one script
// writes the tier entry and the pending write; flushers claim disjoint batches and take over a
// dead one's lease; a writing process killed (kill -9) before any flush loses none of the writes
// it acknowledged, because another instance flushes them all to PostgreSQL. And Warm's round
// trips.
//
// The writing process is this test binary itself, started again with a hidden test case and its
// orders in the environment (KEEL_WB_WORKER = "<redis url> <cache name> <n> <out>").
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "integration/redis/test_server.h"
#include "integration/redis_limits/helpers.h"
#include "keel/cache/cache.h"
#include "keel/cache/local_tier.h"
#include "keel/postgres/pool.h"
#include "keel/redis/cache_store.h"
#include "keel/redis/write_behind_log.h"
#include "support/subprocess.h"

using keel::Deadline;
using keel::cache::Cache;
using keel::cache::PendingWrite;
using keel::cache::WriteBehind;
using keel::redis::CacheTier;
using keel::redis::WriteBehindLog;
using keel::redis::WriteBehindStore;
using namespace std::chrono_literals;

namespace {

using StringCache = Cache<std::string>;

std::unique_ptr<keel::postgres::Pool> Postgres() {
  auto pool =
      keel::postgres::Pool::Create({.conninfo = keel::test::RequireEnv("KEEL_TEST_POSTGRES_URL"),
                                    .pool = {.name = "pg-write-behind", .max_size = 2}});
  REQUIRE(pool.ok());
  return std::move(*pool);
}

// A source-of-truth table of this test's own, emptied.
void CreateTable(keel::postgres::Pool& pg, const std::string& table) {
  REQUIRE(pg.Execute(Deadline::After(10s),
                     "CREATE TABLE IF NOT EXISTS " + table + " (k text PRIMARY KEY, v text)")
              .ok());
  REQUIRE(pg.Execute(Deadline::After(10s), "TRUNCATE " + table).ok());
}

std::map<std::string, std::string> Rows(keel::postgres::Pool& pg, const std::string& table) {
  auto rows = pg.Execute(Deadline::After(10s), "SELECT k, v FROM " + table);
  REQUIRE(rows.ok());
  std::map<std::string, std::string> out;
  for (int i = 0; i < static_cast<int>(rows->size()); ++i) {
    out[std::string(rows->Text(i, 0))] = std::string(rows->Text(i, 1));
  }
  return out;
}

// The batch writer: one upsert per key in one transaction (idempotent: the last write wins).
WriteBehind<std::string>::BatchWriter Upsert(keel::postgres::Pool& pg, const std::string& table,
                                             std::atomic<int>* batches = nullptr) {
  return [&pg, table, batches](Deadline d, std::span<const PendingWrite<std::string>> writes) {
    if (batches != nullptr) batches->fetch_add(1);
    return pg.Transact(d, [&](keel::postgres::Transaction& tx) -> absl::Status {
      for (const auto& w : writes) {
        absl::Status s = tx.Execute("INSERT INTO " + table +
                                        " (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET "
                                        "v = EXCLUDED.v",
                                    w.key, w.value)
                             .status();
        if (!s.ok()) return s;
      }
      return absl::OkStatus();
    });
  };
}

struct Instance {
  std::unique_ptr<StringCache> cache;
  CacheTier<std::string>* redis_tier = nullptr;
  std::shared_ptr<WriteBehindLog<std::string>> log;
};

Instance MakeInstance(keel::redis::Client& client, const std::string& name,
                      WriteBehind<std::string> wb) {
  Instance out;
  StringCache::Tiers tiers;
  tiers.push_back(keel::cache::LocalTier<std::string>::Create({.max_entries = 10'000}).value());
  auto tier = CacheTier<std::string>::Create({.name = name, .command_timeout = 2s}, client).value();
  out.redis_tier = tier.get();
  out.log = WriteBehindLog<std::string>::Create(*tier, client).value();
  tiers.push_back(std::move(tier));
  wb.durable = out.log;
  out.cache =
      StringCache::Create({.name = name, .ttl = 10min}, std::move(tiers), std::move(wb)).value();
  return out;
}

int64_t Integer(keel::redis::Client& client, std::initializer_list<std::string> argv) {
  std::vector<std::string_view> v(argv.begin(), argv.end());
  auto r = client.CommandArgv(Deadline::After(2s), v);
  REQUIRE(r.ok());
  return r->integer();
}

// The writing process: acknowledges n write-behind puts, says so in <out>, then waits to be
// killed. Its flusher would only flush after an hour.
int Worker(const std::string& url, const std::string& name, int n, const std::string& out) {
  auto client = keel::test::MakeRedisClient(url, 2);
  Instance inst =
      MakeInstance(*client, name,
                   {.writer_batch =
                        [](Deadline, std::span<const PendingWrite<std::string>>) {
                          return absl::InternalError("the writing process must never flush");
                        },
                    .flush_interval = 1h,
                    .batch_size = 10'000,
                    .max_pending = 10'000});
  int acked = 0;
  for (int i = 0; i < n; ++i) {
    if (inst.cache
            ->PutBehind(Deadline::After(5s), std::string("key:").append(std::to_string(i)),
                        std::string("value:").append(std::to_string(i)))
            .ok()) {
      ++acked;
    }
  }
  std::ofstream(out + ".tmp") << acked << "\n";
  std::rename((out + ".tmp").c_str(), out.c_str());
  std::this_thread::sleep_for(1h);  // killed before this ends
  return 0;
}

}  // namespace

TEST_CASE("redis write-behind worker", "[.redis_wb_worker]") {
  const auto spec = keel::test::Env("KEEL_WB_WORKER");
  if (!spec.has_value()) return;  // hidden; a no-op without orders
  std::istringstream in(*spec);
  std::string url, name, out;
  int n = 0;
  in >> url >> name >> n >> out;
  REQUIRE(!out.empty());
  std::_Exit(Worker(url, name, n, out));
}

TEST_CASE(
    "redis write-behind log: PutBehind writes the tier entry and the pending write "
    "together, and a flush upserts into PostgreSQL and empties the set",
    "[redis_cache][write_behind]") {
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  auto pg = Postgres();
  CreateTable(*pg, "keel_wb_basic");
  std::atomic<int> batches{0};
  Instance inst = MakeInstance(*client, "wb-basic",
                               {.writer_batch = Upsert(*pg, "keel_wb_basic", &batches),
                                .flush_interval = 1h,
                                .batch_size = 2,
                                .max_pending = 3,
                                .flusher_thread = false});
  REQUIRE(inst.cache->PutBehind(Deadline::After(2s), "a", "1").ok());
  REQUIRE(inst.cache->PutBehind(Deadline::After(2s), "b", "2").ok());
  REQUIRE(inst.cache->PutBehind(Deadline::After(2s), "a", "3").ok());  // coalesced
  REQUIRE(inst.cache->PutBehind(Deadline::After(2s), "c", "4").ok());
  // max_pending (3) counts keys in Redis: a fourth key is refused, nothing written for it.
  CHECK(absl::IsResourceExhausted(inst.cache->PutBehind(Deadline::After(2s), "d", "5")));
  auto raw = client->Command(Deadline::After(2s), "GET", "keel:cache:wb-basic:a");
  REQUIRE(raw.ok());
  CHECK(raw->str() == "v3");  // the tier's frame
  CHECK(Integer(*client, {"EXISTS", "keel:cache:wb-basic:d"}) == 0);
  CHECK(Integer(*client, {"HLEN", "{keel:wb:wb-basic}:values"}) == 3);
  CHECK(Rows(*pg, "keel_wb_basic").empty());
  auto s = inst.cache->Stats();
  CHECK(s.write_behind_writes_total == 4);
  CHECK(s.write_behind_coalesced_total == 1);
  CHECK(s.write_behind_rejected_total == 1);

  REQUIRE(inst.cache->Flush(Deadline::After(10s)).ok());
  CHECK(Rows(*pg, "keel_wb_basic") ==
        std::map<std::string, std::string>{{"a", "3"}, {"b", "2"}, {"c", "4"}});
  CHECK(batches == 2);  // batch_size 2
  CHECK(Integer(*client, {"HLEN", "{keel:wb:wb-basic}:values"}) == 0);
  CHECK(Integer(*client, {"ZCARD", "{keel:wb:wb-basic}:dirty"}) == 0);
  CHECK(Integer(*client, {"ZCARD", "{keel:wb:wb-basic}:claimed"}) == 0);
  CHECK(inst.cache->Stats().write_behind_flushed_total == 3);
  CHECK(inst.cache->Stats().write_behind_pending == 0);
}

TEST_CASE(
    "redis write-behind log: flushers claim disjoint batches, and a dead flusher's keys are "
    "claimed again when its lease runs out",
    "[redis_cache][write_behind]") {
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  auto tier = CacheTier<std::string>::Create({.name = "wb-claim"}, *client).value();
  auto a = WriteBehindStore::Create(tier->store(), *client).value();
  auto b = WriteBehindStore::Create(tier->store(), *client).value();
  for (const char* k : {"k1", "k2", "k3", "k4"}) {
    REQUIRE(a->Append(Deadline::After(2s), k, "vx", "x", 10min, 100).ok());
  }
  auto first = a->Claim(Deadline::After(2s), 2, 0s, 1s);  // a dies holding these
  REQUIRE(first.ok());
  REQUIRE(first->writes.size() == 2);
  CHECK(first->pending == 4);
  auto second = b->Claim(Deadline::After(2s), 10, 0s, 60s);
  REQUIRE(second.ok());
  REQUIRE(second->writes.size() == 2);
  for (const auto& w : second->writes) {
    for (const auto& f : first->writes) CHECK(w.key != f.key);
  }
  std::vector<WriteBehindStore::Settle> done;
  for (const auto& w : second->writes) done.push_back({w.key, w.version});
  REQUIRE(b->Complete(Deadline::After(2s), done).ok());
  // Nothing is claimable until a's lease (1 s of Redis time) runs out; then b takes a's keys.
  std::vector<std::string> taken;
  const auto give_up = std::chrono::steady_clock::now() + 10s;
  while (taken.empty() && std::chrono::steady_clock::now() < give_up) {
    auto again = b->Claim(Deadline::After(2s), 10, 0s, 60s);
    REQUIRE(again.ok());
    for (const auto& w : again->writes) taken.push_back(w.key);
    if (taken.empty()) std::this_thread::sleep_for(50ms);
  }
  std::vector<std::string> expected;
  for (const auto& w : first->writes) expected.push_back(w.key);
  CHECK(taken == expected);
}

TEST_CASE(
    "redis write-behind log: a writing process killed before any flush loses none of its "
    "acknowledged writes: another instance flushes them all to PostgreSQL",
    "[redis_cache][write_behind]") {
  constexpr int kWrites = 300;
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  auto pg = Postgres();
  CreateTable(*pg, "keel_wb_crash");
  const std::string name = "wb-crash";
  keel::test::TempDir dir("keel-wb-crash");
  const std::string out = (dir.path() / "acked").string();
  keel::test::Subprocess writer = keel::test::StartSelf(
      "KEEL_WB_WORKER=" + server.url() + " " + name + " " + std::to_string(kWrites) + " " + out,
      "[.redis_wb_worker]", out + ".log");
  REQUIRE(keel::test::AwaitFile(out, 60s));
  int acked = 0;
  std::ifstream(out) >> acked;
  REQUIRE(acked == kWrites);
  writer.Kill();  // kill -9: its in-process state, flusher included, is gone
  CHECK(Rows(*pg, "keel_wb_crash").empty());

  std::atomic<int> batches{0};
  Instance other = MakeInstance(*client, name,
                                {.writer_batch = Upsert(*pg, "keel_wb_crash", &batches),
                                 .flush_interval = 1h,
                                 .batch_size = 50,
                                 .flusher_thread = false});
  REQUIRE(other.cache->Flush(Deadline::After(30s)).ok());
  const auto rows = Rows(*pg, "keel_wb_crash");
  REQUIRE(rows.size() == static_cast<size_t>(kWrites));
  for (int i = 0; i < kWrites; ++i) {
    CHECK(rows.at(std::string("key:").append(std::to_string(i))) ==
          std::string("value:").append(std::to_string(i)));
  }
  CHECK(batches == kWrites / 50);
  CHECK(Integer(*client, {"HLEN", "{keel:wb:wb-crash}:values"}) == 0);
}

TEST_CASE(
    "redis write-behind log: a write-through Put supersedes an older pending write, so the "
    "older value never reaches PostgreSQL after the newer one",
    "[redis_cache][write_behind]") {
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  auto pg = Postgres();
  CreateTable(*pg, "keel_wb_through");
  Instance inst = MakeInstance(*client, "wb-through",
                               {.writer_batch = Upsert(*pg, "keel_wb_through"),
                                .flush_interval = 1h,
                                .flusher_thread = false});
  REQUIRE(inst.cache->PutBehind(Deadline::After(2s), "k", "old").ok());
  const auto upsert = Upsert(*pg, "keel_wb_through");
  REQUIRE(inst.cache
              ->Put(Deadline::After(5s), "k", "new",
                    [&](Deadline d, const std::string& v) {
                      const PendingWrite<std::string> w{"k", v};
                      return upsert(d, std::span(&w, 1));
                    })
              .ok());
  CHECK(Integer(*client, {"HLEN", "{keel:wb:wb-through}:values"}) == 0);
  REQUIRE(inst.cache->Flush(Deadline::After(10s)).ok());
  CHECK(Rows(*pg, "keel_wb_through") == std::map<std::string, std::string>{{"k", "new"}});
  CHECK(inst.cache->Stats().write_behind_flushed_total == 0);
}

TEST_CASE("cache Warm costs two Redis round trips: one MGET and one pipelined multi-set",
          "[redis_cache][warm]") {
  keel::test::RedisServer server;
  auto client = keel::test::MakeRedisClient(server.url());
  StringCache::Tiers tiers;
  auto* local = tiers.emplace_back(keel::cache::LocalTier<std::string>::Create({}).value()).get();
  tiers.push_back(CacheTier<std::string>::Create({.name = "warm"}, *client).value());
  auto cache = StringCache::Create({.name = "warm", .ttl = 10min}, std::move(tiers)).value();
  REQUIRE(client->Command(Deadline::After(2s), "SET", "keel:cache:warm:hot-1", "vh1").ok());
  REQUIRE(client->Command(Deadline::After(2s), "SET", "keel:cache:warm:hot-2", "vh2").ok());
  REQUIRE(client->Command(Deadline::After(2s), "CONFIG", "RESETSTAT").ok());
  std::vector<std::string> names;
  for (int i = 0; i < 20; ++i) names.push_back(std::string("cold-").append(std::to_string(i)));
  names.push_back("hot-1");
  names.push_back("hot-2");
  std::vector<std::string_view> keys(names.begin(), names.end());
  int loader_calls = 0;
  const uint64_t calls_before = client->Stats().transport.calls_total;
  auto warmed = cache->Warm(Deadline::After(5s), keys,
                            [&](Deadline, std::span<const std::string_view> missing)
                                -> absl::StatusOr<std::vector<std::optional<std::string>>> {
                              ++loader_calls;
                              std::vector<std::optional<std::string>> out;
                              for (std::string_view k : missing)
                                out.emplace_back("loaded:" + std::string(k));
                              return out;
                            });
  const uint64_t calls = client->Stats().transport.calls_total - calls_before;
  REQUIRE(warmed.ok());
  CHECK(warmed->found == 2);
  CHECK(warmed->loaded == 20);
  CHECK(loader_calls == 1);
  CHECK(calls == 2);  // the MGET, then the pipeline of SETs
  auto stats = client->Command(Deadline::After(2s), "INFO", "commandstats");
  REQUIRE(stats.ok());
  const std::string info = stats->str();
  CHECK(info.find("cmdstat_mget:calls=1,") != std::string::npos);
  CHECK(info.find("cmdstat_set:calls=20,") != std::string::npos);
  CHECK(info.find("cmdstat_get:") == std::string::npos);
  // The local tier is warm: these reads need no Redis at all.
  for (std::string_view k : keys) {
    auto hit = local->Get(Deadline::After(1s), k);
    REQUIRE(hit.ok());
    CHECK(hit->has_value());
  }
}
