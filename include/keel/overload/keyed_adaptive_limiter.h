// keel/overload/keyed_adaptive_limiter.h: one adaptive concurrency limit per key (per
// dependency, per tenant), with bounded memory.
//
// Defines `keel::overload::KeyedAdaptiveLimiter`, its `Permit` and `KeyedAdaptiveLimiterStats`.
// Each key gets its own AdaptiveLimiter (options from Options::limiter, algorithm from the
// factory), created on first use, so one slow tenant or shard learns a small limit without
// shrinking the others'.
//
// Bounded memory, like limit::Keyed: keys hash to independently locked shards holding at most
// max_keys / shards keys each. A key whose limiter has no permit out and no waiter is idle; idle
// keys untouched for idle_ttl are dropped by a pass over their shard that runs at most every
// idle_ttl / 2 (so within 1.5 * idle_ttl), and a new key arriving at a full shard drops the
// shard's least recently used idle key (counted in evicted_capacity). A key in use is never
// dropped (its permits count against its limit); when every key of the shard is in use, a new key
// is refused with RESOURCE_EXHAUSTED (refused_capacity). A dropped key that comes back starts
// from the algorithm's initial limit: keep max_keys above the keys active within idle_ttl.
//
// Thread safety: thread-safe. A Permit may be recorded on any thread; it keeps its key's
// limiter alive, so a permit outliving an eviction stays valid. REQUIRES: the
// KeyedAdaptiveLimiter outlives its permits.
//
//   auto per_tenant = keel::overload::KeyedAdaptiveLimiter::Create(
//       {.name = "tenants", .max_keys = 10'000},
//       [] { return keel::overload::GradientLimit::Create({}); }).value();
//   auto permit = per_tenant->TryAcquire(tenant_id);
//   if (!permit.ok()) return permit.status();
//   ... permit->OnSuccess();
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/metrics.h"
#include "keel/overload/adaptive_limiter.h"
#include "keel/sync.h"

namespace keel::overload {

struct KeyedAdaptiveLimiterStats {
  size_t keys = 0;                      // keys held now
  uint64_t evicted_idle_total = 0;      // dropped after idle_ttl without use
  uint64_t evicted_capacity_total = 0;  // dropped to make room for a new key
  uint64_t refused_capacity_total = 0;  // new keys refused: every key of the shard was in use
};

class KeyedAdaptiveLimiter {
 public:
  struct Options {
    // Names the limiter in errors and metrics labels; a key's limiter is named "<name>/<key>".
    // Default: "keyed_adaptive_limiter".
    std::string name = "keyed_adaptive_limiter";
    // Options of every key's AdaptiveLimiter (its name and on_limit_change listener are set per
    // key: the name as above, the listener as Options::on_limit_change). Default: defaults.
    AdaptiveLimiter::Options limiter;
    // Hard cap on keys held. Memory per key: the key, an AdaptiveLimiter (a few hundred bytes)
    // and its algorithm (Vegas, Gradient2, AIMD: under 200 bytes; Envoy's gradient reserves
    // 8 bytes x max_samples_per_window, 8 KiB by default). Must be >= shards. Default: 10'000.
    size_t max_keys = 10'000;
    // Drop an idle key after this long without use. Must be > 0. Default: 10 minutes.
    Duration idle_ttl = std::chrono::minutes(10);
    // Independently locked shards. Must be >= 1. Default: 16.
    size_t shards = 16;
    // Called with (key, old, new) when a key's limit changes, never under a lock. Default: none.
    std::function<void(std::string_view key, int old_limit, int new_limit)> on_limit_change;
  };

  // Makes the algorithm of a new key.
  using AlgorithmFactory = std::function<absl::StatusOr<std::unique_ptr<LimitAlgorithm>>()>;

  class Permit {
   public:
    Permit(Permit&&) noexcept = default;
    Permit& operator=(Permit&& other) noexcept {
      if (this != &other) {
        inner_ = std::move(other.inner_);  // ignores ours first (AdaptiveLimiter::Permit)
        entry_ = std::move(other.entry_);
      }
      return *this;
    }
    ~Permit() = default;  // inner_ is destroyed (ignored) before entry_ lets the limiter go

    // As AdaptiveLimiter::Permit's; a recorded permit no longer keeps its key in use.
    void OnSuccess() { Record(AdaptiveLimiter::Outcome::kSuccess); }
    void OnDropped() { Record(AdaptiveLimiter::Outcome::kDropped); }
    void OnIgnore() { Record(AdaptiveLimiter::Outcome::kIgnored); }
    void Record(AdaptiveLimiter::Outcome outcome) {
      if (inner_) inner_->Record(outcome);
      entry_.reset();
    }
    bool held() const { return inner_ && inner_->held(); }

   private:
    friend class KeyedAdaptiveLimiter;
    Permit(std::shared_ptr<void> entry, AdaptiveLimiter::Permit inner)
        : entry_(std::move(entry)), inner_(std::move(inner)) {}
    std::shared_ptr<void> entry_;  // keeps the key's limiter alive; declared first: freed last
    std::optional<AdaptiveLimiter::Permit> inner_;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field) and calls `factory` once to check it
  // (its error is returned). `clock` and `metrics` must outlive the limiter. Metrics (label
  // name=<name>): keel_adaptive_limit_keys (gauge), keel_adaptive_limit_key_evictions_total
  // {reason=idle|capacity}, keel_adaptive_limit_key_refused_total. Per-key limiters register no
  // series of their own (one series per key would be unbounded); use Stats(key).
  static absl::StatusOr<std::unique_ptr<KeyedAdaptiveLimiter>> Create(
      Options options, AlgorithmFactory factory, Clock& clock = SteadyClock(),
      MetricsRegistry* metrics = nullptr);

  // AdaptiveLimiter::TryAcquire on `key`'s limiter.
  // Errors: as AdaptiveLimiter::TryAcquire; INVALID_ARGUMENT for an empty key or one over 1 KiB;
  // RESOURCE_EXHAUSTED `keyed adaptive limiter "name": no room for a new key (...)` when its shard
  // is full of keys in use; the factory's error for a new key.
  absl::StatusOr<Permit> TryAcquire(std::string_view key,
                                    Criticality criticality = Criticality::kCritical);
  // AdaptiveLimiter::Acquire on `key`'s limiter (waits in its queue, if Options::limiter has one).
  // Errors: as TryAcquire and AdaptiveLimiter::Acquire.
  absl::StatusOr<Permit> Acquire(Deadline deadline, std::string_view key,
                                 Criticality criticality = Criticality::kCritical);

  // `key`'s limiter's Stats, if the key is held.
  std::optional<AdaptiveLimiterStats> Stats(std::string_view key) const;
  KeyedAdaptiveLimiterStats Stats() const;

 private:
  struct Entry {
    std::unique_ptr<AdaptiveLimiter> limiter;
    TimePoint last_used;
  };
  struct alignas(64) Shard {
    mutable Mutex mu;
    absl::flat_hash_map<std::string, std::shared_ptr<Entry>> keys ABSL_GUARDED_BY(mu);
    TimePoint next_sweep ABSL_GUARDED_BY(mu) = TimePoint::min();
    uint64_t evicted_idle ABSL_GUARDED_BY(mu) = 0;
    uint64_t evicted_capacity ABSL_GUARDED_BY(mu) = 0;
    uint64_t refused ABSL_GUARDED_BY(mu) = 0;
  };

  KeyedAdaptiveLimiter(Options options, AlgorithmFactory factory, Clock& clock);
  absl::Status RegisterMetrics(MetricsRegistry& metrics);
  Shard& ShardOf(std::string_view key) const;
  // The key's entry, created if new; an error when there is no room or the factory fails.
  absl::StatusOr<std::shared_ptr<Entry>> Find(std::string_view key);
  static bool Idle(const std::shared_ptr<Entry>& e) { return e.use_count() == 1; }
  void Sweep(Shard& shard, TimePoint now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  bool MakeRoom(Shard& shard) ABSL_EXCLUSIVE_LOCKS_REQUIRED(shard.mu);
  static Permit Wrap(std::shared_ptr<Entry> entry, AdaptiveLimiter::Permit inner) {
    return Permit(std::move(entry), std::move(inner));
  }

  const Options options_;
  const AlgorithmFactory factory_;
  Clock& clock_;
  const size_t per_shard_;
  mutable std::vector<Shard> shards_;
  std::vector<MetricsRegistry::Registration> registrations_;
};

}  // namespace keel::overload
