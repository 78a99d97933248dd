#include "keel/limit/keyed.h"

#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::limit::internal {

using keel::internal::StrCat;

absl::Status ValidateKeyed(std::string_view name, std::string_view key, int64_t n) {
  // The same rules, in the same words, as keel::redis::RateLimiter.
  if (key.empty() || key.size() > kMaxKeyBytes) {
    return absl::InvalidArgumentError(StrCat("keyed rate limiter \"", name, "\": key must be 1 to ",
                                             kMaxKeyBytes, " bytes, got ", key.size()));
  }
  if (n < 0) {
    return keel::internal::InvalidOption({"keyed rate limiter", name}, "quantity", ">= 0", n);
  }
  return absl::OkStatus();
}

absl::Status ValidateKeyedOptions(const KeyedOptions& options, size_t limits) {
  const keel::internal::OptionsOf of("keyed rate limiter", options.name);
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast(of, "shards", options.shards, 1));
  if (options.max_keys < options.shards) {
    return keel::internal::InvalidOption(of, "max_keys", StrCat(">= shards (", options.shards, ")"),
                                         options.max_keys);
  }
  // Upper bounds keep `now + duration` from overflowing the clock's int64 nanoseconds.
  constexpr Duration kLongest = std::chrono::hours(24 * 365 * 50);
  const std::pair<std::string_view, const std::optional<Duration>&> spans[] = {
      {"idle_ttl", options.idle_ttl}, {"block_for", options.block_for}};
  for (const auto& [field, d] : spans) {
    if (d && (*d <= Duration::zero() || *d > kLongest)) {
      return keel::internal::InvalidOption(of, field, "in (0, 50 years]", *d);
    }
  }
  if (limits == 0) {
    return absl::InvalidArgumentError(StrCat(of.Field("limits"), " must hold at least one limit"));
  }
  return absl::OkStatus();
}

absl::Status RegisterKeyedMetrics(MetricsRegistry& metrics, const std::string& name,
                                  std::function<KeyedStats()> stats,
                                  std::vector<MetricsRegistry::Registration>& out) {
  const auto keep = [&](absl::StatusOr<MetricsRegistry::Registration> r) -> absl::Status {
    if (!r.ok()) return r.status();
    out.push_back(std::move(r).value());
    return absl::OkStatus();
  };
  KEEL_RETURN_IF_ERROR(keep(metrics.AddGaugeCallback(
      "keel_rate_limit_keys", "Keys held by a keyed rate limiter.", {{"name", name}},
      [stats] { return static_cast<double>(stats().keys); })));
  const std::pair<const char*, uint64_t KeyedStats::*> outcomes[] = {
      {"allowed", &KeyedStats::allowed_total},
      {"denied", &KeyedStats::denied_total},
      {"blocked", &KeyedStats::blocked_denials_total},
      {"refused_full", &KeyedStats::refused_full_total},
  };
  for (const auto& [label, field] : outcomes) {
    KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
        kDecisionsFamily, kDecisionsHelp,
        {{"name", name}, {"decision", label}, {"backend", "local"}},
        [stats, field = field] { return static_cast<double>(stats().*field); })));
  }
  const char* evictions =
      "Keys dropped by a keyed rate limiter: idle past idle_ttl, or to make "
      "room at max_keys.";
  const std::pair<const char*, uint64_t KeyedStats::*> reasons[] = {
      {"idle", &KeyedStats::evicted_idle_total},
      {"capacity", &KeyedStats::evicted_capacity_total},
  };
  for (const auto& [label, field] : reasons) {
    KEEL_RETURN_IF_ERROR(keep(metrics.AddCounterCallback(
        "keel_rate_limit_evictions_total", evictions, {{"name", name}, {"reason", label}},
        [stats, field = field] { return static_cast<double>(stats().*field); })));
  }
  return absl::OkStatus();
}

}  // namespace keel::limit::internal
