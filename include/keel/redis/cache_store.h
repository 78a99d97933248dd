// keel/redis/cache_store.h: the Redis tier of a keel::cache::Cache<T>.
//
// Defines `keel::redis::CacheStore` (bytes under namespaced keys: GET, SET PX, DEL, MGET and a
// pipelined multi-set over keel's Redis client), `keel::redis::CacheStoreStats` and
// `keel::redis::CacheTier<T, Codec>` (a keel::cache::Tier<T> over a CacheStore: values go through
// a keel::cache::Codec<T>, keel/cache/codec.h; std::string passes through unchanged).
//
// - Keys are stored as `keel:cache:<name>:<key>`, so caches sharing a Redis never see each
//   other's entries. Keys and values are binary-safe and stored as given; a key longer than
//   max_key_bytes or a value longer than max_value_bytes is refused with INVALID_ARGUMENT
//   (never truncated).
// - Every call ends by the earlier of the caller's deadline and command_timeout from now, so a
//   paused or unreachable Redis costs a cache read at most command_timeout before the cache
//   falls through to its loader (fail open, counted in errors_total).
// - CacheTier stores one byte before the codec's bytes: 'v' for a value, 'n' for a negative
//   entry (a cached NOT_FOUND). It keeps no entry metadata (write time, load time), so
//   refresh-ahead and XFetch act on the local tier above it.
//
// Thread safety: thread-safe. REQUIRES: the Client outlives the store.
//
//   auto redis_tier = keel::redis::CacheTier<std::string>::Create(
//       {.name = "profiles", .max_value_bytes = 64 * 1024}, *client).value();
//   tiers.push_back(std::move(redis_tier));
//   auto cache = keel::cache::Cache<std::string>::Create({.name = "profiles"}, std::move(tiers));
#pragma once

#include <atomic>
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
#include "keel/cache/tier.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/internal/strings.h"
#include "keel/metrics.h"
#include "keel/redis/client.h"

namespace keel::redis {

struct CacheStoreStats {
  uint64_t hits_total = 0;     // keys read that were there
  uint64_t misses_total = 0;   // keys read that were not
  uint64_t errors_total = 0;   // calls that failed (Redis down, paused, deadline)
  uint64_t sets_total = 0;     // values written
  uint64_t deletes_total = 0;  // DEL calls that succeeded
  uint64_t refused_total = 0;  // calls refused before any I/O (INVALID_ARGUMENT)
};

class CacheStore {
 public:
  struct Options {
    // Names the store: part of every Redis key (`keel:cache:<name>:<key>`), of errors
    // (`redis cache store "<name>": ...`) and the `name` label of metrics. Required, 1 to 128
    // bytes.
    std::string name;
    // Longest key accepted, in bytes (the caller's key, before the namespace). Must be >= 1.
    // Default: 1024.
    size_t max_key_bytes = 1024;
    // Longest value accepted, in bytes. Must be >= 1. Default: 1 MiB (Redis itself takes up to
    // 512 MiB, but a large value on a shared connection delays every other caller).
    size_t max_value_bytes = size_t{1} << 20;
    // The longest any call waits for Redis, whatever the caller's deadline: what a paused Redis
    // costs a cache read before it falls through to the loader. Must be > 0. Default: 100 ms.
    Duration command_timeout = std::chrono::milliseconds(100);
  };
  // One write of SetMany.
  struct Write {
    std::string_view key;
    std::string_view value;
    Duration ttl;  // > 0; stored in whole milliseconds, rounded up
  };

  // Validates `options` (INVALID_ARGUMENT naming the field); no I/O. `client`, `clock` and
  // `metrics` must outlive the store. With `metrics`, registers {name=<name>, tier="redis"}:
  // keel_cache_requests_total{result=hit|miss|error}, keel_cache_puts_total,
  // keel_cache_refused_total.
  static absl::StatusOr<std::unique_ptr<CacheStore>> Create(Options options, Client& client,
                                                            Clock& clock = SteadyClock(),
                                                            MetricsRegistry* metrics = nullptr);

  // GET. nullopt when the key is not there. Errors: INVALID_ARGUMENT (key too long), UNAVAILABLE
  // / DEADLINE_EXCEEDED from Redis (the client's messages, after this store's prefix).
  absl::StatusOr<std::optional<std::string>> Get(Deadline deadline, std::string_view key);
  // MGET: one answer per key, in order, in one round trip. REQUIRES: not on Redis Cluster (the
  // keys are spread over slots). Errors: as Get.
  absl::StatusOr<std::vector<std::optional<std::string>>> GetMany(
      Deadline deadline, std::span<const std::string_view> keys);
  // SET key value PX ttl. Errors: INVALID_ARGUMENT (key or value too long, ttl <= 0); as Get.
  absl::Status Set(Deadline deadline, std::string_view key, std::string_view value, Duration ttl);
  // Every write as SET PX, pipelined in one round trip. Nothing is sent when a write is refused.
  // Errors: as Set; the first failed write's error.
  absl::Status SetMany(Deadline deadline, std::span<const Write> writes);
  // DEL. OK when the key was not there. Errors: as Get.
  absl::Status Erase(Deadline deadline, std::string_view key);

  // The Redis key that holds `key`.
  std::string RedisKey(std::string_view key) const;
  CacheStoreStats Stats() const;
  const Options& options() const { return options_; }

 private:
  CacheStore(Options options, Client& client, Clock& clock);
  Deadline Bound(Deadline deadline) const;
  absl::Status CheckKey(std::string_view key);
  absl::Status CheckWrite(std::string_view key, std::string_view value, Duration ttl);
  absl::Status Failed(const absl::Status& status);
  absl::Status RegisterMetrics(MetricsRegistry& metrics);

  const Options options_;
  const std::string prefix_;      // `keel:cache:<name>:`
  const std::string error_name_;  // `redis cache store "<name>": `
  Client& client_;
  Clock& clock_;
  std::atomic<uint64_t> hits_{0}, misses_{0}, errors_{0}, sets_{0}, deletes_{0}, refused_{0};
  std::vector<MetricsRegistry::Registration> registrations_;  // last: unregistered first
};

// A keel::cache::Tier<T> on Redis: a CacheStore with T encoded by `C` (see keel/cache/codec.h).
template <typename T, typename C = cache::Codec<T>>
class CacheTier final : public cache::Tier<T> {
 public:
  using typename cache::Tier<T>::Hit;
  using typename cache::Tier<T>::Write;

  // As CacheStore::Create.
  static absl::StatusOr<std::unique_ptr<CacheTier>> Create(CacheStore::Options options,
                                                           Client& client,
                                                           Clock& clock = SteadyClock(),
                                                           MetricsRegistry* metrics = nullptr) {
    absl::StatusOr<std::unique_ptr<CacheStore>> store =
        CacheStore::Create(std::move(options), client, clock, metrics);
    if (!store.ok()) return store.status();
    return std::unique_ptr<CacheTier>(new CacheTier(std::move(*store)));
  }

  std::string_view kind() const override { return "redis"; }

  // A stored entry that is neither framed nor decodable is INTERNAL: the cache counts a tier
  // error, loads the key again and overwrites it.
  absl::StatusOr<std::optional<Hit>> Get(Deadline deadline, std::string_view key) override {
    absl::StatusOr<std::optional<std::string>> raw = store_->Get(deadline, key);
    if (!raw.ok()) return raw.status();
    if (!raw->has_value()) return std::optional<Hit>();
    const std::string_view bytes = **raw;
    if (bytes == kNegative) return std::optional<Hit>(Hit{std::nullopt, std::nullopt});
    if (bytes.empty() || bytes.front() != kValue) {
      return absl::InternalError(keel::internal::StrCat(
          "redis cache store \"", store_->options().name, "\": an entry keel did not write"));
    }
    absl::StatusOr<T> value = C::Decode(bytes.substr(1));
    if (!value.ok()) {
      return absl::InternalError(
          keel::internal::StrCat("redis cache store \"", store_->options().name,
                                 "\": undecodable entry: ", value.status().message()));
    }
    return std::optional<Hit>(Hit{std::move(*value), std::nullopt});
  }

  // MGET: one round trip. An entry that does not decode is answered as a miss (the caller loads
  // the key and overwrites it).
  absl::StatusOr<std::vector<std::optional<Hit>>> GetMany(
      Deadline deadline, std::span<const std::string_view> keys) override {
    absl::StatusOr<std::vector<std::optional<std::string>>> raw = store_->GetMany(deadline, keys);
    if (!raw.ok()) return raw.status();
    std::vector<std::optional<Hit>> out;
    out.reserve(raw->size());
    for (const std::optional<std::string>& bytes : *raw) {
      out.push_back(Parse(bytes));
    }
    return out;
  }

  absl::Status Set(Deadline deadline, std::string_view key, const std::optional<T>& value,
                   Duration ttl, Duration) override {
    return store_->Set(deadline, key, Frame(value), ttl);
  }

  absl::Status SetMany(Deadline deadline, std::span<const Write> writes) override {
    std::vector<std::string> frames;
    frames.reserve(writes.size());
    std::vector<CacheStore::Write> raw;
    raw.reserve(writes.size());
    for (const Write& w : writes) {
      frames.push_back(Frame(*w.value));
      raw.push_back({w.key, frames.back(), w.ttl});
    }
    return store_->SetMany(deadline, raw);
  }

  absl::Status Erase(Deadline deadline, std::string_view key) override {
    return store_->Erase(deadline, key);
  }

  CacheStore& store() { return *store_; }

  // The bytes this tier stores for `value` (nullopt: a negative entry).
  static std::string Frame(const std::optional<T>& value) {
    if (!value) return std::string(kNegative);
    std::string bytes = C::Encode(*value);
    bytes.insert(bytes.begin(), kValue);
    return bytes;
  }

 private:
  static constexpr char kValue = 'v';
  static constexpr std::string_view kNegative = "n";

  explicit CacheTier(std::unique_ptr<CacheStore> store) : store_(std::move(store)) {}

  static std::optional<Hit> Parse(const std::optional<std::string>& raw) {
    if (!raw) return std::nullopt;
    const std::string_view bytes = *raw;
    if (bytes == kNegative) return Hit{std::nullopt, std::nullopt};
    if (bytes.empty() || bytes.front() != kValue) return std::nullopt;
    absl::StatusOr<T> value = C::Decode(bytes.substr(1));
    if (!value.ok()) return std::nullopt;
    return Hit{std::move(*value), std::nullopt};
  }

  std::unique_ptr<CacheStore> store_;
};

}  // namespace keel::redis
