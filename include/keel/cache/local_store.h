// keel/cache/local_store.h: an in-process, bounded, sharded key-value cache with per-entry TTL and
// a choice of eviction policy (W-TinyLFU by default, or LRU).
//
// Defines `keel::cache::LocalStore<V>`: string keys, values of any copyable type V. The plain
// types it uses (Eviction, RemovalCause, PutOptions, EntryMetadata, LocalStoreStats) are in
// keel/cache/store_types.h.
//
// - Bounded by entry count (`max_entries`), by weight (`max_weight` with a `weigher`), or both.
//   The store is split into `shards` (a power of two) that each hold their share of the bounds
//   under their own mutex, so reads of different keys rarely contend; eviction is decided per
//   shard, so the store as a whole approximates its policy (exact with one shard).
// - W-TinyLFU (Caffeine's policy) keeps frequently used entries through scans and one-time keys;
//   LRU is offered for traffic that is purely about recency. Figures: docs/caching.md.
// - TTL per entry (PutOptions::ttl, or the store's default_ttl); no TTL means no expiry. Expiry is
//   lazy and exact for readers: an expired entry is never returned, and is removed when read,
//   when it would be evicted, or by PurgeExpired(); until then it takes its slot.
// - Each entry carries metadata (write time, expiry, load time, weight: GetEntry), what a caller
//   needs to refresh entries by age or recompute them early (XFetch's delta is the load time).
// - A removal listener hears every removal with its cause, after the shard's lock is released
//   (it may call back into the store). An exception it throws is caught and counted.
// - Get/Put/Erase are O(1). Memory per entry: docs/caching.md ("Memory per entry").
//
// Thread safety: thread-safe. The value is copied out under its shard's lock: for large values,
// store a `std::shared_ptr<const T>`.
//
//   auto store = keel::cache::LocalStore<std::string>::Create({
//       .name = "profiles",
//       .max_entries = 100'000,
//       .default_ttl = std::chrono::minutes(10),
//   }).value();
//   KEEL_RETURN_IF_ERROR(store->Put("user:42", json));
//   if (std::optional<std::string> hit = store->Get("user:42")) return *hit;
//   store->Erase("user:42");
//   keel::cache::LocalStoreStats s = store->Stats();   // hits, misses, evictions by cause
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <new>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/cache/internal/store_core.h"
#include "keel/cache/store_types.h"
#include "keel/clock.h"
#include "keel/internal/exception.h"
#include "keel/internal/strings.h"
#include "keel/metrics.h"

namespace keel::cache {

template <typename V>
class LocalStore {
 public:
  // Told of every entry that leaves the store and why. Runs on the thread whose call removed the
  // entry, after the shard's lock is released; it may use the store. What it throws is caught,
  // counted in listener_errors_total and dropped.
  using RemovalListener =
      std::function<void(std::string_view key, const V& value, RemovalCause cause)>;
  // An entry's weight, in the unit of max_weight (bytes, typically). Must return >= 1.
  using Weigher = std::function<uint64_t(std::string_view key, const V& value)>;

  struct Options {
    // Names the store in errors and in metric labels. Default: "local".
    std::string name = "local";
    // Most entries held. Must be >= 1 when set; at least one of max_entries and max_weight must be
    // set. Default: 10'000.
    std::optional<size_t> max_entries = 10'000;
    // Largest total weight held, in the weigher's unit. Must be >= 1 when set, and needs a
    // weigher. An entry heavier than max_weight / shards is refused. Default: none.
    std::optional<uint64_t> max_weight = std::nullopt;
    // Weighs each entry for max_weight (and Stats().weight). Default: none (every entry weighs 1).
    Weigher weigher = nullptr;
    // What a full store drops. Default: W-TinyLFU (ahead of or level with LRU on every trace in
    // docs/caching.md). LRU costs no sketch (8 to 16 bytes per entry of capacity) and no
    // frequency update per hit: choose it for traffic that is purely about recency.
    Eviction eviction = Eviction::kWTinyLfu;
    // The TTL of a Put that gives none. Must be > 0 when set. Default: none (entries never
    // expire; eviction alone removes them).
    std::optional<Duration> default_ttl = std::nullopt;
    // Independently locked shards: a power of two in [1, 1024]. The store uses fewer when a bound
    // is small (at most one shard per 64 entries or weight units). More shards: less contention
    // across cores, less exact policy (each shard evicts on its own). Default: 16.
    size_t shards = 16;
    // See RemovalListener. Default: none.
    RemovalListener removal_listener = nullptr;
  };

  // A value with what the store knows about it.
  struct Found {
    V value;
    EntryMetadata metadata;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field: `local store "profiles": max_entries
  // must be >= 1, got 0`). `clock` (and `metrics`, if given) must outlive the store. With
  // `metrics`, registers, labelled {name, tier="local"}: keel_cache_entries and keel_cache_weight
  // (gauges), keel_cache_requests_total{result=hit|miss}, keel_cache_puts_total,
  // keel_cache_evictions_total{cause=size|expired|explicit}, keel_cache_replaced_total and
  // keel_cache_listener_errors_total; errors as MetricsRegistry's (ALREADY_EXISTS for a second
  // store with the same name).
  static absl::StatusOr<std::unique_ptr<LocalStore>> Create(Options options,
                                                            Clock& clock = SteadyClock(),
                                                            MetricsRegistry* metrics = nullptr) {
    internal::CoreOptions core{.name = options.name,
                               .max_entries = options.max_entries,
                               .max_weight = options.max_weight,
                               .eviction = options.eviction,
                               .shards = options.shards};
    if (absl::Status s =
            internal::ValidateStoreOptions(core, options.weigher != nullptr, options.default_ttl);
        !s.ok()) {
      return s;
    }
    std::unique_ptr<LocalStore> store(new LocalStore(std::move(options), core, clock));
    if (metrics != nullptr) {
      if (absl::Status s = store->core_.RegisterMetrics(*metrics); !s.ok()) return s;
    }
    return store;
  }

  // The live value of `key` (a copy), or nullopt. Counts a hit or a miss.
  std::optional<V> Get(std::string_view key) { return Read<V>(key); }

  // As Get, with the entry's metadata.
  std::optional<Found> GetEntry(std::string_view key) { return Read<Found>(key); }

  // Stores `value` under `key`, replacing any value it had; the entry lives for `options.ttl`
  // (default: the store's default_ttl). The policy may evict other entries, or under W-TinyLFU
  // the new entry itself when it is less popular than what it would displace (all told to the
  // listener, cause kSize).
  // Errors: INVALID_ARGUMENT for a ttl <= 0, a load_time < 0, a weight of 0 or above
  // max_weight / shards; INTERNAL if the weigher throws. Nothing changes on error.
  absl::Status Put(std::string_view key, V value, const PutOptions& options = {}) {
    const std::optional<Duration> ttl = options.ttl ? options.ttl : default_ttl_;
    uint64_t weight = 1;
    if (weigher_) {
      try {
        weight = weigher_(key, value);
      } catch (...) {
        return absl::InternalError(
            keel::internal::StrCat("local store \"", core_.name(), "\": the weigher threw ",
                                   keel::internal::DescribeException(std::current_exception())));
      }
    }
    if (absl::Status s = core_.CheckPut(weight, options.ttl, options.load_time); !s.ok()) return s;
    Node* node = Node::Make(key, std::move(value));
    node->weight = weight;
    node->load_time = options.load_time;
    internal::Removals removed;
    core_.Put(node, ttl, removed);
    Deliver(removed);
    return absl::OkStatus();
  }

  // Removes `key`; true if a live entry was removed (the listener hears kExplicit).
  bool Erase(std::string_view key) {
    internal::Removals removed;
    const bool erased = core_.Erase(key, removed);
    Deliver(removed);
    return erased;
  }

  // Removes every entry (kExplicit; kExpired for those already expired), shard by shard: a Put
  // racing with Clear may survive it.
  void Clear() {
    internal::Removals removed;
    core_.Clear(removed);
    Deliver(removed);
  }

  // Removes every expired entry now; returns how many. O(entries): for a store with TTLs whose
  // expired entries are rarely read again, call it periodically to free their memory early.
  size_t PurgeExpired() {
    internal::Removals removed;
    core_.PurgeExpired(removed);
    const size_t n = removed.size();
    Deliver(removed);
    return n;
  }

  LocalStoreStats Stats() const { return core_.Stats(); }
  const std::string& name() const { return core_.name(); }
  // The shards actually used (fewer than Options::shards for a small store).
  size_t shards() const { return core_.shards(); }

 private:
  // One allocation per entry: this node, then the key's bytes.
  struct Node : internal::NodeBase {
    explicit Node(V v) : value(std::move(v)) {}
    V value;

    static Node* Make(std::string_view key, V value) {
      void* mem = Allocate(sizeof(Node) + key.size());
      Node* node = new (mem) Node(std::move(value));
      node->key_size = key.size();
      node->key_offset = static_cast<uint32_t>(sizeof(Node));
      std::char_traits<char>::copy(static_cast<char*>(mem) + sizeof(Node), key.data(), key.size());
      return node;
    }
    static void Destroy(internal::NodeBase* base) {
      Node* node = static_cast<Node*>(base);
      node->~Node();
      Free(node);
    }

   private:
    // The aligned operator new only when V needs it: the plain one is cheaper.
    static constexpr bool kOverAligned = alignof(Node) > __STDCPP_DEFAULT_NEW_ALIGNMENT__;
    static void* Allocate(size_t bytes) {
      if constexpr (kOverAligned) return ::operator new(bytes, std::align_val_t(alignof(Node)));
      return ::operator new(bytes);
    }
    static void Free(void* p) {
      if constexpr (kOverAligned) {
        ::operator delete(p, std::align_val_t(alignof(Node)));
      } else {
        ::operator delete(p);
      }
    }
  };

  LocalStore(Options options, const internal::CoreOptions& core, Clock& clock)
      : default_ttl_(options.default_ttl),
        weigher_(std::move(options.weigher)),
        listener_(std::move(options.removal_listener)),
        core_(core, &Node::Destroy, clock) {}

  // A hit's value (Out = V) or value and metadata (Out = Found), copied out under the lock.
  template <typename Out>
  std::optional<Out> Read(std::string_view key) {
    std::optional<Out> out;
    internal::Removals removed;
    core_.Get(
        key,
        [](const internal::NodeBase& n, void* o) {
          const Node& node = static_cast<const Node&>(n);
          if constexpr (std::is_same_v<Out, Found>) {
            static_cast<std::optional<Out>*>(o)->emplace(Found{node.value, n.Metadata()});
          } else {
            static_cast<std::optional<Out>*>(o)->emplace(node.value);
          }
        },
        &out, removed);
    Deliver(removed);
    return out;
  }

  // Runs outside every lock: tells the listener, then frees the nodes.
  void Deliver(internal::Removals& removed) {
    for (const internal::Removal& r : removed) {
      if (listener_) {
        const Node& node = static_cast<const Node&>(*r.node);
        try {
          listener_(node.key(), node.value, r.cause);
        } catch (...) {
          core_.CountListenerError();
        }
      }
      Node::Destroy(r.node);
    }
  }

  const std::optional<Duration> default_ttl_;
  const Weigher weigher_;
  const RemovalListener listener_;
  internal::StoreCore core_;
};

}  // namespace keel::cache
