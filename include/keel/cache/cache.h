// keel/cache/cache.h: a cache of tiers (in-process, then Redis) with cache-aside loading,
// write-through, refresh-ahead, XFetch and stampede protection in one process and across many.
//
// Defines `keel::cache::Cache<T>`. Its options and statistics are in keel/cache/cache_options.h,
// the tier interface in keel/cache/tier.h; docs/caching.md says which strategy to use when.
//
// - Tiers are checked in order (typically a LocalTier, then a keel::redis::CacheTier; either may
//   be absent); a hit in a lower tier fills the tiers above it. A tier that fails (Redis down or
//   paused) is skipped for that call and counted: reads fall through to the loader (fail open).
// - GetOrLoad (cache-aside): on a miss the loader runs once per key in this process however many
//   callers miss together (single-flight); the others wait, each within its own deadline, and a
//   waiter that gives up does not cancel the load for the rest. Loaded values live ttl plus a
//   random jitter in [0, ttl_jitter]; NOT_FOUND is cached for negative_ttl when set; other loader
//   errors are returned and never cached.
// - With Options::stampede_lock, one process of many loads a key all of them miss (see
//   CacheOptions::stampede_lock for the protocol, docs/caching.md for its bound).
// - Refresh-ahead (refresh_after) and XFetch reload in the background on the cache's executor,
//   one reload per key at a time; readers get the current value meanwhile.
// - Put (write-through): the writer (the source of truth) runs first; on its success every tier
//   is updated, and a tier whose update fails has the key removed so nothing stale survives.
// - PutBehind (write-behind, a cache created with a WriteBehind<T>, keel/cache/write_behind.h):
//   the tiers are updated at once and the write waits in a pending set (coalesced by key) that a
//   flusher writes to the source of truth in batches; Flush and the destructor write what is
//   pending. Warm loads many keys at once (one MGET, one batch loader call, one pipelined SET).
//
// Thread safety: thread-safe. The loader and writer run on the calling thread (foreground) or on
// the executor (background reloads), never under a keel lock; what they throw is caught and
// returned as INTERNAL (counted).
//
//   auto cache = keel::cache::Cache<std::string>::Create(
//       {.name = "profiles", .ttl = 10min, .ttl_jitter = 1min, .negative_ttl = 30s},
//       std::move(tiers)).value();
//   absl::StatusOr<std::string> profile = cache->GetOrLoad(
//       keel::Deadline::After(200ms), "user:42",
//       [&](keel::Deadline d) { return db.LoadProfile(d, 42); });   // NOT_FOUND is cached 30s
//   KEEL_RETURN_IF_ERROR(cache->Put(deadline, "user:42", json,
//       [&](keel::Deadline d, const std::string& v) { return db.SaveProfile(d, 42, v); }));
#pragma once

#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/random/bit_gen_ref.h"
#include "absl/random/distributions.h"
#include "absl/random/random.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/cache/cache_options.h"
#include "keel/cache/internal/cache_support.h"
#include "keel/cache/internal/write_behind_engine.h"
#include "keel/cache/tier.h"
#include "keel/cache/write_behind.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/internal/exception.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/metrics.h"
#include "keel/sync.h"

namespace keel::cache {

template <typename T>
class Cache {
 public:
  using Options = CacheOptions;
  using Tiers = std::vector<std::unique_ptr<Tier<T>>>;
  // Produces the value of a key from the source of truth, within the deadline it is given (the
  // caller's, or background_timeout for a background reload). NOT_FOUND: the key does not exist
  // (cached for negative_ttl when set).
  using Loader = std::function<absl::StatusOr<T>(Deadline)>;
  // Writes a value to the source of truth within the deadline.
  using Writer = std::function<absl::Status(Deadline, const T&)>;
  // Loads many keys at once for Warm: one answer per key, in order (nullopt: the key does not
  // exist, cached for negative_ttl when set).
  using BatchLoader = std::function<absl::StatusOr<std::vector<std::optional<T>>>(
      Deadline, std::span<const std::string_view> keys)>;

  // Validates `options` (INVALID_ARGUMENT naming the field: `cache "profiles": ttl must be > 0,
  // got 0`) and takes the tiers (checked in order; none is allowed: every read then loads, with
  // single-flight). `clock`, `metrics` and `random` (the jitter and XFetch draws, used under the
  // cache's lock) must outlive the cache. With `metrics`, registers {name=<name>}:
  // keel_cache_lookups_total{result=hit|miss}, keel_cache_negative_hits_total,
  // keel_cache_tier_reads_total{tier,result=hit|miss|error},
  // keel_cache_tier_write_errors_total{tier}, keel_cache_loads_total{result=ok|not_found|error},
  // keel_cache_loader_exceptions_total, keel_cache_load_seconds (histogram),
  // keel_cache_stampede_waits_total{scope=process|cluster}, keel_cache_stampede_lock_errors_total,
  // keel_cache_stampede_lock_timeouts_total, keel_cache_early_recomputes_total,
  // keel_cache_refreshes_total{result=ok|failed|dropped}, keel_cache_writes_total{result=ok|error};
  // ALREADY_EXISTS for a second cache of the same name in one registry.
  static absl::StatusOr<std::unique_ptr<Cache>> Create(Options options, Tiers tiers,
                                                       Clock& clock = SteadyClock(),
                                                       MetricsRegistry* metrics = nullptr) {
    return CreateImpl(std::move(options), std::move(tiers), std::nullopt, clock, metrics,
                      std::nullopt);
  }
  static absl::StatusOr<std::unique_ptr<Cache>> Create(Options options, Tiers tiers, Clock& clock,
                                                       MetricsRegistry* metrics,
                                                       absl::BitGenRef random) {
    return CreateImpl(std::move(options), std::move(tiers), std::nullopt, clock, metrics, random);
  }
  // A write-behind cache (keel/cache/write_behind.h): as above, and PutBehind, Flush and FlushDue
  // work. Validates `write_behind` too (`cache "profiles": write_behind.batch_size must be >= 1,
  // got 0`); starts its flusher thread when write_behind.flusher_thread. With `metrics`, also
  // registers the gauges keel_cache_write_behind_pending and keel_cache_write_behind_lag_seconds
  // and the counters keel_cache_write_behind_writes_total{result=new|coalesced|rejected},
  // keel_cache_write_behind_{flushed,batches,failures,dropped,superseded,errors}_total and
  // keel_cache_pending_reads_total.
  static absl::StatusOr<std::unique_ptr<Cache>> Create(Options options, Tiers tiers,
                                                       WriteBehind<T> write_behind,
                                                       Clock& clock = SteadyClock(),
                                                       MetricsRegistry* metrics = nullptr) {
    return CreateImpl(std::move(options), std::move(tiers), std::move(write_behind), clock, metrics,
                      std::nullopt);
  }

  // Flushes what write-behind has pending (within write_behind.flush_timeout: what is not
  // written by then is lost with the in-process pending set, and stays in a durable one), then
  // waits for background reloads running now; those still queued on the executor do nothing.
  ~Cache() {
    write_behind_.reset();
    gate_->Close();
    own_executor_.reset();
  }
  Cache(const Cache&) = delete;
  Cache& operator=(const Cache&) = delete;

  // The value of `key`: from the first tier that has it, else from `loader` (once per key in this
  // process at a time; see the banner), stored in every tier.
  // Errors: NOT_FOUND from the loader or a negative entry; the loader's other errors (never
  // cached; INTERNAL when it threw); DEADLINE_EXCEEDED when the deadline passed while waiting for
  // another caller's load (that load goes on); INVALID_ARGUMENT when a tier refuses the key.
  absl::StatusOr<T> GetOrLoad(Deadline deadline, std::string_view key, const Loader& loader)
      ABSL_LOCKS_EXCLUDED(flights_mu_, refresh_mu_, random_mu_) {
    Lookup found = ReadTiers(deadline, key);
    if (!found.refused.ok()) return std::move(found.refused);
    if (found.hit) {
      MaybeRefresh(key, *found.hit, loader);
      return Answer(std::move(*found.hit));
    }
    return LoadShared(deadline, key, loader, found.failed);
  }

  // The value of `key` from the tiers alone: nullopt on a miss. Errors: NOT_FOUND for a negative
  // entry; INVALID_ARGUMENT when a tier refuses the key.
  absl::StatusOr<std::optional<T>> Get(Deadline deadline, std::string_view key) {
    Lookup found = ReadTiers(deadline, key);
    if (!found.refused.ok()) return std::move(found.refused);
    if (!found.hit) {
      if (std::optional<T> pending = PendingValue(deadline, key, found.failed)) return pending;
      counters_.misses.fetch_add(1, std::memory_order_relaxed);
      return std::optional<T>();
    }
    absl::StatusOr<T> v = Answer(std::move(*found.hit));
    if (!v.ok()) return v.status();
    return std::optional<T>(std::move(*v));
  }

  // Write-through: runs `writer` first; on its success stores `value` in every tier (ttl plus
  // jitter). On writer failure no tier changes and its error is returned (INTERNAL if it threw).
  // A tier whose update fails has the key removed there; the error then says the source of truth
  // was written (`cache "profiles": written, but tier redis was not updated (...)`) with the
  // tier's code (UNAVAILABLE, DEADLINE_EXCEEDED; INVALID_ARGUMENT for a refused key or value).
  //
  // On a write-behind cache, Put and PutBehind of one key are ordered: Put waits (within its
  // deadline, DEADLINE_EXCEEDED and nothing written) while a flush of the key is in flight, holds
  // the flusher off the key while its writer runs, and then drops an older pending write of the
  // key (the source of truth has the newer value). A PutBehind that began after this Put stays
  // pending and is written after it, and the tiers keep its value. With a durable pending set,
  // Put first reads the key's pending version there (UNAVAILABLE and nothing written when it
  // cannot), and an error after the writer succeeded says an older pending write may still be
  // flushed over its value.
  absl::Status Put(Deadline deadline, std::string_view key, T value, const Writer& writer)
      ABSL_LOCKS_EXCLUDED(random_mu_) {
    uint64_t version = 0;
    if (write_behind_ != nullptr) {
      absl::StatusOr<uint64_t> v = write_behind_->BeginThrough(deadline, key);
      if (!v.ok()) return v.status();
      version = *v;
    }
    absl::Status written;
    try {
      written = writer(deadline, value);
    } catch (...) {
      written = Threw("writer");
    }
    bool newer_pending = false;
    if (write_behind_ != nullptr) {
      absl::StatusOr<bool> newer =
          write_behind_->EndThrough(deadline, key, value, version, written.ok());
      if (!newer.ok() && written.ok()) {
        counters_.writes.fetch_add(1, std::memory_order_relaxed);
        return absl::Status(newer.status().code(),
                            keel::internal::StrCat(prefix_,
                                                   "written, but an older pending write-behind "
                                                   "value may still be flushed over it: ",
                                                   newer.status().message()));
      }
      newer_pending = newer.ok() && *newer;
    }
    if (!written.ok()) {
      counters_.writer_errors.fetch_add(1, std::memory_order_relaxed);
      return written;
    }
    counters_.writes.fetch_add(1, std::memory_order_relaxed);
    if (newer_pending) return absl::OkStatus();  // the tiers hold the newer pending value
    return SetTiers(deadline, key, std::optional<T>(std::move(value)), "written", nullptr);
  }

  // Write-behind: stores `value` in every tier now and records it as the pending write of `key`
  // (replacing an older pending one: the last write wins), to be written to the source of truth
  // by the batch writer (keel/cache/write_behind.h). OK means acknowledged: in the pending set
  // (this process's memory, or the durable set). A tier that fails has the key removed there and
  // the error says the write is pending (`cache "profiles": pending, but tier local was not
  // updated (...)`).
  // Errors: FAILED_PRECONDITION on a cache created without write-behind; RESOURCE_EXHAUSTED at
  // max_pending (kReject; with a retry-after hint of flush_interval); DEADLINE_EXCEEDED waiting
  // for room (kWait); the durable set's errors (UNAVAILABLE: nothing recorded, no tier changed).
  absl::Status PutBehind(Deadline deadline, std::string_view key, T value)
      ABSL_LOCKS_EXCLUDED(random_mu_) {
    if (write_behind_ == nullptr) {
      return absl::FailedPreconditionError(keel::internal::StrCat(
          prefix_, "PutBehind needs a write-behind cache (Create with a WriteBehind)"));
    }
    const Duration ttl = JitteredTtl();
    KEEL_RETURN_IF_ERROR(write_behind_->Add(deadline, key, value, ttl));
    const DurablePending<T>* durable = write_behind_->durable();
    return SetTiers(deadline, key, std::optional<T>(std::move(value)), "pending", durable, ttl);
  }

  // Writes everything write-behind has pending now (a durable set: everything pending there, by
  // any instance), batch after batch, within `deadline`. Errors: FAILED_PRECONDITION without
  // write-behind; the first failed batch's error (that batch stays pending); DEADLINE_EXCEEDED.
  absl::Status Flush(Deadline deadline) {
    if (write_behind_ == nullptr) {
      return absl::FailedPreconditionError(
          keel::internal::StrCat(prefix_, "Flush needs a write-behind cache"));
    }
    return write_behind_->Flush(deadline);
  }

  // Writes the write-behind batches due now (what the flusher thread does when it wakes), on the
  // calling thread; returns how many writes it wrote. For write_behind.flusher_thread = false.
  size_t FlushDue() { return write_behind_ == nullptr ? 0 : write_behind_->FlushDue(); }

  // Bulk load (warming a cold cache): reads `keys` from each tier in order with one GetMany per
  // tier (the Redis tier: one MGET round trip), fills the tiers above with what a lower tier had,
  // calls `loader` once with the keys no tier had, and stores what it returns in every tier with
  // one SetMany per tier (the Redis tier: one pipelined round trip). Values live ttl plus jitter;
  // a nullopt answer is a negative entry when negative_ttl is set, else nothing. A tier that fails
  // is skipped (counted), as in GetOrLoad. Duplicate keys are read and loaded once. Returns how
  // many keys were found in a tier and how many the loader answered.
  // Errors: the loader's (nothing loaded is stored; INTERNAL when it threw or answered a count
  // other than the keys'); INVALID_ARGUMENT when a tier refuses a key.
  struct WarmResult {
    size_t found = 0;      // keys some tier had (fills included)
    size_t loaded = 0;     // keys the loader gave a value
    size_t not_found = 0;  // keys the loader answered nullopt
  };
  absl::StatusOr<WarmResult> Warm(Deadline deadline, std::span<const std::string_view> keys,
                                  const BatchLoader& loader) ABSL_LOCKS_EXCLUDED(random_mu_) {
    using Hit = typename Tier<T>::Hit;
    using Write = typename Tier<T>::Write;
    std::vector<std::string_view> missing;
    {
      absl::flat_hash_set<std::string_view> seen;
      for (std::string_view k : keys) {
        if (seen.insert(k).second) missing.push_back(k);
      }
    }
    WarmResult result;
    uint32_t failed = 0;
    // What lower tiers had, to fill into the tiers above: (key, hit, tier found in).
    std::vector<std::tuple<std::string_view, Hit, size_t>> found;
    for (size_t i = 0; i < tiers_.size() && !missing.empty(); ++i) {
      absl::StatusOr<std::vector<std::optional<Hit>>> got = tiers_[i]->GetMany(deadline, missing);
      internal::CacheCounters::Tier& c = counters_.tiers[i];
      if (!got.ok() || got->size() != missing.size()) {
        if (got.ok()) got = absl::InternalError("a tier's GetMany answered a wrong count");
        if (absl::IsInvalidArgument(got.status())) return std::move(got).status();
        c.errors.fetch_add(1, std::memory_order_relaxed);
        failed |= uint32_t{1} << i;
        continue;
      }
      std::vector<std::string_view> still;
      for (size_t j = 0; j < missing.size(); ++j) {
        if ((*got)[j]) {
          c.hits.fetch_add(1, std::memory_order_relaxed);
          found.emplace_back(missing[j], std::move(*(*got)[j]), i);
        } else {
          c.misses.fetch_add(1, std::memory_order_relaxed);
          still.push_back(missing[j]);
        }
      }
      missing = std::move(still);
    }
    result.found = found.size();
    // Fill the tiers above each hit, one SetMany per tier.
    for (size_t j = 0; j < tiers_.size(); ++j) {
      if (failed & (uint32_t{1} << j)) continue;
      std::vector<Write> writes;
      for (const auto& [key, hit, tier] : found) {
        if (tier <= j) continue;
        const Duration ttl =
            hit.value ? JitteredTtl() : options_.negative_ttl.value_or(options_.ttl);
        writes.push_back({key, &hit.value, ttl, LoadTimeOf(hit)});
      }
      if (!writes.empty() && !tiers_[j]->SetMany(deadline, writes).ok()) {
        counters_.tiers[j].write_errors.fetch_add(1, std::memory_order_relaxed);
      }
    }
    if (!missing.empty()) {
      const TimePoint start = clock_.Now();
      absl::StatusOr<std::vector<std::optional<T>>> loaded = absl::UnknownError("");
      try {
        loaded = loader(deadline, missing);
      } catch (...) {
        counters_.loader_exceptions.fetch_add(1, std::memory_order_relaxed);
        loaded = Threw("batch loader");
      }
      const Duration took = clock_.Now() - start;
      counters_.ObserveLoad(took);
      counters_.loads.fetch_add(1, std::memory_order_relaxed);
      if (loaded.ok() && loaded->size() != missing.size()) {
        loaded = absl::InternalError(keel::internal::StrCat(prefix_, "the batch loader answered ",
                                                            loaded->size(), " values for ",
                                                            missing.size(), " keys"));
      }
      if (!loaded.ok()) {
        counters_.load_errors.fetch_add(1, std::memory_order_relaxed);
        return std::move(loaded).status();
      }
      std::vector<Write> writes;
      for (size_t j = 0; j < missing.size(); ++j) {
        const std::optional<T>& v = (*loaded)[j];
        if (v) {
          ++result.loaded;
          writes.push_back({missing[j], &v, JitteredTtl(), took});
        } else {
          ++result.not_found;
          if (options_.negative_ttl)
            writes.push_back({missing[j], &v, *options_.negative_ttl, took});
        }
      }
      for (size_t i = 0; i < tiers_.size() && !writes.empty(); ++i) {
        if (failed & (uint32_t{1} << i)) continue;
        if (!tiers_[i]->SetMany(deadline, writes).ok()) {
          counters_.tiers[i].write_errors.fetch_add(1, std::memory_order_relaxed);
        }
      }
    }
    counters_.warmed.fetch_add(result.found + result.loaded, std::memory_order_relaxed);
    return result;
  }

  // Removes `key` from every tier, the last tier first (so a concurrent read cannot refill an
  // upper tier from a lower one's old entry after the upper one was cleared). Returns the first
  // tier error; the other tiers are still cleared.
  absl::Status Invalidate(Deadline deadline, std::string_view key) {
    absl::Status first;
    for (size_t i = tiers_.size(); i-- > 0;) first.Update(tiers_[i]->Erase(deadline, key));
    return first;
  }

  CacheStats Stats() const {
    CacheStats s = counters_.Snapshot();
    s.write_behind_lag = counters_.WriteBehindLag(clock_.Now());
    return s;
  }
  const std::string& name() const { return options_.name; }
  size_t tier_count() const { return tiers_.size(); }
  Tier<T>& tier(size_t i) { return *tiers_[i]; }

 private:
  // The outcome of reading the tiers.
  struct Lookup {
    std::optional<typename Tier<T>::Hit> hit;
    uint32_t failed = 0;   // bit i: tier i failed in this call (skipped for the writes)
    absl::Status refused;  // INVALID_ARGUMENT from a tier: the caller's error
  };

  // One in-process load of a key that the callers missing it together share. Its result is kept
  // as a value and a code and message, so each waiter builds its own Status (a Status shared
  // across threads reads as a race under TSan).
  struct Flight {
    Mutex mu;
    CondVar cv;
    bool done ABSL_GUARDED_BY(mu) = false;
    std::optional<T> value ABSL_GUARDED_BY(mu);
    absl::StatusCode code ABSL_GUARDED_BY(mu) = absl::StatusCode::kOk;
    std::string message ABSL_GUARDED_BY(mu);

    void Publish(const absl::StatusOr<T>& result) ABSL_LOCKS_EXCLUDED(mu) {
      MutexLock lock(mu);
      if (result.ok()) {
        value = *result;
      } else {
        code = result.status().code();
        message = std::string(result.status().message());
      }
      done = true;
      cv.SignalAll();
    }
    // nullopt when the deadline passed first.
    std::optional<absl::StatusOr<T>> Wait(Deadline deadline) ABSL_LOCKS_EXCLUDED(mu) {
      MutexLock lock(mu);
      if (!deadline.clock().WaitUntil(mu, cv, deadline.time(), [this] {
            mu.AssertHeld();
            return done;
          })) {
        return std::nullopt;
      }
      if (value) return absl::StatusOr<T>(*value);
      return absl::StatusOr<T>(absl::Status(code, message));
    }
  };

  // A background reload. Destroyed without running (an executor that dropped it), it still
  // clears its key's in-flight mark and counts the drop.
  struct Reload {
    Cache* cache;
    std::shared_ptr<internal::BackgroundGate> gate;
    std::string key;
    Loader loader;
    uint64_t generation;
    bool ran = false;

    Reload(Cache* c, std::string k, Loader l, uint64_t g)
        : cache(c), gate(c->gate_), key(std::move(k)), loader(std::move(l)), generation(g) {}
    Reload(Reload&& o) noexcept
        : cache(o.cache),
          gate(std::move(o.gate)),
          key(std::move(o.key)),
          loader(std::move(o.loader)),
          generation(o.generation),
          ran(o.ran) {
      o.ran = true;  // the moved-from husk has nothing to clean up
    }
    Reload& operator=(Reload&&) = delete;
    void Run() {
      ran = true;
      if (!gate->Enter()) return;
      cache->RunReload(key, loader, generation);
      gate->Exit();
    }
    ~Reload() {
      if (ran || !gate->Enter()) return;
      cache->counters_.refreshes_dropped.fetch_add(1, std::memory_order_relaxed);
      cache->FinishReload(key, generation);
      gate->Exit();
    }
  };
  struct Reloading {
    uint64_t generation;
    TimePoint started;
  };

  Cache(Options options, Tiers tiers, Clock& clock, std::optional<absl::BitGenRef> random,
        std::vector<std::string> kinds)
      : options_(std::move(options)),
        prefix_(keel::internal::StrCat("cache \"", options_.name, "\": ")),
        tiers_(std::move(tiers)),
        clock_(clock),
        random_(random ? *random : absl::BitGenRef(own_random_)),
        counters_(std::move(kinds)) {}

  static absl::StatusOr<std::unique_ptr<Cache>> CreateImpl(
      Options options, Tiers tiers, std::optional<WriteBehind<T>> write_behind, Clock& clock,
      MetricsRegistry* metrics, std::optional<absl::BitGenRef> random) {
    bool null_tier = false;
    std::vector<std::string> kinds;
    for (const auto& t : tiers) {
      null_tier = null_tier || t == nullptr;
      if (t != nullptr) kinds.emplace_back(t->kind());
    }
    if (absl::Status s = internal::ValidateCacheOptions(options, tiers.size(), null_tier);
        !s.ok()) {
      return s;
    }
    std::optional<Retry> retry;
    if (write_behind) {
      const WriteBehind<T>& wb = *write_behind;
      KEEL_RETURN_IF_ERROR(internal::ValidateWriteBehind(
          options.name, static_cast<bool>(wb.writer_batch), wb.flush_interval, wb.batch_size,
          wb.max_pending, wb.when_full == WhenFull::kWait, wb.durable != nullptr, wb.flush_timeout,
          static_cast<bool>(wb.drop_on)));
      Retry::Options ro = wb.retry;
      if (ro.name == Retry::Options{}.name) ro.name = options.name + "-write-behind";
      absl::StatusOr<Retry> r = Retry::Create(std::move(ro), clock);
      if (!r.ok()) {
        return absl::Status(r.status().code(),
                            keel::internal::StrCat("cache \"", options.name, "\": write_behind.",
                                                   r.status().message()));
      }
      retry.emplace(std::move(*r));
    }
    std::unique_ptr<Cache> cache(
        new Cache(std::move(options), std::move(tiers), clock, random, std::move(kinds)));
    if (metrics != nullptr) {
      if (absl::Status s = cache->counters_.Register(*metrics, cache->options_.name); !s.ok()) {
        return s;
      }
    }
    if (write_behind) {
      if (metrics != nullptr) {
        KEEL_RETURN_IF_ERROR(
            cache->counters_.RegisterWriteBehind(*metrics, cache->options_.name, clock));
      }
      if (write_behind->durable != nullptr) {
        for (size_t i = 0; i < cache->tiers_.size(); ++i) {
          if (write_behind->durable->Covers(*cache->tiers_[i]))
            cache->covered_tier_ = static_cast<int>(i);
        }
      }
      cache->write_behind_ = std::make_unique<internal::WriteBehindEngine<T>>(
          std::move(*write_behind), std::move(*retry), cache->prefix_, clock, cache->counters_);
    }
    const Options& o = cache->options_;
    cache->executor_ = o.executor;
    if (cache->executor_ == nullptr && (o.refresh_after || o.xfetch)) {
      absl::StatusOr<std::unique_ptr<Executor>> own =
          internal::MakeBackgroundExecutor(o.name, o.background_threads, clock);
      if (!own.ok()) return own.status();
      cache->own_executor_ = std::move(*own);
      cache->executor_ = cache->own_executor_.get();
    }
    return cache;
  }

  Lookup ReadTiers(Deadline deadline, std::string_view key) {
    Lookup out;
    for (size_t i = 0; i < tiers_.size(); ++i) {
      absl::StatusOr<std::optional<typename Tier<T>::Hit>> got = tiers_[i]->Get(deadline, key);
      internal::CacheCounters::Tier& c = counters_.tiers[i];
      if (!got.ok()) {
        if (absl::IsInvalidArgument(got.status())) {
          out.refused = std::move(got).status();
          return out;
        }
        c.errors.fetch_add(1, std::memory_order_relaxed);
        // An unreachable tier is not written in this call either (it would only cost the
        // caller another timeout); one that answered with an unreadable entry is overwritten.
        if (absl::IsUnavailable(got.status()) || absl::IsDeadlineExceeded(got.status())) {
          out.failed |= uint32_t{1} << i;
        }
        continue;
      }
      if (!got->has_value()) {
        c.misses.fetch_add(1, std::memory_order_relaxed);
        continue;
      }
      c.hits.fetch_add(1, std::memory_order_relaxed);
      out.hit = std::move(**got);
      // Fill the tiers above with what this one had.
      for (size_t j = 0; j < i; ++j) {
        if (out.failed & (uint32_t{1} << j)) continue;
        const Duration ttl =
            out.hit->value ? JitteredTtl() : options_.negative_ttl.value_or(options_.ttl);
        if (!tiers_[j]->Set(deadline, key, out.hit->value, ttl, LoadTimeOf(*out.hit)).ok()) {
          counters_.tiers[j].write_errors.fetch_add(1, std::memory_order_relaxed);
        }
      }
      return out;
    }
    return out;
  }

  static Duration LoadTimeOf(const typename Tier<T>::Hit& hit) {
    return hit.metadata ? hit.metadata->load_time : Duration::zero();
  }

  // A hit as GetOrLoad returns it: the value, or NOT_FOUND for a negative entry.
  absl::StatusOr<T> Answer(typename Tier<T>::Hit hit) {
    counters_.hits.fetch_add(1, std::memory_order_relaxed);
    if (hit.value) return std::move(*hit.value);
    counters_.negative_hits.fetch_add(1, std::memory_order_relaxed);
    return absl::NotFoundError(keel::internal::StrCat(prefix_, "not found (a negative entry)"));
  }

  // The single-flight: the first caller to miss `key` loads it (the leader), the others wait for
  // its result within their own deadlines.
  absl::StatusOr<T> LoadShared(Deadline deadline, std::string_view key, const Loader& loader,
                               uint32_t failed) ABSL_LOCKS_EXCLUDED(flights_mu_) {
    counters_.misses.fetch_add(1, std::memory_order_relaxed);
    for (;;) {
      std::shared_ptr<Flight> flight;
      bool leader = false;
      {
        MutexLock lock(flights_mu_);
        std::shared_ptr<Flight>& slot = flights_[std::string(key)];
        if (slot == nullptr) {
          slot = std::make_shared<Flight>();
          leader = true;
        }
        flight = slot;
      }
      if (leader) {
        absl::StatusOr<T> result = Load(deadline, key, loader, failed);
        {
          MutexLock lock(flights_mu_);
          flights_.erase(std::string(key));
        }
        flight->Publish(result);
        return result;
      }
      counters_.stampede_waits.fetch_add(1, std::memory_order_relaxed);
      std::optional<absl::StatusOr<T>> shared = flight->Wait(deadline);
      if (!shared) {
        return absl::DeadlineExceededError(keel::internal::StrCat(
            prefix_, "deadline passed waiting for another caller's load of the key"));
      }
      // The leader ran out of its own time; a caller with time left loads (or waits) again.
      if (absl::IsDeadlineExceeded(shared->status()) && !deadline.Expired()) continue;
      return std::move(*shared);
    }
  }

  // The leader's load: with the stampede lock when there is one.
  absl::StatusOr<T> Load(Deadline deadline, std::string_view key, const Loader& loader,
                         uint32_t failed) {
    if (options_.stampede_lock == nullptr) return LoadAndStore(deadline, key, loader, failed);
    const TimePoint give_up = clock_.Now() + options_.stampede_max_wait;
    bool waited = false;
    for (;;) {
      const Deadline attempt =
          Deadline::Min(deadline, Deadline::After(options_.stampede_lock_timeout, clock_));
      absl::StatusOr<std::unique_ptr<StampedeLock::Hold>> hold =
          options_.stampede_lock->TryAcquire(attempt, key);
      if (!hold.ok()) {
        counters_.lock_errors.fetch_add(1, std::memory_order_relaxed);
        return LoadAndStore(deadline, key, loader, failed);  // fail open
      }
      if (*hold != nullptr) {
        // Another process may have stored the value between our read and the lock.
        Lookup again = ReadTiers(deadline, key);
        if (!again.refused.ok()) return std::move(again.refused);
        if (again.hit) return Unwrap(std::move(*again.hit));
        absl::StatusOr<T> result = LoadAndStore(deadline, key, loader, failed | again.failed);
        hold->reset();  // released once the value is in the tiers
        return result;
      }
      if (!waited) counters_.lock_waits.fetch_add(1, std::memory_order_relaxed);
      waited = true;
      const TimePoint now = clock_.Now();
      if (now >= give_up) {
        counters_.lock_timeouts.fetch_add(1, std::memory_order_relaxed);
        return LoadAndStore(deadline, key, loader, failed);
      }
      if (deadline.Expired()) {
        return absl::DeadlineExceededError(keel::internal::StrCat(
            prefix_, "deadline passed waiting for another process's load of the key"));
      }
      TimePoint wake = std::min(now + options_.stampede_poll_interval, give_up);
      if (!deadline.IsInfinite()) wake = std::min(wake, deadline.time());
      clock_.SleepUntil(wake);
      Lookup polled = ReadTiers(deadline, key);
      if (!polled.refused.ok()) return std::move(polled.refused);
      if (polled.hit) return Unwrap(std::move(*polled.hit));
      failed |= polled.failed;
    }
  }

  // A hit found after a miss was counted: the value, or NOT_FOUND for a negative entry.
  absl::StatusOr<T> Unwrap(typename Tier<T>::Hit hit) {
    if (hit.value) return std::move(*hit.value);
    return absl::NotFoundError(keel::internal::StrCat(prefix_, "not found (a negative entry)"));
  }

  // Runs the loader and stores what it gives in every tier not in `skip`.
  absl::StatusOr<T> LoadAndStore(Deadline deadline, std::string_view key, const Loader& loader,
                                 uint32_t skip) {
    // A write not yet in the source of truth is newer than what the loader would read there.
    if (std::optional<T> pending = PendingValue(deadline, key, skip)) {
      Store(deadline, key, *pending, Duration::zero(), skip);
      return std::move(*pending);
    }
    Duration took{};
    absl::StatusOr<T> result = CallLoader(deadline, loader, took);
    Store(deadline, key, result, took, skip);
    return result;
  }

  absl::StatusOr<T> CallLoader(Deadline deadline, const Loader& loader, Duration& took) {
    const TimePoint start = clock_.Now();
    absl::StatusOr<T> result = absl::UnknownError("");
    try {
      result = loader(deadline);
    } catch (...) {
      counters_.loader_exceptions.fetch_add(1, std::memory_order_relaxed);
      result = Threw("loader");
    }
    took = clock_.Now() - start;
    counters_.ObserveLoad(took);
    counters_.loads.fetch_add(1, std::memory_order_relaxed);
    if (absl::IsNotFound(result.status())) {
      counters_.load_not_found.fetch_add(1, std::memory_order_relaxed);
    } else if (!result.ok()) {
      counters_.load_errors.fetch_add(1, std::memory_order_relaxed);
    }
    return result;
  }

  // Stores a load's result: a value for ttl plus jitter, NOT_FOUND as a negative entry when
  // negative_ttl is set; anything else is not cached. False when there was nothing to store.
  bool Store(Deadline deadline, std::string_view key, const absl::StatusOr<T>& result,
             Duration took, uint32_t skip) {
    std::optional<T> value;
    Duration ttl;
    if (result.ok()) {
      value = *result;
      ttl = JitteredTtl();
    } else if (absl::IsNotFound(result.status()) && options_.negative_ttl) {
      ttl = *options_.negative_ttl;
    } else {
      return false;
    }
    for (size_t i = 0; i < tiers_.size(); ++i) {
      if (skip & (uint32_t{1} << i)) continue;
      if (!tiers_[i]->Set(deadline, key, value, ttl, took).ok()) {
        counters_.tiers[i].write_errors.fetch_add(1, std::memory_order_relaxed);
      }
    }
    return true;
  }

  // The write-behind pending value of `key`, counted; nullopt without write-behind, when none,
  // or when the durable set cannot be read (counted there; the caller goes on as on a miss). The
  // durable set is not asked when its Redis tier failed in this call (`failed`): a Redis that is
  // down must cost a read one timeout, not two.
  std::optional<T> PendingValue(Deadline deadline, std::string_view key, uint32_t failed) {
    if (write_behind_ == nullptr) return std::nullopt;
    if (covered_tier_ >= 0 && (failed & (uint32_t{1} << covered_tier_))) return std::nullopt;
    absl::StatusOr<std::optional<T>> v = write_behind_->Lookup(deadline, key);
    if (!v.ok() || !v->has_value()) return std::nullopt;
    counters_.pending_reads.fetch_add(1, std::memory_order_relaxed);
    return std::move(*v);
  }

  // Stores `stored` in every tier (but one the durable pending set writes itself); a tier that
  // fails has the key removed. The error says `what` happened to the source of truth first.
  absl::Status SetTiers(Deadline deadline, std::string_view key, const std::optional<T>& stored,
                        std::string_view what, const DurablePending<T>* durable,
                        std::optional<Duration> ttl_given = std::nullopt)
      ABSL_LOCKS_EXCLUDED(random_mu_) {
    const Duration ttl = ttl_given ? *ttl_given : JitteredTtl();
    absl::Status first;
    for (size_t i = 0; i < tiers_.size(); ++i) {
      if (durable != nullptr && durable->Covers(*tiers_[i])) continue;
      absl::Status s = tiers_[i]->Set(deadline, key, stored, ttl, Duration::zero());
      if (s.ok()) continue;
      counters_.tiers[i].write_errors.fetch_add(1, std::memory_order_relaxed);
      const absl::Status erased = tiers_[i]->Erase(deadline, key);
      if (first.ok()) {
        first = absl::Status(
            s.code(), keel::internal::StrCat(
                          prefix_, what, ", but tier ", tiers_[i]->kind(), " was not updated (",
                          erased.ok() ? "its entry was removed" : "removing its entry failed too",
                          "): ", s.message()));
      }
    }
    return first;
  }

  Duration JitteredTtl() ABSL_LOCKS_EXCLUDED(random_mu_) {
    if (options_.ttl_jitter <= Duration::zero()) return options_.ttl;
    MutexLock lock(random_mu_);
    return options_.ttl + Duration(absl::Uniform<int64_t>(absl::IntervalClosedClosed, random_, 0,
                                                          options_.ttl_jitter.count()));
  }

  double UniformOpenClosed() ABSL_LOCKS_EXCLUDED(random_mu_) {
    MutexLock lock(random_mu_);
    return absl::Uniform<double>(absl::IntervalOpenClosed, random_, 0.0, 1.0);
  }

  // Refresh-ahead and XFetch: whether this hit starts a background reload.
  void MaybeRefresh(std::string_view key, const typename Tier<T>::Hit& hit, const Loader& loader)
      ABSL_LOCKS_EXCLUDED(refresh_mu_, random_mu_) {
    if (executor_ == nullptr || !hit.metadata) return;
    const EntryMetadata& m = *hit.metadata;
    const TimePoint now = clock_.Now();
    bool early = false;
    if (!options_.refresh_after || now - m.written < *options_.refresh_after) {
      if (!options_.xfetch || !m.expires || m.load_time <= Duration::zero()) return;
      if (!internal::XFetchDue(now, *m.expires, m.load_time, options_.xfetch_beta,
                               UniformOpenClosed())) {
        return;
      }
      early = true;
    }
    uint64_t generation;
    {
      MutexLock lock(refresh_mu_);
      auto [it, inserted] = reloading_.try_emplace(std::string(key), Reloading{0, now});
      // One reload per key at a time, unless the one in flight has outlived its deadline: a
      // reload slower than the refresh interval must not stop refreshing.
      if (!inserted && now - it->second.started < options_.background_timeout) return;
      generation = ++generation_;
      it->second = Reloading{generation, now};
    }
    if (early) counters_.early_recomputes.fetch_add(1, std::memory_order_relaxed);
    executor_->Post(
        [reload = Reload(this, std::string(key), loader, generation)]() mutable { reload.Run(); });
  }

  void RunReload(const std::string& key, const Loader& loader, uint64_t generation) {
    const Deadline deadline = Deadline::After(options_.background_timeout, clock_);
    Duration took{};
    absl::StatusOr<T> result = CallLoader(deadline, loader, took);
    if (Store(deadline, key, result, took, 0)) {
      counters_.refreshes.fetch_add(1, std::memory_order_relaxed);
    } else if (absl::IsNotFound(result.status())) {
      // Gone at the source and no negative caching: the old value must not be served on.
      Invalidate(deadline, key).IgnoreError();
      counters_.refreshes.fetch_add(1, std::memory_order_relaxed);
    } else {
      counters_.refresh_failures.fetch_add(1, std::memory_order_relaxed);
    }
    FinishReload(key, generation);
  }

  void FinishReload(const std::string& key, uint64_t generation) ABSL_LOCKS_EXCLUDED(refresh_mu_) {
    MutexLock lock(refresh_mu_);
    auto it = reloading_.find(key);
    if (it != reloading_.end() && it->second.generation == generation) reloading_.erase(it);
  }

  absl::Status Threw(std::string_view what) const {
    return absl::InternalError(
        keel::internal::StrCat(prefix_, "the ", what, " threw ",
                               keel::internal::DescribeException(std::current_exception())));
  }

  const Options options_;
  const std::string prefix_;  // `cache "<name>": `
  const Tiers tiers_;
  Clock& clock_;
  absl::BitGen own_random_;  // when Create was given none
  absl::BitGenRef random_ ABSL_GUARDED_BY(random_mu_);
  Mutex random_mu_;
  internal::CacheCounters counters_;

  Mutex flights_mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<Flight>> flights_ ABSL_GUARDED_BY(flights_mu_);

  Mutex refresh_mu_;
  absl::flat_hash_map<std::string, Reloading> reloading_ ABSL_GUARDED_BY(refresh_mu_);
  uint64_t generation_ ABSL_GUARDED_BY(refresh_mu_) = 0;

  Executor* executor_ = nullptr;
  std::unique_ptr<Executor> own_executor_;
  std::shared_ptr<internal::BackgroundGate> gate_ = std::make_shared<internal::BackgroundGate>();
  std::unique_ptr<internal::WriteBehindEngine<T>> write_behind_;
  int covered_tier_ = -1;  // the tier the durable pending set writes itself, if any
};

}  // namespace keel::cache
