// keel/cache/store_types.h: the plain types of keel's in-process cache store, shared by
// `keel::cache::LocalStore<V>` (keel/cache/local_store.h) and what is built on it.
//
// Defines `Eviction` (the policy), `RemovalCause` (why an entry left), `PutOptions` (per-write
// TTL and load time), `EntryMetadata` (what the store knows about an entry besides its value) and
// `LocalStoreStats` (the counters of one store).
//
// Thread safety: plain values.
//
//   store->Put("user:42", profile, {.ttl = std::chrono::minutes(5), .load_time = took});
//   auto found = store->GetEntry("user:42");
//   if (found && now - found->metadata.written > refresh_after) Refresh("user:42");
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "keel/clock.h"

namespace keel::cache {

// Which entries a full store drops. See docs/caching.md for hit rates on several traces.
enum class Eviction {
  // Least recently used: one list in access order. Best for purely recency-driven traffic; a
  // scan or a loop larger than the store flushes it.
  kLru,
  // Window TinyLFU (Caffeine's policy): new entries enter a small LRU admission window (1% of the
  // capacity); an entry leaving the window enters the main space (a segmented LRU: 20% probation,
  // 80% protected) only if a frequency sketch estimates it more popular than the main space's
  // victim. Keeps frequently used entries through scans and one-hit wonders.
  kWTinyLfu,
};

// Why an entry left the store, as the removal listener is told.
enum class RemovalCause {
  kExplicit,  // Erase or Clear
  kReplaced,  // a Put of the same key replaced its value
  kSize,      // evicted to keep the store within max_entries / max_weight
  kExpired,   // its TTL passed (noticed on a read, an eviction or PurgeExpired)
};

// "explicit", "replaced", "size", "expired".
std::string_view RemovalCauseName(RemovalCause cause);

// Per-write options of LocalStore::Put.
struct PutOptions {
  // How long the entry lives. Must be > 0 when set. Default: the store's default_ttl.
  std::optional<Duration> ttl = std::nullopt;
  // How long producing the value took (a loader's latency), kept with the entry for
  // probabilistic early refresh (XFetch's delta). Must be >= 0. Default: 0.
  Duration load_time = Duration::zero();
};

// What the store records about an entry, returned by LocalStore::GetEntry.
struct EntryMetadata {
  TimePoint written;                 // when Put stored this value, on the store's clock
  std::optional<TimePoint> expires;  // when it expires; nullopt: never
  Duration load_time{};              // PutOptions::load_time of that Put
  uint64_t weight = 1;               // the weigher's answer (1 without a weigher)
};

// A snapshot of one store's counters (Stats()). Counters are per shard and summed shard by shard,
// so a snapshot taken under concurrent traffic is not one instant.
struct LocalStoreStats {
  size_t entries = 0;                   // entries held now (expired ones not yet removed included)
  uint64_t weight = 0;                  // their total weight (== entries without a weigher)
  uint64_t hits_total = 0;              // Get/GetEntry that found a live entry
  uint64_t misses_total = 0;            // Get/GetEntry that found nothing or an expired entry
  uint64_t puts_total = 0;              // successful Puts (new keys and replacements)
  uint64_t evicted_size_total = 0;      // removed for size (RemovalCause::kSize)
  uint64_t expired_total = 0;           // removed because their TTL passed
  uint64_t removed_explicit_total = 0;  // removed by Erase or Clear
  uint64_t replaced_total = 0;          // values replaced by a Put of the same key
  uint64_t listener_errors_total = 0;   // removal listener calls that threw (dropped)
};

}  // namespace keel::cache
