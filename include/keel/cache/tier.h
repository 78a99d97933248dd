// keel/cache/tier.h: the interfaces a `keel::cache::Cache<T>` is assembled from.
//
// Defines `keel::cache::Tier<T>` (one level of storage: the in-process LocalTier of
// keel/cache/local_tier.h, the Redis tier of keel/redis/cache_store.h, or your own) and
// `keel::cache::StampedeLock` (a lock that lets one process of many load a missing key; the
// Redis one is keel::redis::CacheStampedeLock).
//
// A tier stores, per key, either a value or a cached absence (a negative entry: the loader said
// NOT_FOUND and the cache keeps that for negative_ttl). A tier that does I/O reports failures as
// a Status (UNAVAILABLE, DEADLINE_EXCEEDED); the cache then treats that tier as missing for the
// call (fail open) and counts it. INVALID_ARGUMENT (a key or value the tier refuses) is the
// caller's error and is returned to them.
//
// Thread safety: implementations must be thread-safe.
//
//   std::vector<std::unique_ptr<keel::cache::Tier<Profile>>> tiers;
//   tiers.push_back(keel::cache::LocalTier<Profile>::Create({.max_entries = 100'000}).value());
//   tiers.push_back(keel::redis::CacheTier<Profile>::Create({.name = "profiles"},
//   *client).value()); auto cache = keel::cache::Cache<Profile>::Create({.name = "profiles"},
//   std::move(tiers));
#pragma once

#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/cache/store_types.h"
#include "keel/clock.h"
#include "keel/deadline.h"

namespace keel::cache {

template <typename T>
class Tier {
 public:
  // What a tier holds for a key.
  struct Hit {
    std::optional<T> value;  // nullopt: a negative entry (the key is known to be absent)
    // What the tier knows about the entry (write time, expiry, load time), when it keeps it:
    // refresh-ahead and XFetch need it, so they act on hits of a tier that has it (LocalTier).
    std::optional<EntryMetadata> metadata;
  };
  // One write of SetMany.
  struct Write {
    std::string_view key;
    const std::optional<T>* value;  // nullopt: a negative entry
    Duration ttl;                   // > 0
    Duration load_time;             // what producing the value took (XFetch's delta)
  };

  virtual ~Tier() = default;

  // "local", "redis": the `tier` label of metrics and the word errors use.
  virtual std::string_view kind() const = 0;

  // The entry of `key`, or nullopt on a miss. Errors: as the banner says.
  virtual absl::StatusOr<std::optional<Hit>> Get(Deadline deadline, std::string_view key) = 0;

  // The entries of `keys`, one answer per key in order (nullopt: a miss); a remote tier reads
  // them in one round trip. The default loops over Get and fails with the first error.
  virtual absl::StatusOr<std::vector<std::optional<Hit>>> GetMany(
      Deadline deadline, std::span<const std::string_view> keys) {
    std::vector<std::optional<Hit>> out;
    out.reserve(keys.size());
    for (std::string_view key : keys) {
      absl::StatusOr<std::optional<Hit>> got = Get(deadline, key);
      if (!got.ok()) return got.status();
      out.push_back(std::move(*got));
    }
    return out;
  }

  // Stores `value` (nullopt: a negative entry) under `key` for `ttl`.
  virtual absl::Status Set(Deadline deadline, std::string_view key, const std::optional<T>& value,
                           Duration ttl, Duration load_time) = 0;

  // Removes `key`. OK when it was not there.
  virtual absl::Status Erase(Deadline deadline, std::string_view key) = 0;

  // Several Sets; a remote tier sends them in one round trip. The default loops over Set and
  // returns the first error.
  virtual absl::Status SetMany(Deadline deadline, std::span<const Write> writes) {
    absl::Status first;
    for (const Write& w : writes) first.Update(Set(deadline, w.key, *w.value, w.ttl, w.load_time));
    return first;
  }

  // Drops every entry this process holds (a local tier; a remote tier does nothing: it is shared
  // with other processes). Called when invalidations may have been missed.
  virtual void Clear() {}
};

// Lets one process of many load a key that every process misses (see Cache's Options::stampede).
class StampedeLock {
 public:
  // A held lock; releasing is destroying it.
  class Hold {
   public:
    virtual ~Hold() = default;
  };
  virtual ~StampedeLock() = default;
  // One attempt, bounded by `deadline`: a Hold when this process now holds the lock of `key`,
  // nullptr when another process holds it. Errors (the lock's backend is down) make the cache
  // load without the lock (fail open), counted.
  virtual absl::StatusOr<std::unique_ptr<Hold>> TryAcquire(Deadline deadline,
                                                           std::string_view key) = 0;
};

}  // namespace keel::cache
