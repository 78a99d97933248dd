// keel/limit/keyed.h: one limiter (or several) per key, such as per IP, per user or per tenant,
// with bounded memory, idle eviction and an optional penalty block.
//
// Defines `keel::limit::Keyed<Limiter>` and `keel::limit::KeyedStats`. `Limiter` is any of
// TokenBucket, Gcra, FixedWindow, SlidingWindowLog, SlidingWindowCounter.
//
// - Sharded map: keys hash to `shards` independently locked shards, each a flat hash set of
//   entries holding the key and only the limiters' mutable State (the parameters live once in
//   the Keyed): for a token bucket or GCRA an entry is 64 bytes on its own cache line, so a call
//   for a known key is one lock, one probe and one cache line, with no allocation and no list to
//   reorder (a strict LRU list costs several cache misses per call).
// - Bounded memory: each shard holds at most max_keys / shards keys. A new key arriving at a full
//   shard first drops the shard's idle keys, then, if still full, the least recently used eighth
//   of it (counted in evicted_capacity): one O(shard) pass per max_keys / (8 * shards) new keys,
//   so a flood of distinct keys (spoofed IPs) costs amortised O(1) per request and memory stays
//   bounded. The price: an evicted key that comes back starts fresh, so keep max_keys above the
//   number of keys active within idle_ttl. A key under a penalty block is never evicted (a flood
//   of distinct keys must not lift a block); when every key of a shard is blocked, a new key in
//   that shard is denied (retry_after: until the shard's earliest block ends; counted in
//   refused_full) rather than a block dropped. Size max_keys above the blocks you expect.
// - Idle eviction: a key untouched for idle_ttl is dropped (counted in evicted_idle) by a pass
//   over its shard that runs at most every idle_ttl / 2 (on a call to that shard), so idle keys
//   go within 1.5 * idle_ttl of their last use. By default idle_ttl is the longest limit's
//   Horizon(): the moment an untouched limiter is back to its initial state, so idle eviction
//   then changes no decision.
// - Several limits on one key (20/minute and 100/hour): a request is admitted only if every limit
//   admits it, and then consumes from all of them; if any denies, none is touched (checked and
//   consumed under the shard's lock). The Decision reports the most constraining limit: the
//   smallest `remaining` (and its `limit`), the longest `reset_after`, and when denied the longest
//   `retry_after`.
// - Penalty: with `block_for`, a key denied by its limits is blocked for that long: its requests
//   are denied (retry_after = time left in the block) without touching the counters, so hammering
//   during the block earns nothing (login brute force). A request that can never fit (quantity
//   above a limit, retry_after kNever) is denied without starting a block.
//
// Keys longer than kMaxKeyBytes (1 KiB) are rejected with INVALID_ARGUMENT. For "at most N in
// flight" per key use KeyedConcurrencyLimiter: permits, not decisions, and entries that live
// only while permits are out.
//
// Thread safety: thread-safe.
//
//   // 20 per minute and 100 per hour per user, blocked for 15 minutes after exceeding.
//   auto per_user = keel::limit::Keyed<keel::limit::Gcra>::Create(
//       {.max_keys = 1'000'000, .block_for = std::chrono::minutes(15)},
//       {{.count = 20, .period = std::chrono::minutes(1), .max_burst = 19},
//        {.count = 100, .period = std::chrono::hours(1), .max_burst = 99}}).value();
//   keel::limit::Decision d = per_user->TryAcquire(user_id).value();
//   if (!d.allowed) return TooManyRequests(d);
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_set.h"
#include "absl/container/inlined_vector.h"
#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "keel/clock.h"
#include "keel/limit/decision.h"
#include "keel/metrics.h"
#include "keel/sync.h"

namespace keel::limit {

struct KeyedStats {
  size_t keys = 0;                      // keys held now
  uint64_t allowed_total = 0;           // requests admitted
  uint64_t denied_total = 0;            // requests denied by the limits (not counting blocked ones)
  uint64_t evicted_idle_total = 0;      // keys dropped after idle_ttl without use
  uint64_t evicted_capacity_total = 0;  // keys dropped to make room for a new key at the cap
  uint64_t blocked_denials_total = 0;   // requests denied by a penalty block
  uint64_t refused_full_total = 0;  // new keys denied because every key of their shard was blocked
};

struct KeyedOptions {
  // Names the limiter in error messages. Default: "keyed".
  std::string name = "keyed";
  // Hard cap on keys held. Memory: one entry per key (64 bytes for a token bucket or GCRA with
  // one limit; 48 + the limits' states otherwise) at the hash set's load factor, about 100 bytes
  // per key for those two, plus key bytes beyond 15. Must be >= shards. Default: 100'000.
  size_t max_keys = 100'000;
  // Drop a key after this long without use. Default (nullopt): the longest limit's Horizon(), the
  // earliest time forgetting a key changes no decision. Shorter saves memory and forgets counts.
  std::optional<Duration> idle_ttl = std::nullopt;
  // Penalty: after a denial, deny the key outright for this long. Default: none.
  std::optional<Duration> block_for = std::nullopt;
  // Independently locked shards. Must be >= 1. Default: 16 (contention stays low on machines
  // with up to dozens of cores; more shards cost nothing but a slightly less exact global LRU).
  size_t shards = 16;
};

namespace internal {
// INVALID_ARGUMENT if `key` is longer than kMaxKeyBytes or `n` < 0, naming `name`.
absl::Status ValidateKeyed(std::string_view name, std::string_view key, int64_t n);
absl::Status ValidateKeyedOptions(const KeyedOptions& options, size_t limits);
// Registers the series Keyed::RegisterMetrics lists, reading `stats`; keeps the registrations
// in `out`.
absl::Status RegisterKeyedMetrics(MetricsRegistry& metrics, const std::string& name,
                                  std::function<KeyedStats()> stats,
                                  std::vector<MetricsRegistry::Registration>& out);
}  // namespace internal

namespace internal {
// One key's entry. Its fields after the key are mutable: the set hashes and compares the key
// only. Aligned to a cache line when it fits in one (token bucket or GCRA with one limit), so a
// lookup touches one line.
template <typename State>
struct KeyedEntryFields {
  std::string key;
  mutable TimePoint last_used;
  mutable TimePoint blocked_until = TimePoint::min();
  // The first limit's state inline; the others (if any) in one array. Not an InlinedVector: its
  // size word would push a one-word state past the cache line.
  mutable State first;
  mutable std::unique_ptr<State[]> rest;

  State& state(size_t i) const { return i == 0 ? first : rest[i - 1]; }
};
template <typename State>
struct alignas(sizeof(KeyedEntryFields<State>) <= 64 ? 64
                                                     : alignof(KeyedEntryFields<State>)) KeyedEntry
    : KeyedEntryFields<State> {};

struct KeyedHash {
  using is_transparent = void;
  size_t operator()(absl::string_view key) const { return absl::Hash<absl::string_view>{}(key); }
  template <typename State>
  size_t operator()(const KeyedEntry<State>& e) const {
    return (*this)(absl::string_view(e.key));
  }
};
struct KeyedEq {
  using is_transparent = void;
  static absl::string_view View(absl::string_view key) { return key; }
  template <typename State>
  static absl::string_view View(const KeyedEntry<State>& e) {
    return absl::string_view(e.key);
  }
  template <typename A, typename B>
  bool operator()(const A& a, const B& b) const {
    return View(a) == View(b);
  }
};
}  // namespace internal

template <typename Limiter>
class Keyed {
 public:
  using Options = KeyedOptions;
  using LimitOptions = typename Limiter::Options;

  // Validates `options` and every entry of `limits` (INVALID_ARGUMENT naming the field); at least
  // one limit is required. `clock` (and `metrics`, if given) must outlive the Keyed. With
  // `metrics`, registers the series listed at RegisterMetrics.
  static absl::StatusOr<std::unique_ptr<Keyed>> Create(Options options,
                                                       std::vector<LimitOptions> limits,
                                                       Clock& clock = SteadyClock(),
                                                       MetricsRegistry* metrics = nullptr) {
    if (auto s = internal::ValidateKeyedOptions(options, limits.size()); !s.ok()) return s;
    std::vector<Limiter> limiters;
    limiters.reserve(limits.size());
    Duration horizon = Duration::zero();
    for (const LimitOptions& l : limits) {
      absl::StatusOr<Limiter> limiter = Limiter::Create(l, clock);
      if (!limiter.ok()) return limiter.status();
      horizon = std::max(horizon, limiter->Horizon());
      limiters.push_back(std::move(limiter).value());
    }
    if (!options.idle_ttl) options.idle_ttl = horizon;
    std::unique_ptr<Keyed> keyed(new Keyed(std::move(options), std::move(limiters), clock));
    if (metrics != nullptr) {
      if (auto s = keyed->RegisterMetrics(*metrics); !s.ok()) return s;
    }
    return keyed;
  }

  // Applies `n` to every limit of `key` (all or none) and returns the combined decision.
  // n == 0 peeks. Errors: INVALID_ARGUMENT for n < 0, an empty key or a key over kMaxKeyBytes
  // (the rules of keel::redis::RateLimiter: an empty key is almost always a missing identifier,
  // and would pool every such request into one bucket).
  absl::StatusOr<Decision> TryAcquire(std::string_view key, int64_t n = 1) {
    return TryAcquire(key, n, clock_->Now());
  }
  absl::StatusOr<Decision> TryAcquire(std::string_view key, int64_t n, TimePoint now) {
    if (auto s = internal::ValidateKeyed(options_.name, key, n); !s.ok()) return s;
    const absl::string_view k(key.data(), key.size());
    const size_t hash = internal::KeyedHash{}(k);
    // The shard comes from the hash's top bits: the set's own probing uses the low bits, which
    // must stay uniformly spread within a shard.
    Shard& shard = shards_[static_cast<size_t>(static_cast<uint64_t>(hash) >> 40) % shards_.size()];
    MutexLock lock(shard.mu);
    if (now >= shard.next_sweep) Sweep(shard, now);
    const Entry* found = Touch(shard, k, hash, now);
    if (found == nullptr) return RefuseNewKey(shard, now);
    const Entry& entry = *found;
    if (entry.blocked_until > now) {
      ++shard.blocked;
      return DuringBlock(entry, now);
    }
    Decision d = Decide(entry, n, now, /*commit=*/true);
    if (d.allowed) {
      ++shard.allowed;
    } else {
      ++shard.denied;
      if (options_.block_for && d.retry_after != kNever) {
        entry.blocked_until = now + *options_.block_for;
        d = WithBlock(d);
      }
    }
    return d;
  }

  // Dry run: what TryAcquire(key, n, now) would answer, changing nothing (no counter, no block,
  // no new entry; a key not held is answered as a fresh one) and counted in no Stats.
  // Errors: as TryAcquire.
  absl::StatusOr<Decision> Check(std::string_view key, int64_t n = 1) const {
    return Check(key, n, clock_->Now());
  }
  absl::StatusOr<Decision> Check(std::string_view key, int64_t n, TimePoint now) const {
    if (auto s = internal::ValidateKeyed(options_.name, key, n); !s.ok()) return s;
    const absl::string_view k(key.data(), key.size());
    const size_t hash = internal::KeyedHash{}(k);
    const Shard& shard =
        shards_[static_cast<size_t>(static_cast<uint64_t>(hash) >> 40) % shards_.size()];
    MutexLock lock(shard.mu);
    auto it = shard.set.find(k, hash);
    if (it == shard.set.end()) {
      Entry fresh;
      if (limiters_.size() > 1) fresh.rest = std::make_unique<State[]>(limiters_.size() - 1);
      return WithBlock(Decide(fresh, n, now, /*commit=*/false));
    }
    if (it->blocked_until > now) return DuringBlock(*it, now);
    return WithBlock(Decide(*it, n, now, /*commit=*/false));
  }

  KeyedStats Stats() const {
    KeyedStats stats;
    for (const Shard& shard : shards_) {
      MutexLock lock(shard.mu);
      stats.keys += shard.set.size();
      stats.allowed_total += shard.allowed;
      stats.denied_total += shard.denied;
      stats.blocked_denials_total += shard.blocked;
      stats.evicted_idle_total += shard.evicted_idle;
      stats.evicted_capacity_total += shard.evicted_capacity;
      stats.refused_full_total += shard.refused;
    }
    return stats;
  }

  // Registers, labelled {name=options.name}: keel_rate_limit_keys (gauge),
  // keel_rate_limit_decisions_total{decision=allowed|denied|blocked|refused_full} and
  // keel_rate_limit_evictions_total{reason=idle|capacity}. Called by Create when given a
  // registry. Errors: as MetricsRegistry's (e.g. ALREADY_EXISTS for a second limiter with the
  // same name).
  absl::Status RegisterMetrics(MetricsRegistry& metrics) {
    return internal::RegisterKeyedMetrics(
        metrics, options_.name, [this] { return Stats(); }, registrations_);
  }

  Duration idle_ttl() const { return *options_.idle_ttl; }

 private:
  using State = typename Limiter::State;
  using Entry = internal::KeyedEntry<State>;

  struct alignas(64) Shard {
    mutable Mutex mu;
    absl::flat_hash_set<Entry, internal::KeyedHash, internal::KeyedEq> set ABSL_GUARDED_BY(mu);
    TimePoint next_sweep ABSL_GUARDED_BY(mu) = TimePoint::min();
    uint64_t allowed ABSL_GUARDED_BY(mu) = 0;
    uint64_t denied ABSL_GUARDED_BY(mu) = 0;
    uint64_t blocked ABSL_GUARDED_BY(mu) = 0;
    uint64_t evicted_idle ABSL_GUARDED_BY(mu) = 0;
    uint64_t evicted_capacity ABSL_GUARDED_BY(mu) = 0;
    uint64_t refused ABSL_GUARDED_BY(mu) = 0;
  };

  Keyed(Options options, std::vector<Limiter> limiters, Clock& clock)
      : options_(std::move(options)),
        limiters_(std::move(limiters)),
        clock_(&clock),
        per_shard_(options_.max_keys / options_.shards),
        shards_(options_.shards) {}

  bool Idle(const Entry& entry, TimePoint now) const {
    return now - entry.last_used >= *options_.idle_ttl && entry.blocked_until <= now;
  }

  // Drops the shard's idle keys: O(shard size), at most once per idle_ttl / 2 per shard.
  void Sweep(Shard& shard, TimePoint now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
    const size_t before = shard.set.size();
    absl::erase_if(shard.set, [&](const Entry& entry) { return Idle(entry, now); });
    shard.evicted_idle += before - shard.set.size();
    shard.next_sweep = now + *options_.idle_ttl / 2;
  }

  static bool Blocked(const Entry& entry, TimePoint now) { return entry.blocked_until > now; }

  // Makes room for one key in a full shard: idle keys first, then the least recently used
  // eighth of the unblocked keys, so the O(shard) pass is amortised over many insertions. A key
  // under a penalty block is never dropped: otherwise a flood of distinct keys would lift the
  // block of the key it was meant to hold off. Returns false when every key is blocked.
  bool MakeRoom(Shard& shard, TimePoint now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
    Sweep(shard, now);
    if (shard.set.size() < per_shard_) return true;
    std::vector<TimePoint> ages;
    ages.reserve(shard.set.size());
    for (const Entry& entry : shard.set) {
      if (!Blocked(entry, now)) ages.push_back(entry.last_used);
    }
    if (ages.empty()) return false;
    const size_t drop = std::min(ages.size(), std::max<size_t>(1, per_shard_ / 8));
    std::nth_element(ages.begin(), ages.begin() + (drop - 1), ages.end());
    const TimePoint cutoff = ages[drop - 1];
    size_t dropped = 0;
    absl::erase_if(shard.set, [&](const Entry& entry) {
      if (dropped < drop && entry.last_used <= cutoff && !Blocked(entry, now)) {
        ++dropped;
        return true;
      }
      return false;
    });
    shard.evicted_capacity += dropped;
    return true;
  }

  // A new key at a shard full of blocked keys: denied until the earliest block ends (then its
  // slot can be reused), without an entry. Dropping a block instead would let an attacker who
  // can make keys lift it.
  Decision RefuseNewKey(Shard& shard, TimePoint now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
    ++shard.refused;
    TimePoint earliest = TimePoint::max();
    for (const Entry& entry : shard.set) earliest = std::min(earliest, entry.blocked_until);
    State fresh;
    Decision d = limiters_[0].Peek(fresh, 0, now);
    d.allowed = false;
    d.remaining = 0;
    d.retry_after = earliest - now;
    d.reset_after = std::max(d.reset_after, d.retry_after);
    return d;
  }

  // The entry of `key`, inserted if new; nullptr when it is new and the shard is full of
  // blocked keys.
  const Entry* Touch(Shard& shard, absl::string_view key, size_t hash, TimePoint now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
    // `hash` is the set's own hash of `key`: computed once.
    if (auto it = shard.set.find(key, hash); it != shard.set.end()) {
      it->last_used = std::max(it->last_used, now);
      return &*it;
    }
    if (shard.set.size() >= per_shard_ && !MakeRoom(shard, now)) return nullptr;
    Entry entry;
    entry.key.assign(key.data(), key.size());
    entry.last_used = now;
    if (limiters_.size() > 1) entry.rest = std::make_unique<State[]>(limiters_.size() - 1);
    return &*shard.set.insert(std::move(entry)).first;
  }

  // The answer to any request of a blocked key: the first limit's peek, denied, with the time
  // left in the block.
  Decision DuringBlock(const Entry& entry, TimePoint now) const {
    Decision d = limiters_[0].Peek(entry.first, 0, now);
    d.allowed = false;
    d.remaining = 0;
    d.retry_after = entry.blocked_until - now;
    d.reset_after = std::max(d.reset_after, d.retry_after);
    return d;
  }

  // A denial as TryAcquire reports it when it starts a block.
  Decision WithBlock(Decision d) const {
    if (!d.allowed && options_.block_for && d.retry_after != kNever) {
      d.retry_after = std::max(d.retry_after, *options_.block_for);
      d.reset_after = std::max(d.reset_after, d.retry_after);
    }
    return d;
  }

  // Every limit's decision on `n`, combined; with `commit`, applied to all of them if all admit.
  Decision Decide(const Entry& entry, int64_t n, TimePoint now, bool commit) const {
    if (limiters_.size() == 1) {
      return commit ? limiters_[0].Apply(entry.first, n, now)
                    : limiters_[0].Peek(entry.first, n, now);
    }
    absl::InlinedVector<Decision, 4> decisions;
    bool all = true;
    for (size_t i = 0; i < limiters_.size(); ++i) {
      decisions.push_back(limiters_[i].Peek(entry.state(i), n, now));
      all = all && decisions.back().allowed;
    }
    if (commit && all && n > 0) {
      // Every limit admits it and nothing else can touch these states while the shard is
      // locked, so each Apply below admits too.
      for (size_t i = 0; i < limiters_.size(); ++i) {
        decisions[i] = limiters_[i].Apply(entry.state(i), n, now);
      }
    }
    return internal::Combine(decisions.data(), decisions.size());
  }

  const Options options_;
  // The parameters, shared by every key; their own state is unused.
  const std::vector<Limiter> limiters_;
  Clock* clock_;
  const size_t per_shard_;
  std::vector<Shard> shards_;
  std::vector<MetricsRegistry::Registration> registrations_;
};

}  // namespace keel::limit
