// The local store's engine: sharded hash table + eviction policy + expiry + counters.
//
// Structure. The store is `shards` (a power of two) independent shards; a key's shard is bits
// 40.. of its 64-bit hash (the hash table probes with the low bits and the sketch uses the low 32,
// so the three choices are independent). Each shard has one keel::Mutex guarding:
//   - `table`: an absl::flat_hash_set of NodeBase*, hashed by the node's stored hash and compared
//     by key (heterogeneous lookup by std::string_view, so a Get allocates nothing);
//   - `policy`: the node lists of LRU or W-TinyLFU and, for W-TinyLFU, the frequency sketch
//     (src/cache/policy.h);
//   - the shard's counters.
// Capacity (max_entries, max_weight) is split across the shards exactly: shard i gets
// total / shards, plus one if i < total % shards, so the shards' budgets add up to the store's.
// The store uses at most one shard per 64 units of each bound (fewer shards than asked for a
// small store), so that every shard's policy has room to work.
//
// Invariants, each holding whenever a shard's mutex is free:
//   1. A node is in the table iff it is on exactly one of the policy's lists, and the store owns
//      it. Every other node has been handed back to LocalStore as a Removal and is no longer
//      reachable from any shard.
//   2. The policy's usage equals the table's entry count and the sum of its nodes' weights, and is
//      within the shard's budget: every operation that adds weight (Put) evicts before it
//      unlocks. Nothing is ever heavier than a shard's weight budget (CheckPut refuses it).
//   3. A node whose `expires` has passed is never returned by a read: Get and Erase check it
//      under the lock and remove it as expired. Until it is read, evicted or purged it still
//      occupies its slot (expiry is lazy: no timer, no background thread).
//   4. Nothing user-supplied runs under a shard lock except the Reader that copies the value out
//      (LocalStore's, which copies V). Removal listeners and value destructors run after the lock
//      is released, from the Removals each call returns.
//
// Cost. Get: one hash, one lock, one probe, one node (key inline); a clock read only if the entry
// has a TTL; the policy's reorder (skipped when the node is already most recent) and, for
// W-TinyLFU, one sketch increment (one cache line). Put adds the insert and at most a few
// evictions (amortised O(1): each node is evicted once).
#include "keel/cache/internal/store_core.h"

#include <algorithm>
#include <bit>
#include <limits>

#include "absl/container/flat_hash_set.h"
#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "cache/policy.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/time_math.h"
#include "keel/internal/validate.h"
#include "keel/sync.h"

namespace keel::cache {

std::string_view RemovalCauseName(RemovalCause cause) {
  switch (cause) {
    case RemovalCause::kExplicit:
      return "explicit";
    case RemovalCause::kReplaced:
      return "replaced";
    case RemovalCause::kSize:
      return "size";
    case RemovalCause::kExpired:
      return "expired";
  }
  return "unknown";
}

namespace internal {
namespace {

using keel::internal::InvalidOption;
using keel::internal::OptionsOf;
using keel::internal::StrCat;

constexpr size_t kMaxShards = 1024;
// The store uses at most one shard per this many units of each bound.
constexpr uint64_t kMinPerShard = 64;

struct NodeHash {
  using is_transparent = void;
  size_t operator()(const NodeBase* n) const { return n->hash; }
  size_t operator()(std::string_view key) const { return StoreCore::Hash(key); }
};
struct NodeEq {
  using is_transparent = void;
  static std::string_view View(const NodeBase* n) { return n->key(); }
  static std::string_view View(std::string_view key) { return key; }
  template <typename A, typename B>
  bool operator()(const A& a, const B& b) const {
    return View(a) == View(b);
  }
};

size_t EffectiveShards(const CoreOptions& o) {
  size_t n = o.shards;
  if (o.max_entries)
    n = std::min(n, std::bit_floor(std::max<size_t>(1, *o.max_entries / kMinPerShard)));
  if (o.max_weight) {
    n = std::min<size_t>(n, std::bit_floor(std::max<uint64_t>(1, *o.max_weight / kMinPerShard)));
  }
  return n;
}

// Shard i's share of `total`: the shares add up to `total` exactly.
template <typename T>
T ShareOf(const std::optional<T>& total, size_t shards, size_t i) {
  if (!total) return std::numeric_limits<T>::max();
  return *total / shards + (i < *total % shards ? 1 : 0);
}

bool Expired(const NodeBase* n, TimePoint now) { return n->expires <= now; }

}  // namespace

EntryMetadata NodeBase::Metadata() const {
  EntryMetadata m;
  m.written = written;
  if (expires != TimePoint::max()) m.expires = expires;
  m.load_time = load_time;
  m.weight = weight;
  return m;
}

absl::Status ValidateStoreOptions(const CoreOptions& o, bool has_weigher,
                                  const std::optional<Duration>& default_ttl) {
  const OptionsOf of("local store", o.name);
  if (!o.max_entries && !o.max_weight) {
    return absl::InvalidArgumentError(StrCat(
        of.Field("max_entries"), " or max_weight must be set (an unbounded cache is a leak)"));
  }
  if (o.max_entries) KEEL_RETURN_IF_ERROR(RequireAtLeast(of, "max_entries", *o.max_entries, 1));
  if (o.max_weight) {
    KEEL_RETURN_IF_ERROR(RequireAtLeast(of, "max_weight", *o.max_weight, 1));
    KEEL_RETURN_IF_ERROR(RequireSet(of, "weigher", has_weigher));
  }
  if (o.shards == 0 || o.shards > kMaxShards || !std::has_single_bit(o.shards)) {
    return InvalidOption(of, "shards", StrCat("a power of two in [1, ", kMaxShards, "]"), o.shards);
  }
  if (default_ttl) KEEL_RETURN_IF_ERROR(RequirePositive(of, "default_ttl", *default_ttl));
  return absl::OkStatus();
}

struct alignas(64) StoreCore::Shard {
  Shard(Eviction eviction, Usage budget, uint64_t seed) : policy(eviction, budget, seed) {}

  Mutex mu;
  absl::flat_hash_set<NodeBase*, NodeHash, NodeEq> table ABSL_GUARDED_BY(mu);
  Policy policy ABSL_GUARDED_BY(mu);
  uint64_t hits ABSL_GUARDED_BY(mu) = 0;
  uint64_t misses ABSL_GUARDED_BY(mu) = 0;
  uint64_t puts ABSL_GUARDED_BY(mu) = 0;
  uint64_t evicted_size ABSL_GUARDED_BY(mu) = 0;
  uint64_t expired ABSL_GUARDED_BY(mu) = 0;
  uint64_t removed_explicit ABSL_GUARDED_BY(mu) = 0;
  uint64_t replaced ABSL_GUARDED_BY(mu) = 0;

  // Unlinks `n` (in the table) as `cause`, counting it.
  void Remove(NodeBase* n, RemovalCause cause, Removals& removed)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    table.erase(n);
    policy.Remove(n);
    Count(cause);
    removed.push_back({n, cause});
  }
  void Count(RemovalCause cause) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    switch (cause) {
      case RemovalCause::kExplicit:
        ++removed_explicit;
        break;
      case RemovalCause::kReplaced:
        ++replaced;
        break;
      case RemovalCause::kSize:
        ++evicted_size;
        break;
      case RemovalCause::kExpired:
        ++expired;
        break;
    }
  }
};

StoreCore::StoreCore(const CoreOptions& options, Destroy destroy, Clock& clock)
    : name_(options.name),
      clock_(clock),
      destroy_(destroy),
      shard_count_(EffectiveShards(options)),
      shard_mask_(shard_count_ - 1),
      // The last shard's share is the smallest.
      max_entries_per_shard_(ShareOf(options.max_entries, shard_count_, shard_count_ - 1)),
      max_weight_per_shard_(
          options.max_weight
              ? std::optional<uint64_t>(ShareOf(options.max_weight, shard_count_, shard_count_ - 1))
              : std::nullopt) {
  shards_.reserve(shard_count_);
  for (size_t i = 0; i < shard_count_; ++i) {
    const Usage budget{ShareOf(options.max_entries, shard_count_, i),
                       ShareOf(options.max_weight, shard_count_, i)};
    shards_.push_back(std::make_unique<Shard>(options.eviction, budget, /*seed=*/i + 1));
  }
}

StoreCore::~StoreCore() {
  registrations_.clear();
  for (auto& shard : shards_) {
    MutexLock lock(shard->mu);
    for (NodeBase* n : shard->table) destroy_(n);
    shard->table.clear();
  }
}

uint64_t StoreCore::Hash(std::string_view key) {
  return absl::Hash<absl::string_view>{}(absl::string_view(key.data(), key.size()));
}

StoreCore::Shard& StoreCore::ShardOf(uint64_t hash) const {
  return *shards_[static_cast<size_t>(hash >> 40) & shard_mask_];
}

bool StoreCore::Get(std::string_view key, Reader read, void* out, Removals& removed) {
  const uint64_t hash = Hash(key);
  Shard& shard = ShardOf(hash);
  MutexLock lock(shard.mu);
  const auto it = shard.table.find(key, hash);
  if (it == shard.table.end()) {
    ++shard.misses;
    return false;
  }
  NodeBase* n = *it;
  // Only an entry with a TTL pays for a clock read.
  if (n->expires != TimePoint::max() && Expired(n, clock_.Now())) {
    shard.Remove(n, RemovalCause::kExpired, removed);
    ++shard.misses;
    return false;
  }
  shard.policy.Access(n);
  ++shard.hits;
  read(*n, out);
  return true;
}

absl::Status StoreCore::CheckPut(uint64_t weight, const std::optional<Duration>& ttl,
                                 Duration load_time) const {
  const OptionsOf of("local store", name_);
  if (ttl) KEEL_RETURN_IF_ERROR(RequirePositive(of, "ttl", *ttl));
  KEEL_RETURN_IF_ERROR(RequireNonNegative(of, "load_time", load_time));
  if (weight == 0) return InvalidOption(of, "weight", ">= 1 (the weigher's answer)", weight);
  if (const auto per_shard = max_weight_per_shard(); per_shard && weight > *per_shard) {
    return InvalidOption(
        of, "weight",
        StrCat("<= max_weight / shards (", *per_shard, " in each of ", shard_count_, " shards)"),
        weight);
  }
  return absl::OkStatus();
}

void StoreCore::Put(NodeBase* node, const std::optional<Duration>& ttl, Removals& removed) {
  node->hash = Hash(node->key());
  Shard& shard = ShardOf(node->hash);
  Victims victims;
  MutexLock lock(shard.mu);
  const TimePoint now = clock_.Now();
  node->written = now;
  node->expires = ttl ? keel::internal::AddSaturating(now, *ttl) : TimePoint::max();
  ++shard.puts;
  const auto [it, inserted] = shard.table.insert(node);
  if (inserted) {
    shard.policy.Insert(node, victims);
  } else {
    NodeBase* old = *it;
    // Same key, same hash: the slot may hold the new node without rehashing.
    const_cast<NodeBase*&>(*it) = node;
    shard.policy.Replace(old, node, victims);
    const RemovalCause cause = Expired(old, now) ? RemovalCause::kExpired : RemovalCause::kReplaced;
    shard.Count(cause);
    removed.push_back({old, cause});
  }
  for (NodeBase* v : victims) {
    shard.table.erase(v);
    const RemovalCause cause = Expired(v, now) ? RemovalCause::kExpired : RemovalCause::kSize;
    shard.Count(cause);
    removed.push_back({v, cause});
  }
}

bool StoreCore::Erase(std::string_view key, Removals& removed) {
  const uint64_t hash = Hash(key);
  Shard& shard = ShardOf(hash);
  MutexLock lock(shard.mu);
  const auto it = shard.table.find(key, hash);
  if (it == shard.table.end()) return false;
  NodeBase* n = *it;
  const bool expired = n->expires != TimePoint::max() && Expired(n, clock_.Now());
  shard.Remove(n, expired ? RemovalCause::kExpired : RemovalCause::kExplicit, removed);
  return !expired;
}

void StoreCore::Clear(Removals& removed) {
  for (auto& shard : shards_) {
    MutexLock lock(shard->mu);
    const TimePoint now = clock_.Now();
    for (NodeBase* n : shard->table) {
      const RemovalCause cause = Expired(n, now) ? RemovalCause::kExpired : RemovalCause::kExplicit;
      shard->Count(cause);
      removed.push_back({n, cause});
    }
    shard->table.clear();
    shard->policy.Reset();
  }
}

void StoreCore::PurgeExpired(Removals& removed) {
  for (auto& shard : shards_) {
    MutexLock lock(shard->mu);
    const TimePoint now = clock_.Now();
    absl::erase_if(shard->table, [&](NodeBase* n) ABSL_NO_THREAD_SAFETY_ANALYSIS {
      if (!Expired(n, now)) return false;
      shard->policy.Remove(n);
      shard->Count(RemovalCause::kExpired);
      removed.push_back({n, RemovalCause::kExpired});
      return true;
    });
  }
}

LocalStoreStats StoreCore::Stats() const {
  LocalStoreStats s;
  for (const auto& shard : shards_) {
    MutexLock lock(shard->mu);
    s.entries += shard->table.size();
    s.weight += shard->policy.used().weight;
    s.hits_total += shard->hits;
    s.misses_total += shard->misses;
    s.puts_total += shard->puts;
    s.evicted_size_total += shard->evicted_size;
    s.expired_total += shard->expired;
    s.removed_explicit_total += shard->removed_explicit;
    s.replaced_total += shard->replaced;
  }
  s.listener_errors_total = listener_errors_.load(std::memory_order_relaxed);
  return s;
}

absl::Status StoreCore::RegisterMetrics(MetricsRegistry& metrics) {
  const auto keep = [&](absl::StatusOr<MetricsRegistry::Registration> r) -> absl::Status {
    if (!r.ok()) return r.status();
    registrations_.push_back(std::move(r).value());
    return absl::OkStatus();
  };
  const Labels labels = {{"name", name_}, {"tier", "local"}};
  const auto with = [&](const char* key, const char* value) {
    Labels l = labels;
    l.emplace_back(key, value);
    return l;
  };
  const auto read = [this](uint64_t LocalStoreStats::*field) {
    return [this, field] { return static_cast<double>(Stats().*field); };
  };
  KEEL_RETURN_IF_ERROR(
      keep(metrics.AddGaugeCallback("keel_cache_entries", "Entries held by a cache tier.", labels,
                                    [this] { return static_cast<double>(Stats().entries); })));
  KEEL_RETURN_IF_ERROR(
      keep(metrics.AddGaugeCallback("keel_cache_weight", "Total weight of a cache tier's entries.",
                                    labels, read(&LocalStoreStats::weight))));
  const char* requests = "Cache reads by result.";
  KEEL_RETURN_IF_ERROR(
      keep(metrics.AddCounterCallback("keel_cache_requests_total", requests, with("result", "hit"),
                                      read(&LocalStoreStats::hits_total))));
  KEEL_RETURN_IF_ERROR(
      keep(metrics.AddCounterCallback("keel_cache_requests_total", requests, with("result", "miss"),
                                      read(&LocalStoreStats::misses_total))));
  KEEL_RETURN_IF_ERROR(
      keep(metrics.AddCounterCallback("keel_cache_puts_total", "Values stored in a cache tier.",
                                      labels, read(&LocalStoreStats::puts_total))));
  const char* evictions = "Entries removed from a cache tier, by cause.";
  const std::pair<const char*, uint64_t LocalStoreStats::*> causes[] = {
      {"size", &LocalStoreStats::evicted_size_total},
      {"expired", &LocalStoreStats::expired_total},
      {"explicit", &LocalStoreStats::removed_explicit_total},
  };
  for (const auto& [cause, field] : causes) {
    KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback("keel_cache_evictions_total", evictions,
                                                         with("cause", cause), read(field))));
  }
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_cache_replaced_total", "Values replaced by a write of the same key.", labels,
      read(&LocalStoreStats::replaced_total))));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_cache_listener_errors_total", "Removal listener calls that threw (dropped).", labels,
      read(&LocalStoreStats::listener_errors_total))));
  return absl::OkStatus();
}

}  // namespace internal
}  // namespace keel::cache
