#include "keel/overload/keyed_adaptive_limiter.h"

#include <algorithm>

#include "absl/hash/hash.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::overload {
namespace {
constexpr size_t kMaxKeyBytes = 1024;
}  // namespace

absl::StatusOr<std::unique_ptr<KeyedAdaptiveLimiter>> KeyedAdaptiveLimiter::Create(
    Options options, AlgorithmFactory factory, Clock& clock, MetricsRegistry* metrics) {
  namespace ki = keel::internal;
  const ki::OptionsOf of("keyed adaptive limiter", options.name);
  if (options.name.empty()) return ki::InvalidOption(of, "name", "non-empty", "\"\"");
  KEEL_RETURN_IF_ERROR(ki::RequireSet(of, "factory", factory != nullptr));
  KEEL_RETURN_IF_ERROR(ki::RequireAtLeast(of, "shards", options.shards, size_t{1}));
  KEEL_RETURN_IF_ERROR(ki::RequireAtLeast(of, "max_keys", options.max_keys, options.shards));
  KEEL_RETURN_IF_ERROR(ki::RequirePositive(of, "idle_ttl", options.idle_ttl));
  // The per-key options and the factory are checked once, on a throwaway limiter.
  KEEL_ASSIGN_OR_RETURN(std::unique_ptr<LimitAlgorithm> probe, factory());
  AdaptiveLimiter::Options limiter_options = options.limiter;
  limiter_options.name = options.name;
  limiter_options.on_limit_change = nullptr;
  KEEL_RETURN_IF_ERROR(AdaptiveLimiter::Create(limiter_options, std::move(probe), clock).status());
  std::unique_ptr<KeyedAdaptiveLimiter> k(
      new KeyedAdaptiveLimiter(std::move(options), std::move(factory), clock));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(k->RegisterMetrics(*metrics));
  return k;
}

KeyedAdaptiveLimiter::KeyedAdaptiveLimiter(Options options, AlgorithmFactory factory, Clock& clock)
    : options_(std::move(options)),
      factory_(std::move(factory)),
      clock_(clock),
      per_shard_(options_.max_keys / options_.shards),
      shards_(options_.shards) {}

absl::Status KeyedAdaptiveLimiter::RegisterMetrics(MetricsRegistry& metrics) {
  auto keep = [&](absl::StatusOr<MetricsRegistry::Registration> r) -> absl::Status {
    if (!r.ok()) return r.status();
    registrations_.push_back(std::move(r).value());
    return absl::OkStatus();
  };
  const std::string& name = options_.name;
  KEEL_RETURN_IF_ERROR(
      keep(metrics.AddGaugeCallback("keel_adaptive_limit_keys", "Keys holding an adaptive limiter.",
                                    {{"name", name}}, [this] { return double(Stats().keys); })));
  const char* help = "Keys dropped, by reason.";
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_adaptive_limit_key_evictions_total", help, {{"name", name}, {"reason", "idle"}},
      [this] { return double(Stats().evicted_idle_total); })));
  KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
      "keel_adaptive_limit_key_evictions_total", help, {{"name", name}, {"reason", "capacity"}},
      [this] { return double(Stats().evicted_capacity_total); })));
  return keep(metrics.AddCounterCallback(
      "keel_adaptive_limit_key_refused_total", "New keys refused: every key of the shard in use.",
      {{"name", name}}, [this] { return double(Stats().refused_capacity_total); }));
}

KeyedAdaptiveLimiter::Shard& KeyedAdaptiveLimiter::ShardOf(std::string_view key) const {
  const size_t hash = absl::Hash<absl::string_view>{}(absl::string_view(key.data(), key.size()));
  // Top bits: the map's own probing uses the low ones.
  return shards_[static_cast<size_t>(static_cast<uint64_t>(hash) >> 40) % shards_.size()];
}

void KeyedAdaptiveLimiter::Sweep(Shard& shard, TimePoint now) {
  const size_t before = shard.keys.size();
  absl::erase_if(shard.keys, [&](const auto& kv) {
    return Idle(kv.second) && now - kv.second->last_used >= options_.idle_ttl;
  });
  shard.evicted_idle += before - shard.keys.size();
  shard.next_sweep = now + options_.idle_ttl / 2;
}

bool KeyedAdaptiveLimiter::MakeRoom(Shard& shard) {
  auto victim = shard.keys.end();
  for (auto it = shard.keys.begin(); it != shard.keys.end(); ++it) {
    if (!Idle(it->second)) continue;
    if (victim == shard.keys.end() || it->second->last_used < victim->second->last_used) {
      victim = it;
    }
  }
  if (victim == shard.keys.end()) return false;
  shard.keys.erase(victim);
  ++shard.evicted_capacity;
  return true;
}

absl::StatusOr<std::shared_ptr<KeyedAdaptiveLimiter::Entry>> KeyedAdaptiveLimiter::Find(
    std::string_view key) {
  using keel::internal::StrCat;
  if (key.empty() || key.size() > kMaxKeyBytes) {
    return absl::InvalidArgumentError(StrCat("keyed adaptive limiter \"", options_.name,
                                             "\": key must be 1 to ", kMaxKeyBytes, " bytes, got ",
                                             key.size()));
  }
  Shard& shard = ShardOf(key);
  const TimePoint now = clock_.Now();
  MutexLock lock(shard.mu);
  if (now >= shard.next_sweep) Sweep(shard, now);
  const absl::string_view k(key.data(), key.size());
  if (auto it = shard.keys.find(k); it != shard.keys.end()) {
    it->second->last_used = std::max(it->second->last_used, now);
    return it->second;  // copied under the lock: the entry is in use from here on
  }
  if (shard.keys.size() >= per_shard_ && !MakeRoom(shard)) {
    ++shard.refused;
    return absl::ResourceExhaustedError(
        StrCat("keyed adaptive limiter \"", options_.name, "\": no room for a new key (",
               shard.keys.size(), " keys of this shard in use, max_keys ", options_.max_keys, ")"));
  }
  // Building the limiter under the shard lock is a few allocations, no I/O; the factory is user
  // code and may throw.
  absl::StatusOr<std::unique_ptr<LimitAlgorithm>> algorithm;
  try {
    algorithm = factory_();
  } catch (...) {
    return absl::InternalError(
        StrCat("keyed adaptive limiter \"", options_.name, "\": the algorithm factory threw"));
  }
  if (!algorithm.ok()) return algorithm.status();
  AdaptiveLimiter::Options o = options_.limiter;
  o.name = StrCat(options_.name, "/", key);
  if (options_.on_limit_change) {
    o.on_limit_change = [this, owned = std::string(key)](int from, int to) {
      options_.on_limit_change(owned, from, to);
    };
  } else {
    o.on_limit_change = nullptr;
  }
  KEEL_ASSIGN_OR_RETURN(std::unique_ptr<AdaptiveLimiter> limiter,
                        AdaptiveLimiter::Create(std::move(o), std::move(*algorithm), clock_));
  auto entry = std::make_shared<Entry>();
  entry->limiter = std::move(limiter);
  entry->last_used = now;
  shard.keys.emplace(std::string(key), entry);
  return entry;
}

absl::StatusOr<KeyedAdaptiveLimiter::Permit> KeyedAdaptiveLimiter::TryAcquire(
    std::string_view key, Criticality criticality) {
  KEEL_ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry, Find(key));
  KEEL_ASSIGN_OR_RETURN(AdaptiveLimiter::Permit inner, entry->limiter->TryAcquire(criticality));
  return Wrap(std::move(entry), std::move(inner));
}

absl::StatusOr<KeyedAdaptiveLimiter::Permit> KeyedAdaptiveLimiter::Acquire(
    Deadline deadline, std::string_view key, Criticality criticality) {
  KEEL_ASSIGN_OR_RETURN(std::shared_ptr<Entry> entry, Find(key));
  // `entry` keeps the key in use (never evicted) while this call waits in its queue.
  KEEL_ASSIGN_OR_RETURN(AdaptiveLimiter::Permit inner,
                        entry->limiter->Acquire(deadline, criticality));
  return Wrap(std::move(entry), std::move(inner));
}

std::optional<AdaptiveLimiterStats> KeyedAdaptiveLimiter::Stats(std::string_view key) const {
  Shard& shard = ShardOf(key);
  std::shared_ptr<Entry> entry;
  {
    MutexLock lock(shard.mu);
    auto it = shard.keys.find(absl::string_view(key.data(), key.size()));
    if (it == shard.keys.end()) return std::nullopt;
    entry = it->second;
  }
  return entry->limiter->Stats();
}

KeyedAdaptiveLimiterStats KeyedAdaptiveLimiter::Stats() const {
  KeyedAdaptiveLimiterStats s;
  for (const Shard& shard : shards_) {
    MutexLock lock(shard.mu);
    s.keys += shard.keys.size();
    s.evicted_idle_total += shard.evicted_idle;
    s.evicted_capacity_total += shard.evicted_capacity;
    s.refused_capacity_total += shard.refused;
  }
  return s;
}

}  // namespace keel::overload
