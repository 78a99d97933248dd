// keel/cache/internal/store_core.h: the untyped engine under `keel::cache::LocalStore<V>`: the
// sharded hash table, the eviction policies, expiry and the counters. Not part of keel's API.
//
// LocalStore<V> allocates each entry as one block, a `NodeBase` followed by the typed value and
// then the key's bytes, and hands it to the core, which indexes, orders and evicts NodeBases
// without knowing V. What the core removes comes back to LocalStore as `Removals`, after the
// shard's lock is released, so the removal listener and the value's destructor never run under
// a lock. The design is in src/cache/store_core.cc.
//
// Thread safety: thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/inlined_vector.h"
#include "absl/status/status.h"
#include "keel/cache/store_types.h"
#include "keel/clock.h"
#include "keel/metrics.h"

namespace keel::cache::internal {

// The part of an entry the core manages. The key's bytes sit `key_offset` bytes after the node's
// start, in the same allocation (LevelDB's LRUHandle does the same): a lookup touches the table
// slot and this one block.
struct NodeBase {
  NodeBase* prev = nullptr;  // neighbours in the policy list the node is on (queue)
  NodeBase* next = nullptr;
  uint64_t hash = 0;  // StoreCore::Hash(key), computed once
  uint64_t weight = 1;
  TimePoint written{};
  TimePoint expires = TimePoint::max();  // TimePoint::max(): never
  Duration load_time{};
  size_t key_size = 0;  // size_t: any key a string_view can hold, never truncated
  uint32_t key_offset = 0;
  uint8_t queue = 0;  // which policy list: Policy::Queue

  std::string_view key() const {
    return {reinterpret_cast<const char*>(this) + key_offset, key_size};
  }
  EntryMetadata Metadata() const;
};

struct Removal {
  NodeBase* node;
  RemovalCause cause;
};
// Most calls remove at most a few entries; Clear and PurgeExpired may remove many.
using Removals = absl::InlinedVector<Removal, 4>;

// The store's options that the core uses, already validated (ValidateStoreOptions).
struct CoreOptions {
  std::string name;
  std::optional<size_t> max_entries;
  std::optional<uint64_t> max_weight;
  Eviction eviction = Eviction::kWTinyLfu;
  size_t shards = 16;
};

// INVALID_ARGUMENT naming the field, as every keel Create does.
absl::Status ValidateStoreOptions(const CoreOptions& options, bool has_weigher,
                                  const std::optional<Duration>& default_ttl);

class StoreCore {
 public:
  // Copies what a hit returns out of the node, under the shard's lock: it must not block or
  // call into the store.
  using Reader = void (*)(const NodeBase& node, void* out);
  // Destroys a node the core still holds when it is destroyed.
  using Destroy = void (*)(NodeBase* node);

  // REQUIRES: ValidateStoreOptions(options, ...) is OK; `clock` outlives the core.
  StoreCore(const CoreOptions& options, Destroy destroy, Clock& clock);
  ~StoreCore();
  StoreCore(const StoreCore&) = delete;
  StoreCore& operator=(const StoreCore&) = delete;

  static uint64_t Hash(std::string_view key);

  // On a live entry: counts a hit, records the access with the policy, calls `read(node, out)`
  // and returns true. Otherwise counts a miss and returns false; an expired entry found on the
  // way is unlinked and appended to `removed`.
  bool Get(std::string_view key, Reader read, void* out, Removals& removed);

  // OK if a Put with this weight and TTL can be stored: INVALID_ARGUMENT naming `ttl`,
  // `load_time` or the weight otherwise.
  absl::Status CheckPut(uint64_t weight, const std::optional<Duration>& ttl,
                        Duration load_time) const;
  // Stores `node` (its key, hash, weight and load_time set; REQUIRES: CheckPut was OK), taking
  // ownership; stamps `written` and `expires` from the clock and `ttl`. A value it replaces and
  // what it evicts are appended to `removed` (the new node itself, when the policy rejects it).
  void Put(NodeBase* node, const std::optional<Duration>& ttl, Removals& removed);

  // Unlinks the entry of `key`, appending it to `removed`; false when there was none (an expired
  // entry is removed as expired and reported as absent).
  bool Erase(std::string_view key, Removals& removed);
  // Unlinks every entry (as kExplicit).
  void Clear(Removals& removed);
  // Unlinks every expired entry (as kExpired): O(entries), shard by shard.
  void PurgeExpired(Removals& removed);

  void CountListenerError() { listener_errors_.fetch_add(1, std::memory_order_relaxed); }
  LocalStoreStats Stats() const;
  // Registers the store's series (see LocalStore::Create); keeps the registrations.
  absl::Status RegisterMetrics(MetricsRegistry& metrics);

  const std::string& name() const { return name_; }
  size_t shards() const { return shard_count_; }
  // What one shard may hold; an entry heavier than max_weight_per_shard() is refused.
  size_t max_entries_per_shard() const { return max_entries_per_shard_; }
  std::optional<uint64_t> max_weight_per_shard() const { return max_weight_per_shard_; }
  Clock& clock() const { return clock_; }

 private:
  struct Shard;
  Shard& ShardOf(uint64_t hash) const;

  const std::string name_;
  Clock& clock_;
  const Destroy destroy_;
  const size_t shard_count_;
  // (hash >> 40) & shard_mask_ is the shard: bits the table's probing and the sketch never use.
  const size_t shard_mask_;
  // The smallest shard's share of each bound (SIZE_MAX / nullopt: unbounded).
  const size_t max_entries_per_shard_;
  const std::optional<uint64_t> max_weight_per_shard_;
  std::vector<std::unique_ptr<Shard>> shards_;
  // Relaxed: a count, ordering nothing.
  std::atomic<uint64_t> listener_errors_{0};
  std::vector<MetricsRegistry::Registration> registrations_;  // last: dropped first
};

}  // namespace keel::cache::internal
