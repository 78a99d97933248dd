// keel/limit/keyed.h: one limiter (or several) per key, such as per IP, per user or per tenant,
// with bounded memory, idle eviction and an optional penalty block.
//
// Defines `keel::limit::Keyed<Limiter>` and `keel::limit::KeyedStats`. `Limiter` is any of
// TokenBucket, Gcra, FixedWindow, SlidingWindowLog, SlidingWindowCounter.
//
// - Sharded map: keys hash to `shards` independently locked shards, each a flat hash map holding
//   the limiters inline, so a call for a known key is one lock, one probe and one CAS, with no
//   allocation and no list to reorder (a strict LRU list costs several cache misses per call).
// - Bounded memory: each shard holds at most max_keys / shards keys. A new key arriving at a full
//   shard first drops the shard's idle keys, then, if still full, the least recently used eighth
//   of it (counted in evicted_capacity): one O(shard) pass per max_keys / (8 * shards) new keys,
//   so a flood of distinct keys (spoofed IPs) costs amortised O(1) per request and memory stays
//   bounded. The price: an evicted key that comes back starts fresh, so keep max_keys above the
//   number of keys active within idle_ttl.
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
// Keys longer than kMaxKeyBytes (1 KiB) are rejected with INVALID_ARGUMENT.
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
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/hash/hash.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "keel/clock.h"
#include "keel/limit/decision.h"
#include "keel/sync.h"

namespace keel::limit {

struct KeyedStats {
  size_t keys = 0;                // keys held now
  uint64_t evicted_idle = 0;      // keys dropped after idle_ttl without use
  uint64_t evicted_capacity = 0;  // keys dropped to make room for a new key at the cap
  uint64_t blocked_denials = 0;   // requests denied by a penalty block
};

struct KeyedOptions {
  // Names the limiter in error messages. Default: "keyed".
  std::string name = "keyed";
  // Hard cap on keys held (memory ~ max_keys * (key + limiter state + ~100 bytes)). Must be
  // >= shards. Default: 100'000.
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
Decision Combine(const Decision* decisions, size_t count);
}  // namespace internal

template <typename Limiter>
class Keyed {
 public:
  using Options = KeyedOptions;
  using LimitOptions = typename Limiter::Options;

  // Validates `options` and every entry of `limits` (INVALID_ARGUMENT naming the field); at least
  // one limit is required.
  static absl::StatusOr<std::unique_ptr<Keyed>> Create(Options options,
                                                       std::vector<LimitOptions> limits,
                                                       Clock& clock = SteadyClock()) {
    if (auto s = internal::ValidateKeyedOptions(options, limits.size()); !s.ok()) return s;
    Duration horizon = Duration::zero();
    for (const LimitOptions& l : limits) {
      absl::StatusOr<Limiter> probe = Limiter::Create(l, clock);
      if (!probe.ok()) return probe.status();
      horizon = std::max(horizon, probe->Horizon());
    }
    if (!options.idle_ttl) options.idle_ttl = horizon;
    return std::unique_ptr<Keyed>(new Keyed(std::move(options), std::move(limits), clock));
  }

  // Applies `n` to every limit of `key` (all or none) and returns the combined decision.
  // n == 0 peeks. Errors: INVALID_ARGUMENT for n < 0 or a key over kMaxKeyBytes.
  absl::StatusOr<Decision> TryAcquire(std::string_view key, int64_t n = 1) {
    return TryAcquire(key, n, clock_->Now());
  }
  absl::StatusOr<Decision> TryAcquire(std::string_view key, int64_t n, TimePoint now) {
    if (auto s = internal::ValidateKeyed(options_.name, key, n); !s.ok()) return s;
    const absl::string_view k(key.data(), key.size());
    const size_t hash = absl::Hash<absl::string_view>{}(k);
    // The shard comes from the hash's top bits: the map's own probing uses the low bits, which
    // must stay uniformly spread within a shard.
    Shard& shard = shards_[static_cast<size_t>(static_cast<uint64_t>(hash) >> 40) % shards_.size()];
    MutexLock lock(shard.mu);
    if (now >= shard.next_sweep) Sweep(shard, now);
    Node& node = Touch(shard, k, hash, now);
    if (node.blocked_until > now) {
      ++shard.blocked_denials;
      absl::StatusOr<Decision> peek = node.limiters[0].Check(0, now);
      if (!peek.ok()) return peek.status();
      Decision d = *peek;
      d.allowed = false;
      d.remaining = 0;
      d.retry_after = node.blocked_until - now;
      d.reset_after = std::max(d.reset_after, d.retry_after);
      return d;
    }
    absl::StatusOr<Decision> d = Decide(node, n, now);
    if (d.ok() && !d->allowed && options_.block_for && d->retry_after != kNever) {
      node.blocked_until = now + *options_.block_for;
      d->retry_after = std::max(d->retry_after, *options_.block_for);
      d->reset_after = std::max(d->reset_after, d->retry_after);
    }
    return d;
  }

  KeyedStats Stats() const {
    KeyedStats stats;
    for (const Shard& shard : shards_) {
      MutexLock lock(shard.mu);
      stats.keys += shard.map.size();
      stats.evicted_idle += shard.evicted_idle;
      stats.evicted_capacity += shard.evicted_capacity;
      stats.blocked_denials += shard.blocked_denials;
    }
    return stats;
  }

  Duration idle_ttl() const { return *options_.idle_ttl; }

 private:
  struct Node {
    TimePoint last_used;
    TimePoint blocked_until = TimePoint::min();
    absl::InlinedVector<Limiter, 1> limiters;
  };

  struct alignas(64) Shard {
    mutable Mutex mu;
    absl::flat_hash_map<std::string, Node> map ABSL_GUARDED_BY(mu);
    TimePoint next_sweep ABSL_GUARDED_BY(mu) = TimePoint::min();
    uint64_t evicted_idle ABSL_GUARDED_BY(mu) = 0;
    uint64_t evicted_capacity ABSL_GUARDED_BY(mu) = 0;
    uint64_t blocked_denials ABSL_GUARDED_BY(mu) = 0;
  };

  Keyed(Options options, std::vector<LimitOptions> limits, Clock& clock)
      : options_(std::move(options)),
        limits_(std::move(limits)),
        clock_(&clock),
        per_shard_(options_.max_keys / options_.shards),
        shards_(options_.shards) {}

  bool Idle(const Node& node, TimePoint now) const {
    return now - node.last_used >= *options_.idle_ttl && node.blocked_until <= now;
  }

  // Drops the shard's idle keys: O(shard size), at most once per idle_ttl / 2 per shard.
  void Sweep(Shard& shard, TimePoint now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
    const size_t before = shard.map.size();
    absl::erase_if(shard.map, [&](const auto& entry) { return Idle(entry.second, now); });
    shard.evicted_idle += before - shard.map.size();
    shard.next_sweep = now + *options_.idle_ttl / 2;
  }

  // Makes room for one key in a full shard: idle keys first, then the least recently used
  // eighth, so the O(shard) pass is amortised over many insertions.
  void MakeRoom(Shard& shard, TimePoint now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
    Sweep(shard, now);
    if (shard.map.size() < per_shard_) return;
    std::vector<TimePoint> ages;
    ages.reserve(shard.map.size());
    for (const auto& entry : shard.map) ages.push_back(entry.second.last_used);
    const size_t drop = std::max<size_t>(1, per_shard_ / 8);
    std::nth_element(ages.begin(), ages.begin() + (drop - 1), ages.end());
    const TimePoint cutoff = ages[drop - 1];
    size_t dropped = 0;
    absl::erase_if(shard.map, [&](const auto& entry) {
      if (dropped < drop && entry.second.last_used <= cutoff) {
        ++dropped;
        return true;
      }
      return false;
    });
    shard.evicted_capacity += dropped;
  }

  Node& Touch(Shard& shard, absl::string_view key, size_t hash, TimePoint now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
    // `hash` is the map's own hash of `key` (absl::Hash of the string view): computed once.
    if (auto it = shard.map.find(key, hash); it != shard.map.end()) {
      it->second.last_used = std::max(it->second.last_used, now);
      return it->second;
    }
    if (shard.map.size() >= per_shard_) MakeRoom(shard, now);
    Node& node = shard.map[std::string(key.data(), key.size())];
    node.last_used = now;
    node.limiters.reserve(limits_.size());
    // Create cannot fail: the same options were validated in Keyed::Create.
    for (const LimitOptions& l : limits_) node.limiters.push_back(*Limiter::Create(l, *clock_));
    return node;
  }

  absl::StatusOr<Decision> Decide(Node& node, int64_t n, TimePoint now) {
    if (node.limiters.size() == 1) return node.limiters[0].TryAcquire(n, now);
    absl::InlinedVector<Decision, 4> decisions;
    bool all = true;
    for (const Limiter& l : node.limiters) {
      absl::StatusOr<Decision> d = l.Check(n, now);
      if (!d.ok()) return d.status();
      all = all && d->allowed;
      decisions.push_back(*d);
    }
    if (all && n > 0) {
      // Every limit admits it and nothing else can touch these limiters while the shard is
      // locked, so each TryAcquire below admits too.
      decisions.clear();
      for (Limiter& l : node.limiters) {
        absl::StatusOr<Decision> d = l.TryAcquire(n, now);
        if (!d.ok()) return d.status();
        decisions.push_back(*d);
      }
    }
    return internal::Combine(decisions.data(), decisions.size());
  }

  const Options options_;
  const std::vector<LimitOptions> limits_;
  Clock* clock_;
  const size_t per_shard_;
  std::vector<Shard> shards_;
};

}  // namespace keel::limit
