#include "keel/limit/keyed_concurrency_limiter.h"

#include "absl/hash/hash.h"
#include "absl/strings/string_view.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "keel/limit/keyed.h"

namespace keel::limit {

using keel::internal::StrCat;

absl::StatusOr<std::unique_ptr<KeyedConcurrencyLimiter>> KeyedConcurrencyLimiter::Create(
    Options options, MetricsRegistry* metrics) {
  const keel::internal::OptionsOf of("keyed concurrency limiter", options.name);
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast(of, "max", options.max, 1));
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast(of, "shards", options.shards, 1));
  if (options.max_keys < options.shards) {
    return keel::internal::InvalidOption(of, "max_keys", StrCat(">= shards (", options.shards, ")"),
                                         options.max_keys);
  }
  std::unique_ptr<KeyedConcurrencyLimiter> limiter(new KeyedConcurrencyLimiter(std::move(options)));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(limiter->RegisterMetrics(*metrics));
  return limiter;
}

KeyedConcurrencyLimiter::KeyedConcurrencyLimiter(Options options)
    : options_(std::move(options)),
      per_shard_(options_.max_keys / options_.shards),
      shards_(options_.shards) {}

KeyedConcurrencyLimiter::Shard& KeyedConcurrencyLimiter::ShardOf(std::string_view key,
                                                                 size_t* hash) const {
  *hash = absl::Hash<absl::string_view>{}(absl::string_view(key.data(), key.size()));
  // Top bits pick the shard; the map probes with the low bits (as Keyed does).
  return shards_[static_cast<size_t>(static_cast<uint64_t>(*hash) >> 40) % shards_.size()];
}

absl::StatusOr<std::optional<KeyedConcurrencyLimiter::Permit>> KeyedConcurrencyLimiter::TryAcquire(
    std::string_view key) {
  KEEL_RETURN_IF_ERROR(internal::ValidateKeyed(options_.name, key, 0));
  size_t hash;
  Shard& shard = ShardOf(key, &hash);
  const absl::string_view k(key.data(), key.size());
  MutexLock lock(shard.mu);
  auto it = shard.in_flight.find(k, hash);
  if (it == shard.in_flight.end()) {
    if (shard.in_flight.size() >= per_shard_) {
      ++shard.rejected_capacity;
      return std::optional<Permit>();
    }
    it = shard.in_flight.emplace(std::string(key), 0).first;
  } else if (it->second >= options_.max) {
    ++shard.rejected;
    return std::optional<Permit>();
  }
  ++it->second;
  ++shard.held;
  ++shard.acquired;
  return std::optional<Permit>(Permit(this, &*it));
}

void KeyedConcurrencyLimiter::Release(Permit::Entry* entry) {
  size_t hash;
  Shard& shard = ShardOf(entry->first, &hash);
  MutexLock lock(shard.mu);
  --shard.held;
  if (--entry->second == 0) {
    // The last permit of the key: drop the entry, so idle keys hold no memory.
    shard.in_flight.erase(shard.in_flight.find(absl::string_view(entry->first), hash));
  }
}

void KeyedConcurrencyLimiter::Permit::Release() {
  if (owner_ == nullptr) return;
  std::exchange(owner_, nullptr)->Release(entry_);
}

int64_t KeyedConcurrencyLimiter::InFlight(std::string_view key) const {
  size_t hash;
  const Shard& shard = ShardOf(key, &hash);
  MutexLock lock(shard.mu);
  const auto it = shard.in_flight.find(absl::string_view(key.data(), key.size()), hash);
  return it == shard.in_flight.end() ? 0 : it->second;
}

KeyedConcurrencyStats KeyedConcurrencyLimiter::Stats() const {
  KeyedConcurrencyStats stats;
  for (const Shard& shard : shards_) {
    MutexLock lock(shard.mu);
    stats.keys += shard.in_flight.size();
    stats.in_flight += shard.held;
    stats.acquired_total += shard.acquired;
    stats.rejected_total += shard.rejected;
    stats.rejected_capacity_total += shard.rejected_capacity;
  }
  return stats;
}

absl::Status KeyedConcurrencyLimiter::RegisterMetrics(MetricsRegistry& metrics) {
  const Labels name = {{"name", options_.name}};
  const auto keep = [&](absl::StatusOr<MetricsRegistry::Registration> r) -> absl::Status {
    if (!r.ok()) return r.status();
    registrations_.push_back(std::move(r).value());
    return absl::OkStatus();
  };
  KEEL_RETURN_IF_ERROR(
      keep(metrics.AddGaugeCallback("keel_concurrency_limit_keys", "Keys holding permits.", name,
                                    [this] { return static_cast<double>(Stats().keys); })));
  KEEL_RETURN_IF_ERROR(keep(
      metrics.AddGaugeCallback("keel_concurrency_limit_in_flight", "Permits held, over all keys.",
                               name, [this] { return static_cast<double>(Stats().in_flight); })));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_concurrency_limit_acquired_total", "Permits handed out.", name,
      [this] { return static_cast<double>(Stats().acquired_total); })));
  const char* help = "Permits refused: the key held max, or max_keys keys held permits.";
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_concurrency_limit_rejected_total", help, {{"name", options_.name}, {"reason", "max"}},
      [this] { return static_cast<double>(Stats().rejected_total); })));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_concurrency_limit_rejected_total", help,
      {{"name", options_.name}, {"reason", "capacity"}},
      [this] { return static_cast<double>(Stats().rejected_capacity_total); })));
  return absl::OkStatus();
}

}  // namespace keel::limit
