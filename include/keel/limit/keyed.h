// keel/limit/keyed.h: one limiter (or several) per key, such as per IP, per user or per tenant,
// with bounded memory, idle eviction and an optional penalty block.
//
// Defines `keel::limit::Keyed<Limiter>` and `keel::limit::KeyedStats`. `Limiter` is any of
// TokenBucket, Gcra, FixedWindow, SlidingWindowLog, SlidingWindowCounter.
//
// - Sharded map: keys hash to `shards` independently locked shards, each an LRU list plus an
//   index. A call locks one shard, so calls for different keys rarely contend.
// - Bounded memory: each shard holds at most max_keys / shards keys. A new key arriving at a full
//   shard evicts that shard's least recently used key (counted in evicted_capacity). Under a flood
//   of distinct keys (spoofed IPs) memory stays bounded; the price is that an evicted key that
//   comes back starts fresh, so keep max_keys above the number of keys active within idle_ttl.
// - Idle eviction: a key untouched for idle_ttl is dropped (counted in evicted_idle), lazily, by
//   the next call on its shard. By default idle_ttl is the longest limit's Horizon(): the moment an
//   untouched limiter is back to its initial state, so idle eviction then changes no decision.
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
#include <list>
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
    Shard& shard = shards_[(hash >> 7) % shards_.size()];
    MutexLock lock(shard.mu);
    EvictIdle(shard, now);
    Node& node = Touch(shard, k, now);
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
      stats.keys += shard.index.size();
      stats.evicted_idle += shard.evicted_idle;
      stats.evicted_capacity += shard.evicted_capacity;
      stats.blocked_denials += shard.blocked_denials;
    }
    return stats;
  }

  Duration idle_ttl() const { return *options_.idle_ttl; }

 private:
  struct Node {
    std::string key;
    TimePoint last_used;
    TimePoint blocked_until = TimePoint::min();
    absl::InlinedVector<Limiter, 1> limiters;
  };
  using Lru = std::list<Node>;  // most recently used first

  struct alignas(64) Shard {
    mutable Mutex mu;
    Lru lru ABSL_GUARDED_BY(mu);
    // Keys point into the nodes' own `key` strings (list nodes never move).
    absl::flat_hash_map<absl::string_view, typename Lru::iterator> index ABSL_GUARDED_BY(mu);
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

  void Erase(Shard& shard, typename Lru::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
    shard.index.erase(absl::string_view(it->key));
    shard.lru.erase(it);
  }

  // Drops idle keys from the cold end; each key is dropped once, so this is amortised O(1).
  void EvictIdle(Shard& shard, TimePoint now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
    while (!shard.lru.empty()) {
      auto last = std::prev(shard.lru.end());
      if (now - last->last_used < *options_.idle_ttl || last->blocked_until > now) break;
      Erase(shard, last);
      ++shard.evicted_idle;
    }
  }

  Node& Touch(Shard& shard, absl::string_view key, TimePoint now)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu) {
    if (auto it = shard.index.find(key); it != shard.index.end()) {
      shard.lru.splice(shard.lru.begin(), shard.lru, it->second);
      it->second->last_used = std::max(it->second->last_used, now);
      return *it->second;
    }
    if (shard.lru.size() >= per_shard_) {
      Erase(shard, std::prev(shard.lru.end()));
      ++shard.evicted_capacity;
    }
    Node& node = shard.lru.emplace_front();
    node.key.assign(key.data(), key.size());
    node.last_used = now;
    node.limiters.reserve(limits_.size());
    // Create cannot fail: the same options were validated in Keyed::Create.
    for (const LimitOptions& l : limits_) node.limiters.push_back(*Limiter::Create(l, *clock_));
    shard.index.emplace(absl::string_view(node.key), shard.lru.begin());
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
