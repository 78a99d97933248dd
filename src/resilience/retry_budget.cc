#include "keel/resilience/retry_budget.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <utility>

#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel {
namespace {

using Grant = RetryBudgetPolicy::Grant;

// The series every budget exports, read from its Stats().
absl::StatusOr<std::vector<MetricsRegistry::Registration>> RegisterBudgetMetrics(
    MetricsRegistry* metrics, const std::string& name, std::function<RetryBudgetStats()> stats) {
  std::vector<MetricsRegistry::Registration> out;
  if (metrics == nullptr) return out;
  const char* help = "Retries a retry budget was asked for, by its decision.";
  KEEL_ASSIGN_OR_RETURN(
      auto allowed, metrics->AddCounterCallback("keel_retry_budget_retries_total", help,
                                                {{"name", name}, {"decision", "allowed"}}, [stats] {
                                                  return double(stats().retries_allowed_total);
                                                }));
  out.push_back(std::move(allowed));
  KEEL_ASSIGN_OR_RETURN(
      auto refused, metrics->AddCounterCallback("keel_retry_budget_retries_total", help,
                                                {{"name", name}, {"decision", "refused"}}, [stats] {
                                                  return double(stats().retries_refused_total);
                                                }));
  out.push_back(std::move(refused));
  KEEL_ASSIGN_OR_RETURN(
      auto available,
      metrics->AddGaugeCallback("keel_retry_budget_available",
                                "What the budget would grant now, in its own unit.",
                                {{"name", name}}, [stats] { return stats().available; }));
  out.push_back(std::move(available));
  return out;
}

// Adds `n` to `a`, capped at `max` (n >= 0).
void AddCapped(std::atomic<int64_t>& a, int64_t n, int64_t max) {
  int64_t t = a.load(std::memory_order_relaxed);
  while (t < max && !a.compare_exchange_weak(t, std::min(max, t + n), std::memory_order_relaxed)) {
  }
}

}  // namespace

// ---- TokenRetryThrottle ----------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<TokenRetryThrottle>> TokenRetryThrottle::Create(
    Options options, MetricsRegistry* metrics) {
  if (!(options.max_tokens > 0 && options.max_tokens <= 1000)) {
    return internal::InvalidOption({"token retry throttle", options.name}, "max_tokens",
                                   "in (0, 1000]", options.max_tokens);
  }
  if (!(options.token_ratio > 0 && options.token_ratio <= options.max_tokens)) {
    return internal::InvalidOption({"token retry throttle", options.name}, "token_ratio",
                                   "in (0, max_tokens]", options.token_ratio);
  }
  const auto max_milli = static_cast<int64_t>(std::llround(options.max_tokens * 1000));
  // A ratio below 1/1000 would round to zero and never give tokens back: keep at least one.
  const auto ratio_milli =
      std::max<int64_t>(1, static_cast<int64_t>(std::llround(options.token_ratio * 1000)));
  std::unique_ptr<TokenRetryThrottle> t(new TokenRetryThrottle(max_milli, ratio_milli));
  KEEL_ASSIGN_OR_RETURN(
      t->registrations_,
      RegisterBudgetMetrics(metrics, options.name, [p = t.get()] { return p->Stats(); }));
  return t;
}

void TokenRetryThrottle::OnAttemptSucceeded(int) {
  AddCapped(milli_tokens_, ratio_milli_, max_milli_);
}

std::optional<Grant> TokenRetryThrottle::OnAttemptFailed(const absl::Status&, bool retry_wanted) {
  int64_t t = milli_tokens_.load(std::memory_order_relaxed);
  int64_t left;
  do {
    left = std::max<int64_t>(0, t - 1000);
  } while (!milli_tokens_.compare_exchange_weak(t, left, std::memory_order_relaxed));
  if (!retry_wanted) return std::nullopt;
  // A6: a retry is allowed while token_count > max_tokens / 2, judged on the count this failure
  // left, which the CAS above produced: no other failure can slip in between.
  return counters_.Count(2 * left > max_milli_ ? std::optional<Grant>(Grant{}) : std::nullopt);
}

double TokenRetryThrottle::tokens() const {
  return static_cast<double>(milli_tokens_.load(std::memory_order_relaxed)) / 1000;
}

RetryBudgetStats TokenRetryThrottle::Stats() const {
  const int64_t t = milli_tokens_.load(std::memory_order_relaxed);
  return counters_.Snapshot(std::max<double>(0, static_cast<double>(2 * t - max_milli_) / 2000));
}

// ---- RetryBudget -----------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<RetryBudget>> RetryBudget::Create(Options options, Clock& clock,
                                                                 MetricsRegistry* metrics) {
  if (!(options.percent >= 0 && options.percent <= 1000)) {
    return internal::InvalidOption({"retry budget", options.name}, "percent", "in [0, 1000]",
                                   options.percent);
  }
  if (!(options.min_retries_per_second >= 0 && std::isfinite(options.min_retries_per_second))) {
    return internal::InvalidOption({"retry budget", options.name}, "min_retries_per_second", ">= 0",
                                   options.min_retries_per_second);
  }
  if (options.ttl < std::chrono::seconds(1) || options.ttl > std::chrono::seconds(kMaxBuckets)) {
    return internal::InvalidOption({"retry budget", options.name}, "ttl", "in [1s, 60s]",
                                   options.ttl);
  }
  std::unique_ptr<RetryBudget> b(new RetryBudget(options, clock));
  KEEL_ASSIGN_OR_RETURN(
      b->registrations_,
      RegisterBudgetMetrics(metrics, options.name, [p = b.get()] { return p->Stats(); }));
  return b;
}

RetryBudget::RetryBudget(Options options, Clock& clock)
    : clock_(clock),
      buckets_(static_cast<int>(std::chrono::ceil<std::chrono::seconds>(options.ttl).count())),
      // With percent 0 a deposit is worth nothing (see OnCallStarted) and only the reserve
      // remains.
      withdraw_cost_(options.percent > 0
                         ? std::max<int64_t>(1, std::llround(kScale / options.percent))
                         : kScale),
      reserve_(static_cast<int64_t>(options.min_retries_per_second *
                                    std::chrono::duration<double>(options.ttl).count()) *
               withdraw_cost_),
      deposit_(options.percent > 0 ? kScale : 0),
      last_second_(NowSecond()) {}

int64_t RetryBudget::NowSecond() const {
  return std::chrono::duration_cast<std::chrono::seconds>(clock_.Now().time_since_epoch()).count();
}

void RetryBudget::Expire(int64_t now_second) const {
  if (now_second <= last_second_) return;
  if (now_second - last_second_ >= buckets_) {
    net_.fill(0);
    sum_ = 0;
  } else {
    for (int64_t s = last_second_ + 1; s <= now_second; ++s) {
      int64_t& bucket = net_[static_cast<size_t>(s % buckets_)];
      sum_ -= bucket;
      bucket = 0;
    }
  }
  last_second_ = now_second;
}

int64_t RetryBudget::BalanceLocked(int64_t now_second) const {
  Expire(now_second);
  return sum_ + reserve_;
}

void RetryBudget::OnCallStarted() {
  const int64_t now = NowSecond();
  MutexLock lock(mu_);
  Expire(now);
  net_[static_cast<size_t>(now % buckets_)] += deposit_;
  sum_ += deposit_;
}

std::optional<Grant> RetryBudget::OnAttemptFailed(const absl::Status&, bool retry_wanted) {
  if (!retry_wanted) return std::nullopt;
  const int64_t now = NowSecond();
  bool granted = false;
  {
    MutexLock lock(mu_);
    if (BalanceLocked(now) >= withdraw_cost_) {
      net_[static_cast<size_t>(now % buckets_)] -= withdraw_cost_;
      sum_ -= withdraw_cost_;
      granted = true;
    }
  }
  return counters_.Count(granted ? std::optional<Grant>(Grant{}) : std::nullopt);
}

int64_t RetryBudget::available() const {
  const int64_t now = NowSecond();
  MutexLock lock(mu_);
  return std::max<int64_t>(0, BalanceLocked(now) / withdraw_cost_);
}

RetryBudgetStats RetryBudget::Stats() const {
  return counters_.Snapshot(static_cast<double>(available()));
}

// ---- ConcurrentRetryBudget -------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<ConcurrentRetryBudget>> ConcurrentRetryBudget::Create(
    Options options, MetricsRegistry* metrics) {
  if (!(options.percent >= 0 && options.percent <= 1)) {
    return internal::InvalidOption({"concurrent retry budget", options.name}, "percent",
                                   "in [0, 1]", options.percent);
  }
  if (options.min_concurrent_retries < 0) {
    return internal::InvalidOption({"concurrent retry budget", options.name},
                                   "min_concurrent_retries", ">= 0",
                                   options.min_concurrent_retries);
  }
  std::unique_ptr<ConcurrentRetryBudget> b(new ConcurrentRetryBudget(options));
  KEEL_ASSIGN_OR_RETURN(
      b->registrations_,
      RegisterBudgetMetrics(metrics, options.name, [p = b.get()] { return p->Stats(); }));
  return b;
}

void ConcurrentRetryBudget::OnCallStarted() { calls_.fetch_add(1, std::memory_order_relaxed); }
void ConcurrentRetryBudget::OnCallFinished() { calls_.fetch_sub(1, std::memory_order_relaxed); }

int64_t ConcurrentRetryBudget::limit() const {
  // Envoy rounds the percentage of active requests down, then applies the minimum.
  const auto share = static_cast<int64_t>(
      std::floor(percent_ * static_cast<double>(calls_.load(std::memory_order_relaxed))));
  return std::max(min_, share);
}

std::optional<Grant> ConcurrentRetryBudget::OnAttemptFailed(const absl::Status&,
                                                            bool retry_wanted) {
  if (!retry_wanted) return std::nullopt;
  const int64_t cap = limit();
  int64_t r = retries_.load(std::memory_order_relaxed);
  do {
    if (r >= cap) return counters_.Count(std::nullopt);
  } while (!retries_.compare_exchange_weak(r, r + 1, std::memory_order_relaxed));
  return counters_.Count(Grant{});
}

void ConcurrentRetryBudget::OnRetryFinished(Grant, bool) {
  retries_.fetch_sub(1, std::memory_order_relaxed);
}

RetryBudgetStats ConcurrentRetryBudget::Stats() const {
  return counters_.Snapshot(
      static_cast<double>(std::max<int64_t>(0, limit() - retries_in_flight())));
}

// ---- RetryQuota ------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<RetryQuota>> RetryQuota::Create(Options options,
                                                               MetricsRegistry* metrics) {
  if (options.max_tokens < 1) {
    return internal::InvalidOption({"retry quota", options.name}, "max_tokens", ">= 1",
                                   options.max_tokens);
  }
  if (options.retry_cost < 1 || options.retry_cost > options.max_tokens) {
    return internal::InvalidOption({"retry quota", options.name}, "retry_cost",
                                   "in [1, max_tokens]", options.retry_cost);
  }
  if (options.timeout_retry_cost < 1 || options.timeout_retry_cost > options.max_tokens) {
    return internal::InvalidOption({"retry quota", options.name}, "timeout_retry_cost",
                                   "in [1, max_tokens]", options.timeout_retry_cost);
  }
  if (options.success_increment < 0) {
    return internal::InvalidOption({"retry quota", options.name}, "success_increment", ">= 0",
                                   options.success_increment);
  }
  std::unique_ptr<RetryQuota> q(new RetryQuota(options));
  KEEL_ASSIGN_OR_RETURN(
      q->registrations_,
      RegisterBudgetMetrics(metrics, options.name, [p = q.get()] { return p->Stats(); }));
  return q;
}

void RetryQuota::Add(int64_t n) {
  if (n > 0) AddCapped(tokens_, n, max_);
}

void RetryQuota::OnAttemptSucceeded(int attempt) {
  if (attempt == 1) Add(increment_);
}

std::optional<Grant> RetryQuota::OnAttemptFailed(const absl::Status& failure, bool retry_wanted) {
  if (!retry_wanted) return std::nullopt;
  const int64_t cost = absl::IsDeadlineExceeded(failure) ? timeout_cost_ : retry_cost_;
  int64_t t = tokens_.load(std::memory_order_relaxed);
  do {
    if (t < cost) return counters_.Count(std::nullopt);
  } while (!tokens_.compare_exchange_weak(t, t - cost, std::memory_order_relaxed));
  return counters_.Count(Grant{.cost = cost});
}

void RetryQuota::OnRetryFinished(Grant grant, bool succeeded) {
  if (succeeded) Add(grant.cost);
}

RetryBudgetStats RetryQuota::Stats() const {
  return counters_.Snapshot(static_cast<double>(tokens()));
}

}  // namespace keel
