// keel/redis/near_cache.h: a local cache tier that Redis itself keeps fresh (server-assisted
// client-side caching, CLIENT TRACKING, in broadcast or per-key mode).
//
// Defines `keel::redis::NearCacheTier<T>` (a keel::cache::Tier<T>: a LocalTier whose entries
// Redis invalidates), `keel::redis::NearCacheMode` and `keel::redis::NearCacheStats`.
//
// The tier owns a keel::redis::Subscriber connection subscribed to `__redis__:invalidate`
// (RESP2), to which Redis sends the names of invalidated keys. Two modes (Options::mode):
//
//   - kBroadcast (default): on every (re)connect the subscriber runs
//     `CLIENT TRACKING on REDIRECT <its own id> BCAST PREFIX keel:cache:<name>:`. Every write by
//     any client to a key of the cache's Redis tier (SET, DEL, expiry, eviction) sends this
//     process the key, cached here or not. Works with any Client for the Redis tier. Redis keeps
//     one prefix entry per tracking connection, no memory per key.
//   - kPerKey (Redis's default mode): Redis remembers which keys each tracking connection read
//     and sends only those keys' invalidations, once each, until they are read again. Tracking
//     must be on the connection that does the reads, so the tier makes its own Client (client(),
//     one multiplexed connection, whose Options::connection_hooks run
//     `CLIENT TRACKING on REDIRECT <the subscriber's id>` on every new connection): build the
//     cache's Redis tier on that client. Redis keeps an entry per key read (the key and the ids
//     of the connections that read it) in its tracking table, bounded by the server's
//     `tracking-table-max-keys` (beyond it Redis evicts entries by invalidating them early).
//     When the subscriber reconnects (a new id) the tier's client is reconnected to point at it.
//
// Either way the tier holds nothing while tracking is not fully up, and is cleared whenever it
// comes up again, goes down, or (kPerKey) the reading connection is lost: invalidations may have
// been missed meanwhile, so stale data never survives a reconnect. FLUSHALL/FLUSHDB clear it.
//
// Races closed: an invalidation that arrives while a read is filling the tier (the value read
// from Redis or loaded may be older than the write that caused the invalidation) wins: each fill
// is checked against a counter of invalidations of its key (1024 stripes) taken when the tier was
// read, after the store; a fill with no read before it on the same thread (a Put, a background
// reload) is not stored locally at all: the Redis write it comes with invalidates it anyway, and
// the next read fills the tier from Redis.
//
// Thread safety: thread-safe; the invalidations run on the subscriber's thread.
//
//   auto near = keel::redis::NearCacheTier<std::string>::Create(
//       {.name = "profiles", .local = {.max_entries = 100'000}},
//       keel::redis::Options::FromUrl(url).value()).value();
//   tiers.push_back(std::move(near));                               // first: the local tier
//   tiers.push_back(keel::redis::CacheTier<std::string>::Create({.name = "profiles"}, *client)
//                       .value());
//
//   // Per-key mode: the Redis tier reads through the near tier's own client.
//   auto near = keel::redis::NearCacheTier<std::string>::Create(
//       {.name = "profiles", .mode = keel::redis::NearCacheMode::kPerKey}, redis_options).value();
//   std::shared_ptr<keel::redis::Client> reads = near->client();   // keep it past the tiers
//   tiers.push_back(std::move(near));
//   tiers.push_back(keel::redis::CacheTier<std::string>::Create({.name = "profiles"}, *reads)
//                       .value());
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "keel/cache/local_tier.h"
#include "keel/cache/tier.h"
#include "keel/clock.h"
#include "keel/metrics.h"
#include "keel/redis/client.h"
#include "keel/redis/options.h"
#include "keel/redis/subscriber.h"
#include "keel/sync.h"

namespace keel::redis {

// How Redis tracks what a NearCacheTier holds (see the banner).
enum class NearCacheMode {
  kBroadcast,  // every write under the cache's prefix is sent to every tier
  kPerKey,     // only writes to keys this tier's client read
};

struct NearCacheStats {
  // Tracking is up: the invalidation connection is subscribed (and, kPerKey, the reading
  // connection is tracked with its redirect pointing there)
  bool tracking = false;
  uint64_t invalidations_total = 0;  // keys Redis invalidated (each dropped locally)
  uint64_t clears_total = 0;         // local clears: (re)connects, drops, FLUSHALL
  uint64_t fills_skipped_total = 0;  // fills not kept: raced with an invalidation, or no read
  uint64_t repoints_total = 0;       // kPerKey: reading connections reconnected to a new redirect
};

namespace internal {

// What NearCacheTier<T> does not need T for: the subscriber, the stripes, the counters.
class NearCacheTracker {
 public:
  struct Targets {
    std::function<void(std::string_view key)> erase;
    std::function<void()> clear;
  };
  // A read's view of the invalidations of one key, checked by the fill that follows it.
  struct Ticket {
    const NearCacheTracker* tracker = nullptr;
    uint64_t hash = 0;
    uint64_t epoch = 0;
    uint64_t stripe = 0;
  };

  static absl::StatusOr<std::unique_ptr<NearCacheTracker>> Create(const std::string& name,
                                                                  NearCacheMode mode, Options redis,
                                                                  Clock& clock,
                                                                  MetricsRegistry* metrics);
  ~NearCacheTracker();
  NearCacheTracker(const NearCacheTracker&) = delete;
  NearCacheTracker& operator=(const NearCacheTracker&) = delete;

  // Wires the local store in; starts tracking. Called once, right after Create.
  absl::Status Start(Targets targets);
  // Recorded by a read of `key` on this thread.
  void NoteRead(std::string_view key) const;
  // After a fill of `key` was stored: false when it must be dropped again (an invalidation came
  // since the read, or there was no read of this key on this thread before it).
  bool FillStands(std::string_view key) const;
  bool tracking() const { return tracking_.load(std::memory_order_acquire); }
  NearCacheStats Stats() const;
  // kPerKey: the client whose reads are tracked. Null in kBroadcast.
  const std::shared_ptr<Client>& client() const { return client_; }

 private:
  static constexpr size_t kStripes = 1024;
  // What the reading client's hooks reach the tracker through: they may outlive it (the user
  // holds the client), so the tracker's destructor detaches it and waits for hooks running.
  struct Link {
    Mutex mu;
    NearCacheTracker* tracker ABSL_GUARDED_BY(mu) = nullptr;
    int running ABSL_GUARDED_BY(mu) = 0;
    CondVar idle;  // running fell to 0
  };
  class LinkUse;

  NearCacheTracker(std::string name, NearCacheMode mode, Options redis, Clock& clock);
  absl::Status OnConnect(Connection& connection, Deadline deadline);
  void OnSubscriberDown();
  // kPerKey: the reading client's hooks.
  absl::Status OnReaderConnect(Connection& connection, Deadline deadline);
  void OnReaderLost();
  // Recomputes tracking_ from the two ids; clears the tier when it changes.
  void UpdateTracking() ABSL_LOCKS_EXCLUDED(mu_);
  void OnInvalidate(const Message& message);
  void ClearAll();
  uint64_t Hash(std::string_view key) const;
  absl::Status RegisterMetrics(MetricsRegistry& metrics);

  const std::string name_;
  const NearCacheMode mode_;
  const std::string prefix_;  // keel:cache:<name>:
  const Options redis_;
  Clock& clock_;
  Targets targets_;
  std::unique_ptr<std::atomic<uint64_t>[]> stripes_;
  std::atomic<uint64_t> epoch_{0};
  std::atomic<bool> tracking_{false};
  std::atomic<uint64_t> invalidations_{0}, clears_{0};
  mutable std::atomic<uint64_t> skipped_{0};
  std::atomic<uint64_t> repoints_{0};
  // The subscriber's CLIENT ID while it is subscribed (0: down), and (kPerKey) the redirect the
  // reading connection was tracked with (0: none, or the connection is down).
  mutable Mutex mu_;
  int64_t subscriber_id_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t reader_redirect_ ABSL_GUARDED_BY(mu_) = 0;
  bool reader_up_ ABSL_GUARDED_BY(mu_) = false;  // kPerKey: a reading connection is set up
  std::shared_ptr<Link> link_;
  std::shared_ptr<Client> client_;
  std::unique_ptr<Subscriber> subscriber_;
  std::vector<MetricsRegistry::Registration> registrations_;
};

}  // namespace internal

template <typename T>
class NearCacheTier final : public cache::Tier<T> {
 public:
  using typename cache::Tier<T>::Hit;
  struct Options {
    // The name of the cache's Redis tier (its CacheStore::Options::name): the tier tracks the
    // prefix `keel:cache:<name>:`. Also names the tracker in errors and metrics. Required.
    std::string name;
    // The local store's options (capacity, eviction, shards). Default: LocalStore's defaults,
    // named after `name`.
    typename cache::LocalTier<T>::Store::Options local = {};
    // Broadcast (any client may serve the Redis tier) or per key (the Redis tier must read
    // through client()); the banner compares them. Default: kBroadcast.
    NearCacheMode mode = NearCacheMode::kBroadcast;
  };

  // `redis` addresses the Redis of the cache's Redis tier (the address, credentials, db and
  // timeouts; in kPerKey mode also the rest of the reading client's options, with one
  // multiplexed connection and the tracking hooks). No I/O: tracking starts in the background;
  // until it does, the tier keeps nothing. With `metrics`, the local store's series
  // (tier="local") and keel_cache_invalidations_total, keel_cache_near_clears_total,
  // keel_cache_near_fills_skipped_total and the gauge keel_cache_near_tracking, {name=<name>}.
  // Errors: INVALID_ARGUMENT naming the field.
  static absl::StatusOr<std::unique_ptr<NearCacheTier>> Create(Options options,
                                                               redis::Options redis,
                                                               Clock& clock = SteadyClock(),
                                                               MetricsRegistry* metrics = nullptr) {
    if (options.local.name == "local") options.local.name = options.name;
    absl::StatusOr<std::unique_ptr<cache::LocalTier<T>>> local =
        cache::LocalTier<T>::Create(std::move(options.local), clock, metrics);
    if (!local.ok()) return local.status();
    absl::StatusOr<std::unique_ptr<internal::NearCacheTracker>> tracker =
        internal::NearCacheTracker::Create(options.name, options.mode, std::move(redis), clock,
                                           metrics);
    if (!tracker.ok()) return tracker.status();
    std::unique_ptr<NearCacheTier> tier(new NearCacheTier(std::move(*local), std::move(*tracker)));
    cache::LocalTier<T>* l = tier->local_.get();
    absl::Status started =
        tier->tracker_->Start({.erase = [l](std::string_view key) { l->store().Erase(key); },
                               .clear = [l] { l->store().Clear(); }});
    if (!started.ok()) return started;
    return tier;
  }

  std::string_view kind() const override { return "local"; }

  absl::StatusOr<std::optional<Hit>> Get(Deadline deadline, std::string_view key) override {
    tracker_->NoteRead(key);
    if (!tracker_->tracking()) return std::optional<Hit>();
    return local_->Get(deadline, key);
  }

  absl::Status Set(Deadline deadline, std::string_view key, const std::optional<T>& value,
                   Duration ttl, Duration load_time) override {
    if (!tracker_->tracking()) return absl::OkStatus();
    absl::Status s = local_->Set(deadline, key, value, ttl, load_time);
    if (s.ok() && !tracker_->FillStands(key)) local_->store().Erase(key);
    return s;
  }

  absl::Status Erase(Deadline deadline, std::string_view key) override {
    return local_->Erase(deadline, key);
  }
  void Clear() override { local_->Clear(); }

  NearCacheStats Stats() const { return tracker_->Stats(); }
  // kPerKey: the client the cache's Redis tier must read through (only its reads are tracked).
  // Shared: keep it for as long as the tiers built on it. Null in kBroadcast.
  std::shared_ptr<Client> client() const { return tracker_->client(); }
  typename cache::LocalTier<T>::Store& store() { return local_->store(); }

 private:
  NearCacheTier(std::unique_ptr<cache::LocalTier<T>> local,
                std::unique_ptr<internal::NearCacheTracker> tracker)
      : local_(std::move(local)), tracker_(std::move(tracker)) {}
  std::unique_ptr<cache::LocalTier<T>> local_;
  // Last: its subscriber thread (which erases from local_) stops first.
  std::unique_ptr<internal::NearCacheTracker> tracker_;
};

}  // namespace keel::redis
