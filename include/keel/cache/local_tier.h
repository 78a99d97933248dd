// keel/cache/local_tier.h: the in-process tier of a `keel::cache::Cache<T>`.
//
// Defines `keel::cache::LocalTier<T>`: a `keel::cache::Tier<T>` over a
// `LocalStore<std::optional<T>>` (keel/cache/local_store.h: sharded, W-TinyLFU or LRU, per-entry
// TTL), where nullopt is a negative entry. It keeps each entry's metadata, so refresh-ahead and
// XFetch work on its hits. It does no I/O: its Get never fails, and its Set fails only for an
// entry the store refuses (INVALID_ARGUMENT: a weight above max_weight / shards).
//
// Thread safety: thread-safe.
//
//   auto local = keel::cache::LocalTier<Profile>::Create({.name = "profiles",
//                                                         .max_entries = 100'000}).value();
//   tiers.push_back(std::move(local));
#pragma once

#include <memory>
#include <optional>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"
#include "keel/cache/local_store.h"
#include "keel/cache/tier.h"
#include "keel/clock.h"
#include "keel/metrics.h"

namespace keel::cache {

template <typename T>
class LocalTier final : public Tier<T> {
 public:
  using Store = LocalStore<std::optional<T>>;
  using typename Tier<T>::Hit;

  // As LocalStore::Create (the store's options, errors and metrics, labelled tier="local").
  static absl::StatusOr<std::unique_ptr<LocalTier>> Create(typename Store::Options options,
                                                           Clock& clock = SteadyClock(),
                                                           MetricsRegistry* metrics = nullptr) {
    absl::StatusOr<std::unique_ptr<Store>> store =
        Store::Create(std::move(options), clock, metrics);
    if (!store.ok()) return store.status();
    return std::unique_ptr<LocalTier>(new LocalTier(std::move(*store)));
  }

  std::string_view kind() const override { return "local"; }

  absl::StatusOr<std::optional<Hit>> Get(Deadline, std::string_view key) override {
    std::optional<typename Store::Found> found = store_->GetEntry(key);
    if (!found) return std::optional<Hit>();
    return std::optional<Hit>(Hit{std::move(found->value), found->metadata});
  }

  absl::Status Set(Deadline, std::string_view key, const std::optional<T>& value, Duration ttl,
                   Duration load_time) override {
    return store_->Put(key, value, {.ttl = ttl, .load_time = load_time});
  }

  absl::Status Erase(Deadline, std::string_view key) override {
    store_->Erase(key);
    return absl::OkStatus();
  }

  void Clear() override { store_->Clear(); }

  // The store underneath (its Stats, PurgeExpired).
  Store& store() { return *store_; }

 private:
  explicit LocalTier(std::unique_ptr<Store> store) : store_(std::move(store)) {}
  std::unique_ptr<Store> store_;
};

}  // namespace keel::cache
