// keel/cache/cache_options.h: the options and statistics of `keel::cache::Cache<T>`
// (keel/cache/cache.h), which does not depend on T.
//
// Defines `keel::cache::CacheOptions`, `keel::cache::CacheStats` and `CacheTierStats`.
//
// Thread safety: plain values.
//
//   keel::cache::CacheOptions o{.name = "profiles", .ttl = std::chrono::minutes(10),
//                               .ttl_jitter = std::chrono::minutes(1),
//                               .negative_ttl = std::chrono::seconds(30),
//                               .refresh_after = std::chrono::minutes(5)};
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "keel/async/executor.h"
#include "keel/cache/tier.h"
#include "keel/clock.h"

namespace keel::cache {

struct CacheOptions {
  // Names the cache in errors (`cache "profiles": ...`) and in the `name` label of its metrics.
  // Default: "cache".
  std::string name = "cache";

  // How long a loaded or written value lives in every tier. Must be > 0. Default: 5 min.
  Duration ttl = std::chrono::minutes(5);
  // Each write lives ttl plus a uniformly random extra in [0, ttl_jitter], drawn per write, so
  // keys loaded together do not expire (and reload) together. Must be >= 0 and <= ttl.
  // Default: 0 (no jitter).
  Duration ttl_jitter = Duration::zero();
  // When set, a loader's NOT_FOUND is cached (a negative entry) for this long, and reads within it
  // return NOT_FOUND without calling the loader. Must be > 0 when set. Default: none (NOT_FOUND
  // is returned and not cached).
  std::optional<Duration> negative_ttl = std::nullopt;

  // Refresh-ahead (Caffeine's refreshAfterWrite): a read that finds an entry written at least
  // refresh_after ago returns it and reloads it in the background (one reload per key at a time);
  // a failed reload keeps the old value. Acts on tiers that keep entry metadata (LocalTier).
  // Must be > 0 and < ttl when set (ttl still removes entries nobody reads). Default: none.
  std::optional<Duration> refresh_after = std::nullopt;
  // XFetch (Vattani, Chierichetti, Lowenstein, PVLDB 2015): a read recomputes the entry early, in
  // the background, when `now - delta * xfetch_beta * ln(u) >= expiry` (u uniform in (0, 1],
  // delta the entry's last load time), so hot keys are reloaded shortly before they expire and
  // never all at once. Acts on tiers that keep entry metadata (LocalTier). Default: false.
  bool xfetch = false;
  // XFetch's beta: above 1 recomputes earlier, below 1 later. Must be > 0. Default: 1.
  double xfetch_beta = 1.0;
  // The deadline of each background reload (refresh-ahead, XFetch). A reload still running after
  // it no longer holds back the next reload of its key. Must be > 0. Default: 10 s.
  Duration background_timeout = std::chrono::seconds(10);
  // Where background reloads run. Must outlive the cache; it may drop tasks (they are then
  // counted as dropped). Default: none, meaning a keel::ThreadPoolBulkhead the cache owns
  // ("<name>-refresh", background_threads threads, 100 queued), started only when refresh_after
  // or xfetch is set.
  Executor* executor = nullptr;
  // Threads of the cache's own executor. Must be >= 1. Default: 1.
  int background_threads = 1;

  // Stampede protection across processes: the first process to miss a key takes this lock and
  // loads; the others poll the tiers every stampede_poll_interval and take the lock themselves
  // when it frees; none waits longer than stampede_max_wait before loading on its own (bound:
  // docs/caching.md). Default: none (single-flight in this process only).
  std::shared_ptr<StampedeLock> stampede_lock = nullptr;
  // Must be > 0. Default: 20 ms.
  Duration stampede_poll_interval = std::chrono::milliseconds(20);
  // Must be > 0. Default: 2 s.
  Duration stampede_max_wait = std::chrono::seconds(2);
  // Bound of each attempt at the lock (besides the caller's deadline). Must be > 0.
  // Default: 100 ms.
  Duration stampede_lock_timeout = std::chrono::milliseconds(100);
};

// The counters of one tier as the cache sees it (Stats().tiers, in tier order).
struct CacheTierStats {
  std::string kind;                 // the tier's kind(): "local", "redis"
  uint64_t hits_total = 0;          // reads that found an entry (a negative one included)
  uint64_t misses_total = 0;        // reads that found nothing
  uint64_t errors_total = 0;        // reads that failed: the cache went on without this tier
  uint64_t write_errors_total = 0;  // writes (fills, loads, Put) the tier refused or failed
};

// A snapshot of a cache's counters (relaxed loads: each exact, not taken at one instant).
struct CacheStats {
  uint64_t hits_total = 0;            // GetOrLoad/Get answered from a tier (negative hits included)
  uint64_t negative_hits_total = 0;   // of those, negative entries (answered NOT_FOUND)
  uint64_t misses_total = 0;          // GetOrLoad/Get that found the key in no tier
  uint64_t loads_total = 0;           // loader calls (foreground and background)
  uint64_t load_not_found_total = 0;  // loader calls that returned NOT_FOUND
  uint64_t load_errors_total = 0;     // loader calls that failed otherwise (never cached)
  uint64_t loader_exceptions_total = 0;       // loader calls that threw (INTERNAL; in errors too)
  uint64_t stampede_waits_total = 0;          // GetOrLoad calls that waited for this process's load
  uint64_t stampede_lock_waits_total = 0;     // loads that found another process loading
  uint64_t stampede_lock_errors_total = 0;    // lock attempts that failed: loaded without it
  uint64_t stampede_lock_timeouts_total = 0;  // waited stampede_max_wait, then loaded anyway
  uint64_t early_recomputes_total = 0;        // background reloads started by XFetch
  uint64_t refreshes_total = 0;               // background reloads that stored a result
  uint64_t refresh_failures_total = 0;        // background reloads that failed (old value kept)
  uint64_t refreshes_dropped_total = 0;       // background reloads the executor never ran
  uint64_t writes_total = 0;                  // Put calls whose writer succeeded
  uint64_t writer_errors_total = 0;           // Put calls whose writer failed (no tier changed)
  uint64_t warmed_total = 0;                  // keys Warm found in a tier or loaded

  // Write-behind (all zero without it; keel/cache/write_behind.h).
  // Keys waiting for the writer, the batch being written included (gauge). With a durable
  // pending set: the whole set's, as this process's last claim saw it.
  uint64_t write_behind_pending = 0;
  // How long the oldest pending write has waited (gauge; zero when none). Durable: as the last
  // claim saw it.
  Duration write_behind_lag{};
  uint64_t write_behind_writes_total = 0;      // PutBehind calls accepted
  uint64_t write_behind_coalesced_total = 0;   // of those, replacing a pending write of the key
  uint64_t write_behind_rejected_total = 0;    // PutBehind calls refused at max_pending
  uint64_t write_behind_flushed_total = 0;     // writes the batch writer wrote
  uint64_t write_behind_batches_total = 0;     // batches written
  uint64_t write_behind_failures_total = 0;    // batches that failed after retries (kept pending)
  uint64_t write_behind_dropped_total = 0;     // writes dropped (drop_on), on_dropped called
  uint64_t write_behind_superseded_total = 0;  // pending writes a write-through Put replaced
  uint64_t write_behind_errors_total = 0;      // durable pending set calls that failed
  uint64_t pending_reads_total = 0;            // reads that missed every tier, answered pending
  std::vector<CacheTierStats> tiers;
};

}  // namespace keel::cache
