// keel/limit/keyed_concurrency_limiter.h: at most `max` in flight per key ("5 concurrent chat
// messages per user"), in one process, with memory bounded by the keys that hold permits.
//
// Defines `keel::limit::KeyedConcurrencyLimiter`, its `Permit` and `KeyedConcurrencyStats`.
//
// Semantics (exact): TryAcquire(key) hands out a Permit while fewer than `max` are held for that
// key, and nothing otherwise (rejection is a value: an empty optional). It never waits. A key's
// entry exists only while it holds permits: the last permit released removes it, so there is
// nothing to expire and idle keys cost no memory. At most `max_keys` keys hold permits at once;
// a new key beyond that is refused (counted in rejected_capacity) rather than growing memory,
// since every held entry is in use and evicting one would break its permits' accounting. The
// Redis counterpart for limits shared across processes is keel::redis::ConcurrencyLimiter, with
// the same TryAcquire shape.
//
// Keys longer than kMaxKeyBytes (1 KiB) are rejected with INVALID_ARGUMENT.
//
// Thread safety: thread-safe (keys hash to independently locked shards). A Permit is not itself
// thread-safe (move it, do not share it) but may be released on any thread. REQUIRES: the
// limiter outlives its permits.
//
//   auto chats = keel::limit::KeyedConcurrencyLimiter::Create({.max = 5}).value();
//   auto permit = chats->TryAcquire(user_id);
//   if (!permit.ok()) return BadRequest(permit.status());
//   if (!*permit) return TooManyRequests();
//   Stream(reply);   // the slot is freed when `permit` goes out of scope
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/node_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/metrics.h"
#include "keel/sync.h"

namespace keel::limit {

struct KeyedConcurrencyStats {
  size_t keys = 0;                       // keys holding permits now
  int64_t in_flight = 0;                 // permits held now, over all keys
  uint64_t acquired_total = 0;           // permits handed out
  uint64_t rejected_total = 0;           // refused: the key already held `max`
  uint64_t rejected_capacity_total = 0;  // refused: a new key while max_keys keys held permits
};

class KeyedConcurrencyLimiter {
 public:
  struct Options {
    // Names the limiter in errors and metrics labels. Default: "keyed_concurrency".
    std::string name = "keyed_concurrency";
    // The most permits held at once per key. Required: must be >= 1.
    int64_t max = 0;
    // The most keys holding permits at once (memory ~ max_keys * (key + ~80 bytes)). Size it to
    // the distinct keys you expect in flight together, with headroom: a key beyond it is
    // refused. Must be >= shards. Default: 100'000.
    size_t max_keys = 100'000;
    // Independently locked shards. Must be >= 1. Default: 16.
    size_t shards = 16;
  };

  class Permit {
   public:
    Permit(Permit&& other) noexcept
        : owner_(std::exchange(other.owner_, nullptr)), entry_(other.entry_) {}
    Permit& operator=(Permit&& other) noexcept {
      if (this != &other) {
        Release();
        owner_ = std::exchange(other.owner_, nullptr);
        entry_ = other.entry_;
      }
      return *this;
    }
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;
    ~Permit() { Release(); }

    // Frees the slot now; later calls (and the destructor) do nothing.
    void Release();
    // Whether this permit still holds a slot.
    bool held() const { return owner_ != nullptr; }

   private:
    friend class KeyedConcurrencyLimiter;
    using Entry = std::pair<const std::string, int64_t>;
    Permit(KeyedConcurrencyLimiter* owner, Entry* entry) : owner_(owner), entry_(entry) {}
    KeyedConcurrencyLimiter* owner_;
    Entry* entry_;  // the key's node: stable while it holds permits
  };

  // Validates `options` (INVALID_ARGUMENT naming the field). Returned by pointer: permits point
  // at the limiter, so it must not move. With `metrics` (which must outlive the limiter),
  // registers the series listed at RegisterMetrics.
  static absl::StatusOr<std::unique_ptr<KeyedConcurrencyLimiter>> Create(
      Options options, MetricsRegistry* metrics = nullptr);

  // A permit if fewer than `max` are held for `key`, else an empty optional (also when `key` is
  // new and max_keys keys already hold permits). Never waits.
  // Errors: INVALID_ARGUMENT for a key over kMaxKeyBytes.
  absl::StatusOr<std::optional<Permit>> TryAcquire(std::string_view key);

  // Permits held for `key` right now (a snapshot).
  int64_t InFlight(std::string_view key) const;

  KeyedConcurrencyStats Stats() const;

  // Registers, labelled {name=options.name}: keel_concurrency_limit_keys and
  // keel_concurrency_limit_in_flight (gauges), keel_concurrency_limit_acquired_total and
  // keel_concurrency_limit_rejected_total{reason=max|capacity}. Called by Create when given a
  // registry. Errors: as MetricsRegistry's.
  absl::Status RegisterMetrics(MetricsRegistry& metrics);

 private:
  struct alignas(64) Shard {
    mutable Mutex mu;
    // node_hash_map: a permit points at its key's node, which must not move on rehash.
    absl::node_hash_map<std::string, int64_t> in_flight ABSL_GUARDED_BY(mu);
    int64_t held ABSL_GUARDED_BY(mu) = 0;
    uint64_t acquired ABSL_GUARDED_BY(mu) = 0;
    uint64_t rejected ABSL_GUARDED_BY(mu) = 0;
    uint64_t rejected_capacity ABSL_GUARDED_BY(mu) = 0;
  };

  explicit KeyedConcurrencyLimiter(Options options);
  Shard& ShardOf(std::string_view key, size_t* hash) const;
  void Release(Permit::Entry* entry);

  const Options options_;
  const size_t per_shard_;
  mutable std::vector<Shard> shards_;
  std::vector<MetricsRegistry::Registration> registrations_;
};

}  // namespace keel::limit
