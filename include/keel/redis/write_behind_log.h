// keel/redis/write_behind_log.h: a write-behind pending set kept in Redis, so that a process
// crash loses no acknowledged write.
//
// Defines `keel::redis::WriteBehindStore` (the bytes and the Lua scripts) and
// `keel::redis::WriteBehindLog<T, Codec>` (a keel::cache::DurablePending<T> over a store and a
// keel::redis::CacheTier<T, Codec>: pass it as WriteBehind<T>::durable, keel/cache/write_behind.h).
//
// - Layout, for a cache tier named <name> (all five under one hash tag):
//   `{keel:wb:<name>}:values` (hash key -> the codec's bytes), `...:versions` (hash key -> a
//   counter every write bumps), `...:since` (hash key -> Redis time in ms of the oldest write not
//   yet written), `...:dirty` (sorted set of unclaimed keys by that time) and `...:claimed`
//   (sorted set of keys leased to a flusher, by the lease's end).
// - Append is one script: the tier's entry (`SET keel:cache:<name>:<key> PX`) and the pending
//   write are updated together, so a write is acknowledged only when both are in Redis. The tier
//   key is outside the hash tag: not for Redis Cluster (like the tier's MGET).
// - Flushers claim batches (oldest first) with a lease; Complete removes what was written unless
//   the key was written again since the claim (then it is pending again with the newer value);
//   a lease that runs out (a flusher killed) puts its keys back, and any instance's next claim
//   takes them. Writes reach the source of truth at least once, so the batch writer must be
//   idempotent per key: last-write-wins upserts are.
// - Times are Redis's (TIME), never a client's clock.
//
// Thread safety: thread-safe. REQUIRES: the Client and the CacheTier outlive the log.
//
//   auto tier = keel::redis::CacheTier<std::string>::Create({.name = "profiles"}, *client).value();
//   auto log = keel::redis::WriteBehindLog<std::string>::Create(*tier, *client).value();
//   tiers.push_back(std::move(tier));
//   auto cache = keel::cache::Cache<std::string>::Create(
//       {.name = "profiles"}, std::move(tiers),
//       {.writer_batch = upsert, .durable = std::move(log)}).value();
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/cache/codec.h"
#include "keel/cache/write_behind.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/internal/strings.h"
#include "keel/redis/cache_store.h"
#include "keel/redis/client.h"

namespace keel::redis {

class WriteBehindStore {
 public:
  struct Options {
    // The longest any call waits for Redis, whatever the caller's deadline. Must be > 0.
    // Default: 1 s.
    Duration command_timeout = std::chrono::seconds(1);
  };
  struct Claimed {
    std::string key;
    std::string value;
    uint64_t version;
  };
  struct Batch {
    std::vector<Claimed> writes;
    uint64_t pending = 0;
    std::optional<Duration> oldest_age;
  };
  // One claimed write to settle: its key and the version it was claimed at.
  struct Settle {
    std::string_view key;
    uint64_t version;
  };

  // The pending set of `tier`'s cache (its name and key prefix). No I/O. INVALID_ARGUMENT for a
  // command_timeout <= 0.
  static absl::StatusOr<std::unique_ptr<WriteBehindStore>> Create(const CacheStore& tier,
                                                                  Client& client, Options options,
                                                                  Clock& clock = SteadyClock());
  static absl::StatusOr<std::unique_ptr<WriteBehindStore>> Create(const CacheStore& tier,
                                                                  Client& client) {
    return Create(tier, client, Options());
  }

  // The contract of each call is DurablePending<T>'s (keel/cache/write_behind.h), on bytes:
  // `frame` is the tier's entry, `value` the codec's bytes. Errors: UNAVAILABLE /
  // DEADLINE_EXCEEDED from Redis; RESOURCE_EXHAUSTED from Append at max_pending; INVALID_ARGUMENT
  // for a key or value the tier refuses.
  absl::StatusOr<bool> Append(Deadline deadline, std::string_view key, std::string_view frame,
                              std::string_view value, Duration ttl, size_t max_pending);
  absl::StatusOr<std::optional<std::string>> Lookup(Deadline deadline, std::string_view key);
  absl::StatusOr<uint64_t> Version(Deadline deadline, std::string_view key);
  absl::StatusOr<bool> Supersede(Deadline deadline, std::string_view key, std::string_view value,
                                 uint64_t version);
  absl::StatusOr<Batch> Claim(Deadline deadline, size_t max, Duration min_age, Duration lease);
  absl::Status Complete(Deadline deadline, std::span<const Settle> writes);
  absl::Status Release(Deadline deadline, std::span<const Settle> writes);

  // The Redis key of one of the five structures ("values", "versions", "since", "dirty",
  // "claimed").
  std::string RedisKey(std::string_view part) const;
  const std::string& name() const { return name_; }

 private:
  WriteBehindStore(const CacheStore& tier, Client& client, Options options, Clock& clock);
  Deadline Bound(Deadline deadline) const;
  absl::Status Failed(const absl::Status& status) const;
  absl::StatusOr<Reply> Run(Deadline deadline, const class Script& script,
                            std::span<const std::string_view> keys,
                            std::span<const std::string_view> args);

  const CacheStore& tier_;
  Client& client_;
  const Options options_;
  Clock& clock_;
  const std::string name_;
  const std::string error_name_;  // `redis write-behind log "<name>": `
  const std::string values_, versions_, since_, dirty_, claimed_;
};

// A keel::cache::DurablePending<T> on Redis for the cache whose Redis tier is `tier`.
template <typename T, typename C = cache::Codec<T>>
class WriteBehindLog final : public cache::DurablePending<T> {
 public:
  using typename cache::DurablePending<T>::Claimed;
  using typename cache::DurablePending<T>::Batch;

  // As WriteBehindStore::Create. `tier` must be one of the cache's tiers: PutBehind then leaves
  // its writes to this log's Append.
  static absl::StatusOr<std::shared_ptr<WriteBehindLog>> Create(CacheTier<T, C>& tier,
                                                                Client& client) {
    return Create(tier, client, WriteBehindStore::Options());
  }
  static absl::StatusOr<std::shared_ptr<WriteBehindLog>> Create(CacheTier<T, C>& tier,
                                                                Client& client,
                                                                WriteBehindStore::Options options,
                                                                Clock& clock = SteadyClock()) {
    absl::StatusOr<std::unique_ptr<WriteBehindStore>> store =
        WriteBehindStore::Create(tier.store(), client, options, clock);
    if (!store.ok()) return store.status();
    return std::shared_ptr<WriteBehindLog>(new WriteBehindLog(tier, std::move(*store)));
  }

  bool Covers(const cache::Tier<T>& tier) const override { return &tier == &tier_; }

  absl::StatusOr<bool> Append(Deadline deadline, std::string_view key, const T& value, Duration ttl,
                              size_t max_pending) override {
    const std::optional<T> v(value);
    const std::string bytes = C::Encode(value);
    return store_->Append(deadline, key, CacheTier<T, C>::Frame(v), bytes, ttl, max_pending);
  }
  absl::StatusOr<std::optional<T>> Lookup(Deadline deadline, std::string_view key) override {
    absl::StatusOr<std::optional<std::string>> raw = store_->Lookup(deadline, key);
    if (!raw.ok()) return raw.status();
    if (!raw->has_value()) return std::optional<T>();
    absl::StatusOr<T> v = C::Decode(**raw);
    if (!v.ok()) return v.status();
    return std::optional<T>(std::move(*v));
  }
  absl::StatusOr<uint64_t> Version(Deadline deadline, std::string_view key) override {
    return store_->Version(deadline, key);
  }
  absl::StatusOr<bool> Supersede(Deadline deadline, std::string_view key, const T& value,
                                 uint64_t version) override {
    return store_->Supersede(deadline, key, C::Encode(value), version);
  }
  // A claimed value the codec cannot decode is completed (removed) and reported in
  // `undecodable`: it could never be written.
  absl::StatusOr<Batch> Claim(Deadline deadline, size_t max, Duration min_age,
                              Duration lease) override {
    absl::StatusOr<WriteBehindStore::Batch> raw = store_->Claim(deadline, max, min_age, lease);
    if (!raw.ok()) return raw.status();
    Batch out{.pending = raw->pending, .oldest_age = raw->oldest_age};
    std::vector<WriteBehindStore::Settle> bad;
    for (const WriteBehindStore::Claimed& c : raw->writes) {
      absl::StatusOr<T> v = C::Decode(c.value);
      if (!v.ok()) {
        bad.push_back({c.key, c.version});  // views of raw's keys, alive until the return
        out.undecodable.push_back(c.key);
        continue;
      }
      out.writes.push_back({c.key, std::move(*v), c.version});
    }
    if (!bad.empty()) store_->Complete(deadline, bad).IgnoreError();
    return out;
  }
  absl::Status Complete(Deadline deadline, std::span<const Claimed> writes) override {
    return store_->Complete(deadline, Settles(writes));
  }
  absl::Status Release(Deadline deadline, std::span<const Claimed> writes) override {
    return store_->Release(deadline, Settles(writes));
  }

  WriteBehindStore& store() { return *store_; }

 private:
  WriteBehindLog(CacheTier<T, C>& tier, std::unique_ptr<WriteBehindStore> store)
      : tier_(tier), store_(std::move(store)) {}
  static std::vector<WriteBehindStore::Settle> Settles(std::span<const Claimed> writes) {
    std::vector<WriteBehindStore::Settle> out;
    out.reserve(writes.size());
    for (const Claimed& c : writes) out.push_back({c.key, c.version});
    return out;
  }

  CacheTier<T, C>& tier_;
  std::unique_ptr<WriteBehindStore> store_;
};

}  // namespace keel::redis
