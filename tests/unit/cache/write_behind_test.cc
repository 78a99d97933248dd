// keel::cache::Cache<T> write-behind: coalescing, batching, flush on shutdown, backpressure,
// failed batches kept or dropped, ordering against write-through, reads of pending writes,
// metrics. ManualClock, no sleeps: the flusher is driven by FlushDue() unless a test is about the
// flusher thread.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <map>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "keel/cache/cache.h"
#include "keel/cache/local_tier.h"
#include "keel/metrics.h"
#include "keel/status.h"
#include "unit/cache/cache_fakes.h"

using keel::Deadline;
using keel::ManualClock;
using keel::cache::Cache;
using keel::cache::LocalTier;
using keel::cache::PendingWrite;
using keel::cache::WhenFull;
using keel::cache::WriteBehind;
using keel::test::FakeRemoteTier;
using namespace std::chrono_literals;

namespace {

using StringCache = Cache<std::string>;
using Batch = std::vector<std::pair<std::string, std::string>>;

// The source of truth: what the batch writer wrote, batch by batch.
struct Source {
  keel::Mutex mu;
  std::map<std::string, std::string> rows ABSL_GUARDED_BY(mu);
  std::vector<Batch> batches ABSL_GUARDED_BY(mu);
  std::vector<std::pair<std::string, std::string>> log ABSL_GUARDED_BY(mu);  // every write
  std::function<absl::Status(const Batch&)> fail;  // set before the cache runs

  absl::Status Write(std::span<const PendingWrite<std::string>> writes) {
    Batch b;
    for (const auto& w : writes) b.emplace_back(w.key, w.value);
    if (fail) {
      if (absl::Status s = fail(b); !s.ok()) return s;
    }
    keel::MutexLock lock(mu);
    for (const auto& [k, v] : b) {
      rows[k] = v;
      log.emplace_back(k, v);
    }
    batches.push_back(std::move(b));
    return absl::OkStatus();
  }
  std::vector<Batch> Batches() {
    keel::MutexLock lock(mu);
    return batches;
  }
  std::optional<std::string> Row(const std::string& k) {
    keel::MutexLock lock(mu);
    auto it = rows.find(k);
    if (it == rows.end()) return std::nullopt;
    return it->second;
  }
  std::vector<std::pair<std::string, std::string>> Log() {
    keel::MutexLock lock(mu);
    return log;
  }
};

struct Fixture {
  ManualClock clock;
  Source source;
  LocalTier<std::string>* local = nullptr;
  FakeRemoteTier* remote = nullptr;

  WriteBehind<std::string> Config() {
    return {.writer_batch =
                [this](Deadline, std::span<const PendingWrite<std::string>> writes) {
                  return source.Write(writes);
                },
            .flush_interval = 1s,
            .batch_size = 50,
            .max_pending = 1000,
            .retry = {.max_attempts = 1},
            .flusher_thread = false};
  }
  std::unique_ptr<StringCache> Make(WriteBehind<std::string> wb,
                                    keel::MetricsRegistry* metrics = nullptr) {
    StringCache::Tiers tiers;
    auto l = LocalTier<std::string>::Create({.max_entries = 1000}, clock).value();
    local = l.get();
    tiers.push_back(std::move(l));
    auto r = std::make_unique<FakeRemoteTier>();
    remote = r.get();
    tiers.push_back(std::move(r));
    auto cache =
        StringCache::Create({.name = "wb"}, std::move(tiers), std::move(wb), clock, metrics);
    REQUIRE(cache.ok());
    return std::move(*cache);
  }
};

StringCache::Loader NeverLoads() {
  return [](Deadline) -> absl::StatusOr<std::string> {
    FAIL("the loader must not run");
    return absl::InternalError("unreachable");
  };
}

}  // namespace

TEST_CASE("write-behind puts reach the tiers at once and coalesce by key until the flush",
          "[cache][write_behind]") {
  Fixture f;
  auto cache = f.Make(f.Config());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "a", "1").ok());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "b", "2").ok());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "a", "3").ok());  // last write wins
  CHECK(cache->Get(Deadline::Infinite(), "a").value() == std::optional<std::string>("3"));
  CHECK(f.remote->Peek("a") == std::optional<std::optional<std::string>>("3"));
  CHECK(f.source.Batches().empty());
  auto s = cache->Stats();
  CHECK(s.write_behind_pending == 2);
  CHECK(s.write_behind_writes_total == 3);
  CHECK(s.write_behind_coalesced_total == 1);

  f.clock.Advance(999ms);
  CHECK(cache->FlushDue() == 0);  // the oldest write has waited less than flush_interval
  f.clock.Advance(1ms);
  CHECK(cache->FlushDue() == 2);
  // One batch, oldest first, each key once with its last value ("a" keeps its first place).
  CHECK(f.source.Batches() == std::vector<Batch>{{{"a", "3"}, {"b", "2"}}});
  s = cache->Stats();
  CHECK(s.write_behind_pending == 0);
  CHECK(s.write_behind_flushed_total == 2);
  CHECK(s.write_behind_batches_total == 1);
  CHECK(s.write_behind_lag == keel::Duration::zero());
}

TEST_CASE("write-behind writes batches of batch_size as soon as that many keys wait",
          "[cache][write_behind]") {
  Fixture f;
  auto config = f.Config();
  config.batch_size = 3;
  auto cache = f.Make(std::move(config));
  for (int i = 0; i < 7; ++i) {
    REQUIRE(cache->PutBehind(Deadline::Infinite(), std::string("k").append(std::to_string(i)), "v")
                .ok());
  }
  // Due by count, not by age: two full batches go, the seventh write waits for its interval.
  CHECK(cache->FlushDue() == 6);
  auto batches = f.source.Batches();
  REQUIRE(batches.size() == 2);
  CHECK(batches[0] == Batch{{"k0", "v"}, {"k1", "v"}, {"k2", "v"}});
  CHECK(batches[1] == Batch{{"k3", "v"}, {"k4", "v"}, {"k5", "v"}});
  CHECK(cache->Stats().write_behind_pending == 1);
  f.clock.Advance(1s);
  CHECK(cache->FlushDue() == 1);
  CHECK(f.source.Batches().back() == Batch{{"k6", "v"}});
}

TEST_CASE("write-behind lag is the age of the oldest pending write", "[cache][write_behind]") {
  Fixture f;
  keel::MetricsRegistry registry;
  auto cache = f.Make(f.Config(), &registry);
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "a", "1").ok());
  f.clock.Advance(300ms);
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "b", "1").ok());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "a", "2").ok());  // coalesced: keeps a's age
  f.clock.Advance(400ms);
  auto s = cache->Stats();
  CHECK(s.write_behind_pending == 2);
  CHECK(s.write_behind_lag == 700ms);
  const std::string text = registry.RenderPrometheus();
  CHECK(text.find("keel_cache_write_behind_pending{name=\"wb\"} 2") != std::string::npos);
  CHECK(text.find("keel_cache_write_behind_lag_seconds{name=\"wb\"} 0.7") != std::string::npos);
  CHECK(text.find("keel_cache_write_behind_writes_total{name=\"wb\",result=\"coalesced\"} 1") !=
        std::string::npos);
  CHECK(text.find("keel_cache_write_behind_writes_total{name=\"wb\",result=\"new\"} 2") !=
        std::string::npos);
}

TEST_CASE(
    "write-behind Flush writes everything pending whatever its age, and the destructor "
    "flushes too",
    "[cache][write_behind]") {
  Fixture f;
  auto cache = f.Make(f.Config());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "a", "1").ok());
  REQUIRE(cache->Flush(Deadline::After(5s, f.clock)).ok());
  CHECK(f.source.Row("a") == "1");
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "b", "2").ok());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "c", "3").ok());
  CHECK(!f.source.Row("b").has_value());
  cache.reset();
  CHECK(f.source.Row("b") == "2");
  CHECK(f.source.Row("c") == "3");
}

TEST_CASE(
    "write-behind at max_pending rejects new keys with RESOURCE_EXHAUSTED but takes "
    "rewrites of pending ones",
    "[cache][write_behind]") {
  Fixture f;
  auto config = f.Config();
  config.batch_size = 2;
  config.max_pending = 2;
  auto cache = f.Make(std::move(config));
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "a", "1").ok());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "b", "1").ok());
  const absl::Status full = cache->PutBehind(Deadline::Infinite(), "c", "1");
  CHECK(absl::IsResourceExhausted(full));
  CHECK(full.message() == "cache \"wb\": write-behind full: 2 keys pending (max_pending)");
  CHECK(keel::RetryAfter(full) == std::optional<std::chrono::nanoseconds>(1s));
  // Refused: not in any tier either.
  CHECK(cache->Get(Deadline::Infinite(), "c").value() == std::nullopt);
  CHECK(cache->PutBehind(Deadline::Infinite(), "a", "2").ok());
  CHECK(cache->Stats().write_behind_rejected_total == 1);
  CHECK(cache->FlushDue() == 2);
  CHECK(cache->PutBehind(Deadline::Infinite(), "c", "1").ok());
}

TEST_CASE(
    "write-behind with kWait blocks a put at max_pending until a flush makes room or its "
    "deadline passes",
    "[cache][write_behind]") {
  Fixture f;
  auto config = f.Config();
  config.batch_size = 1;
  config.max_pending = 1;
  config.when_full = WhenFull::kWait;
  auto cache = f.Make(std::move(config));
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "a", "1").ok());
  {
    absl::Status waited;
    std::thread writer([&] { waited = cache->PutBehind(Deadline::After(10s, f.clock), "b", "2"); });
    f.clock.AwaitSleepers(1);  // blocked for room
    REQUIRE(cache->Flush(Deadline::After(1s, f.clock)).ok());
    writer.join();
    CHECK(waited.ok());
  }
  {
    absl::Status waited;
    std::thread writer([&] { waited = cache->PutBehind(Deadline::After(10s, f.clock), "c", "3"); });
    f.clock.AwaitSleepers(1);
    f.clock.Advance(10s);
    writer.join();
    CHECK(absl::IsDeadlineExceeded(waited));
  }
  CHECK(cache->Stats().write_behind_rejected_total == 1);
}

TEST_CASE(
    "write-behind keeps a batch that failed after its retries pending, in its place, and "
    "writes the newest value next time",
    "[cache][write_behind]") {
  Fixture f;
  std::atomic<bool> down{true};
  f.source.fail = [&](const Batch&) {
    return down ? absl::UnavailableError("db down") : absl::OkStatus();
  };
  auto cache = f.Make(f.Config());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "a", "1").ok());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "b", "1").ok());
  f.clock.Advance(1s);
  CHECK(cache->FlushDue() == 0);
  auto s = cache->Stats();
  CHECK(s.write_behind_failures_total == 1);
  CHECK(s.write_behind_pending == 2);
  CHECK(s.write_behind_dropped_total == 0);
  CHECK(s.write_behind_lag == 1s);  // the failed writes keep their age
  const absl::Status flushed = cache->Flush(Deadline::After(1s, f.clock));
  CHECK(absl::IsUnavailable(flushed));
  CHECK(flushed.message() ==
        "cache \"wb\": write-behind batch kept pending: retry \"wb-write-behind\": gave up after "
        "1 attempt: db down");
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "c", "1").ok());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "a", "2").ok());
  down = false;
  CHECK(cache->FlushDue() == 3);
  CHECK(f.source.Batches() == std::vector<Batch>{{{"a", "2"}, {"b", "1"}, {"c", "1"}}});
}

TEST_CASE("write-behind retries a failed batch with keel's Retry before keeping it",
          "[cache][write_behind]") {
  Fixture f;
  std::atomic<int> calls{0};
  f.source.fail = [&](const Batch&) {
    return calls.fetch_add(1) == 0 ? absl::UnavailableError("blip") : absl::OkStatus();
  };
  auto config = f.Config();
  config.retry = {.max_attempts = 2,
                  .backoff = {.kind = keel::Backoff::Kind::kConstant, .base = 100ms, .cap = 100ms}};
  auto cache = f.Make(std::move(config));
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "a", "1").ok());
  f.clock.Advance(1s);
  size_t written = 0;
  std::thread flusher([&] { written = cache->FlushDue(); });
  f.clock.AwaitSleepers(1);  // in the backoff
  f.clock.Advance(100ms);
  flusher.join();
  CHECK(written == 1);
  CHECK(calls == 2);
  CHECK(f.source.Row("a") == "1");
  CHECK(cache->Stats().write_behind_failures_total == 0);
}

TEST_CASE("write-behind drops only the writes the writer refuses for good, one by one",
          "[cache][write_behind]") {
  Fixture f;
  f.source.fail = [](const Batch& b) {
    for (const auto& [k, v] : b) {
      if (v == "bad") return absl::InvalidArgumentError("value violates a constraint");
    }
    return absl::OkStatus();
  };
  std::vector<std::string> dropped;
  auto config = f.Config();
  config.on_dropped = [&](const PendingWrite<std::string>& w, const absl::Status& why) {
    dropped.push_back(w.key + ": " + std::string(why.message()));
  };
  auto cache = f.Make(std::move(config));
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "a", "1").ok());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "b", "bad").ok());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "c", "3").ok());
  CHECK(cache->Flush(Deadline::After(1s, f.clock)).ok());
  CHECK(f.source.Row("a") == "1");
  CHECK(f.source.Row("c") == "3");
  CHECK(!f.source.Row("b").has_value());
  CHECK(dropped == std::vector<std::string>{"b: value violates a constraint"});
  const auto s = cache->Stats();
  CHECK(s.write_behind_dropped_total == 1);
  CHECK(s.write_behind_flushed_total == 2);
  CHECK(s.write_behind_pending == 0);
}

TEST_CASE("write-behind: a write-through Put of a pending key supersedes the older pending write",
          "[cache][write_behind]") {
  Fixture f;
  auto cache = f.Make(f.Config());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "k", "old").ok());
  REQUIRE(cache
              ->Put(Deadline::Infinite(), "k", "new",
                    [&](Deadline, const std::string& v) {
                      const PendingWrite<std::string> w{"k", v};
                      return f.source.Write(std::span(&w, 1));
                    })
              .ok());
  CHECK(cache->Flush(Deadline::After(1s, f.clock)).ok());
  // The older value never reaches the source of truth after the newer one.
  CHECK(f.source.Log() == std::vector<std::pair<std::string, std::string>>{{"k", "new"}});
  CHECK(cache->Stats().write_behind_superseded_total == 1);
  CHECK(cache->Get(Deadline::Infinite(), "k").value() == std::optional<std::string>("new"));
}

TEST_CASE(
    "write-behind: a write-through Put waits for an in-flight flush of its key, so the "
    "older flushed value cannot land last",
    "[cache][write_behind]") {
  Fixture f;
  std::promise<void> in_writer;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> first{true};
  f.source.fail = [&](const Batch&) {
    if (first.exchange(false)) {
      in_writer.set_value();
      released.wait();
    }
    return absl::OkStatus();
  };
  auto cache = f.Make(f.Config());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "k", "old").ok());
  std::thread flusher([&] { CHECK(cache->Flush(Deadline::Infinite()).ok()); });
  in_writer.get_future().wait();  // "old" is being written
  absl::Status put;
  std::thread through([&] {
    put = cache->Put(Deadline::After(1h, f.clock), "k", "new", [&](Deadline, const std::string& v) {
      const PendingWrite<std::string> w{"k", v};
      return f.source.Write(std::span(&w, 1));
    });
  });
  f.clock.AwaitSleepers(1);  // the Put waits for the flush of its key
  CHECK(f.source.Log().empty());
  release.set_value();
  flusher.join();
  through.join();
  CHECK(put.ok());
  CHECK(f.source.Log() ==
        std::vector<std::pair<std::string, std::string>>{{"k", "old"}, {"k", "new"}});
  CHECK(f.source.Row("k") == "new");
}

TEST_CASE(
    "write-behind: a PutBehind that starts during a write-through of its key is newer and "
    "wins in the source of truth and the tiers",
    "[cache][write_behind]") {
  Fixture f;
  auto cache = f.Make(f.Config());
  REQUIRE(cache
              ->Put(Deadline::Infinite(), "k", "through",
                    [&](Deadline, const std::string& v) {
                      // While the writer runs, another caller writes behind.
                      REQUIRE(cache->PutBehind(Deadline::Infinite(), "k", "behind").ok());
                      // The flusher keeps off the key while the write-through runs.
                      f.clock.Advance(1s);
                      CHECK(cache->FlushDue() == 0);
                      const PendingWrite<std::string> w{"k", v};
                      return f.source.Write(std::span(&w, 1));
                    })
              .ok());
  CHECK(cache->Get(Deadline::Infinite(), "k").value() == std::optional<std::string>("behind"));
  CHECK(f.remote->Peek("k") == std::optional<std::optional<std::string>>("behind"));
  CHECK(cache->FlushDue() == 1);
  CHECK(f.source.Log() ==
        std::vector<std::pair<std::string, std::string>>{{"k", "through"}, {"k", "behind"}});
}

TEST_CASE(
    "write-behind: a read that misses every tier answers a pending write instead of "
    "loading the older source value",
    "[cache][write_behind]") {
  Fixture f;
  auto cache = f.Make(f.Config());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "k", "pending").ok());
  REQUIRE(cache->Invalidate(Deadline::Infinite(), "k").ok());  // the tiers forget it
  CHECK(cache->GetOrLoad(Deadline::Infinite(), "k", NeverLoads()).value() == "pending");
  CHECK(cache->Stats().pending_reads_total == 1);
  CHECK(cache->Stats().write_behind_pending == 1);  // Invalidate does not cancel the write
  REQUIRE(cache->Flush(Deadline::After(1s, f.clock)).ok());
  CHECK(f.source.Row("k") == "pending");
}

TEST_CASE(
    "write-behind's flusher thread writes a batch when batch_size keys wait and when the "
    "oldest write is due",
    "[cache][write_behind]") {
  Fixture f;
  std::promise<Batch> first_batch, second_batch;
  std::atomic<int> batches{0};
  f.source.fail = [&](const Batch& b) {
    const int n = batches.fetch_add(1);
    if (n == 0) first_batch.set_value(b);
    if (n == 1) second_batch.set_value(b);
    return absl::OkStatus();
  };
  auto config = f.Config();
  config.batch_size = 2;
  config.flusher_thread = true;
  auto cache = f.Make(std::move(config));
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "a", "1").ok());
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "b", "2").ok());
  auto got = first_batch.get_future();
  REQUIRE(got.wait_for(30s) == std::future_status::ready);  // by count, no time passed
  CHECK(got.get() == Batch{{"a", "1"}, {"b", "2"}});
  REQUIRE(cache->PutBehind(Deadline::Infinite(), "c", "3").ok());
  f.clock.Advance(1s);  // now due by age
  auto next = second_batch.get_future();
  REQUIRE(next.wait_for(30s) == std::future_status::ready);
  CHECK(next.get() == Batch{{"c", "3"}});
}

TEST_CASE("write-behind options are checked and PutBehind needs a write-behind cache",
          "[cache][write_behind]") {
  Fixture f;
  const auto make = [&](WriteBehind<std::string> wb) {
    return StringCache::Create({.name = "wb"}, {}, std::move(wb), f.clock).status();
  };
  auto c = f.Config();
  c.writer_batch = nullptr;
  CHECK(make(c).message() == "cache \"wb\": write_behind.writer_batch must be set");
  c = f.Config();
  c.batch_size = 0;
  CHECK(make(c).message() == "cache \"wb\": write_behind.batch_size must be >= 1, got 0");
  c = f.Config();
  c.max_pending = 10;
  c.batch_size = 20;
  CHECK(make(c).message() ==
        "cache \"wb\": write_behind.max_pending must be >= write_behind.batch_size, got 10");
  c = f.Config();
  c.flush_interval = 0s;
  CHECK(make(c).message() == "cache \"wb\": write_behind.flush_interval must be > 0, got 0");
  c = f.Config();
  c.retry.max_attempts = 0;
  CHECK(absl::IsInvalidArgument(make(c)));
  auto plain = StringCache::Create({.name = "plain"}, {}, f.clock).value();
  CHECK(absl::IsFailedPrecondition(plain->PutBehind(Deadline::Infinite(), "k", "v")));
  CHECK(absl::IsFailedPrecondition(plain->Flush(Deadline::Infinite())));
}
