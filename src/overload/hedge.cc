#include "keel/overload/hedge.h"

#include <chrono>
#include <string>

#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::overload {

absl::StatusOr<std::unique_ptr<Hedge>> Hedge::Create(Options options, Clock& clock,
                                                     MetricsRegistry* metrics) {
  namespace ki = keel::internal;
  const ki::OptionsOf of("hedge", options.name);
  if (options.name.empty()) return ki::InvalidOption(of, "name", "non-empty", "\"\"");
  if (options.delay) KEEL_RETURN_IF_ERROR(ki::RequirePositive(of, "delay", *options.delay));
  KEEL_RETURN_IF_ERROR(LatencyPercentile::Validate(
      of, {.percentile = options.percentile, .window = options.latency_window}));
  if (options.max_hedges < 1 || options.max_hedges > 10) {
    return ki::InvalidOption(of, "max_hedges", "in [1, 10]", options.max_hedges);
  }
  std::unique_ptr<Hedge> h(new Hedge(std::move(options), clock));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(h->RegisterMetrics(*metrics));
  return h;
}

Hedge::Hedge(Options options, Clock& clock)
    : options_(std::move(options)),
      clock_(clock),
      latency_({.percentile = options_.percentile, .window = options_.latency_window}) {}

Hedge::~Hedge() = default;

absl::Status Hedge::RegisterMetrics(MetricsRegistry& metrics) {
  const Labels labels = {{"name", options_.name}};
  auto keep = [&](absl::StatusOr<MetricsRegistry::Registration> r) -> absl::Status {
    if (!r.ok()) return r.status();
    registrations_.push_back(std::move(r).value());
    return absl::OkStatus();
  };
  auto counter = [&](const char* family, const char* help, Labels l,
                     const std::atomic<uint64_t>* value) {
    return keep(metrics.AddCounterCallback(family, help, std::move(l), [value] {
      return double(value->load(std::memory_order_relaxed));
    }));
  };
  KEEL_RETURN_IF_ERROR(
      counter("keel_hedge_calls_total", "Calls through the hedge.", labels, &calls_));
  KEEL_RETURN_IF_ERROR(
      counter("keel_hedge_hedges_total", "Extra attempts sent.", labels, &hedges_));
  KEEL_RETURN_IF_ERROR(
      counter("keel_hedge_wins_total", "Calls whose answer came from a hedge.", labels, &wins_));
  KEEL_RETURN_IF_ERROR(counter("keel_hedge_cancelled_total",
                               "Attempts cancelled because another answered first.", labels,
                               &cancelled_));
  const char* refused_help = "Hedges not sent, by reason.";
  Labels budget = labels;
  budget.emplace_back("reason", "budget");
  KEEL_RETURN_IF_ERROR(counter("keel_hedge_refused_total", refused_help, budget, &refused_budget_));
  Labels not_idempotent = labels;
  not_idempotent.emplace_back("reason", "not_idempotent");
  KEEL_RETURN_IF_ERROR(
      counter("keel_hedge_refused_total", refused_help, not_idempotent, &not_idempotent_));
  return keep(metrics.AddGaugeCallback("keel_hedge_delay_seconds",
                                       "The delay after which a call is hedged (0 while unknown).",
                                       labels, [this] {
                                         const std::optional<Duration> d = delay();
                                         return d ? std::chrono::duration<double>(*d).count() : 0.0;
                                       }));
}

bool Hedge::IsFinal(const absl::Status& status) const {
  if (status.ok()) return true;
  if (!options_.is_final) return false;
  try {
    return options_.is_final(status);
  } catch (...) {
    return false;
  }
}

std::optional<std::optional<RetryBudgetPolicy::Grant>> Hedge::PayForHedge(Duration waited) {
  if (options_.budget == nullptr) return std::optional<RetryBudgetPolicy::Grant>();
  std::optional<RetryBudgetPolicy::Grant> grant = options_.budget->OnAttemptFailed(
      absl::DeadlineExceededError(internal::StrCat("hedge \"", options_.name,
                                                   "\": attempt outstanding after ",
                                                   internal::FormatDuration(waited))),
      /*retry_wanted=*/true);
  if (!grant) {
    refused_budget_.fetch_add(1, std::memory_order_relaxed);
    return std::nullopt;
  }
  return grant;
}

HedgeStats Hedge::Stats() const {
  auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  HedgeStats s;
  s.delay = delay();
  s.calls_total = get(calls_);
  s.hedges_total = get(hedges_);
  s.wins_total = get(wins_);
  s.cancelled_total = get(cancelled_);
  s.refused_budget_total = get(refused_budget_);
  s.not_idempotent_total = get(not_idempotent_);
  return s;
}

}  // namespace keel::overload
