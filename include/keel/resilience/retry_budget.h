// keel/resilience/retry_budget.h: caps on how much extra load retries may add, shared by callers.
//
// Retries multiply load exactly when a backend is struggling: three attempts per call can triple
// the traffic of an overloaded service. A budget, shared by every Retry that calls the same
// backend, bounds the extra load. Four published designs:
//
//   `keel::TokenRetryThrottle`     gRPC retry throttling (proposal A6). A token count starts at
//                                  max_tokens; every attempt that fails with a retryable status
//                                  takes 1, every success gives back token_ratio; a retry is
//                                  allowed only while the count left by its failure is above
//                                  max_tokens / 2. Adapts to the failure rate, needs no clock.
//   `keel::RetryBudget`            Finagle's RetryBudget: retries may be up to `percent` of the
//                                  calls of the last `ttl`, plus a floor of
//                                  `min_retries_per_second` so low-traffic clients can retry.
//   `keel::ConcurrentRetryBudget`  Envoy's retry budget: retries in flight at once may be at most
//                                  `percent` of the calls in flight (default 20%), and never
//                                  fewer than `min_concurrent_retries` (default 3).
//   `keel::RetryQuota`             the AWS SDK's retry quota (Go v2 standard retryer): a bucket of
//                                  500 tokens; a retry costs 5 (10 after a timeout), a successful
//                                  retry refunds its cost, a success at the first attempt adds 1.
//
// All four implement `keel::RetryBudgetPolicy`, the interface Retry calls; implement it for a
// custom budget. Each has `Stats()` (a `keel::RetryBudgetStats`) and, given a MetricsRegistry,
// exports keel_retry_budget_retries_total{name, decision="allowed"|"refused"} and the gauge
// keel_retry_budget_available{name}.
//
// Thread safety: thread-safe; share one instance between every policy calling one backend.
// TokenRetryThrottle, ConcurrentRetryBudget and RetryQuota are lock-free; RetryBudget takes a
// short mutex.
//
//   keel::MetricsRegistry registry;
//   auto budget = keel::ConcurrentRetryBudget::Create({.name = "users-db"}, &registry).value();
//   auto retry_a = keel::Retry::Create({.name = "users", .budget = budget.get()}).value();
//   auto retry_b = keel::Retry::Create({.name = "orders", .budget = budget.get()}).value();
//   // Together, retry_a and retry_b keep at most max(3, 20% of their calls in flight) retries
//   // in flight.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/metrics.h"
#include "keel/sync.h"

namespace keel {

// A snapshot of a retry budget. Counters (`*_total`) are cumulative since Create.
struct RetryBudgetStats {
  // What the budget would grant now, in its own unit: tokens above the retry threshold
  // (TokenRetryThrottle), retries (RetryBudget), free concurrent-retry slots
  // (ConcurrentRetryBudget), quota tokens (RetryQuota).
  double available = 0;
  uint64_t retries_allowed_total = 0;  // retries the budget granted
  uint64_t retries_refused_total = 0;  // retries Retry wanted and the budget refused
};

// What a retry policy tells a shared budget, and asks it. For every logical call Retry calls:
// OnCallStarted() once; after each attempt OnAttemptSucceeded(), or OnAttemptFailed() when it
// failed with a status the policy would retry; OnRetryFinished() when the attempt a granted retry
// paid for has ended (or will never run); and OnCallFinished() once at the end.
class RetryBudgetPolicy {
 public:
  // What a granted retry was charged, handed back to OnRetryFinished so the budget can release
  // or refund it.
  struct Grant {
    int64_t cost = 0;
  };

  virtual ~RetryBudgetPolicy() = default;

  // A logical call starts (its first attempt is about to run).
  virtual void OnCallStarted() = 0;
  // The logical call has ended, whatever its outcome.
  virtual void OnCallFinished() = 0;
  // An attempt succeeded; `attempt` is 1 for the first attempt, 2 for the first retry, ...
  virtual void OnAttemptSucceeded(int attempt) = 0;
  // An attempt failed with a status the policy would retry. Records the failure and, when
  // `retry_wanted` (the policy has attempts and time left), decides in the same atomic step
  // whether that retry may be made: a Grant when it may (already charged), nullopt when not.
  // With `retry_wanted` false the failure is recorded only (gRPC's throttle counts it).
  virtual std::optional<Grant> OnAttemptFailed(const absl::Status& failure, bool retry_wanted) = 0;
  // The attempt `grant` paid for ended: `succeeded` says how. Also called with false when the
  // retry was never attempted (cancelled during its backoff).
  virtual void OnRetryFinished(Grant grant, bool succeeded) = 0;
};

namespace retry_budget_internal {
// Retry counters every budget keeps; relaxed atomics (independent statistics).
struct Counters {
  std::atomic<uint64_t> allowed{0};
  std::atomic<uint64_t> refused{0};
  std::optional<RetryBudgetPolicy::Grant> Count(std::optional<RetryBudgetPolicy::Grant> g) {
    (g ? allowed : refused).fetch_add(1, std::memory_order_relaxed);
    return g;
  }
  RetryBudgetStats Snapshot(double available) const {
    return {.available = available,
            .retries_allowed_total = allowed.load(std::memory_order_relaxed),
            .retries_refused_total = refused.load(std::memory_order_relaxed)};
  }
};
}  // namespace retry_budget_internal

// gRPC's retry throttling (A6).
class TokenRetryThrottle final : public RetryBudgetPolicy {
 public:
  struct Options {
    // Names the throttle in metrics. Default: "token-retry-throttle".
    std::string name = "token-retry-throttle";
    // The token count starts here and never exceeds it; retries stop at half. Larger values let
    // more consecutive failures through before throttling. Default: 10. Must be in (0, 1000].
    double max_tokens = 10;
    // Tokens given back per successful attempt. 0.1 means about ten successes earn back one
    // failure: retries continue while fewer than ~9% of attempts fail. Default: 0.1. Must be in
    // (0, max_tokens]. Kept to 1/1000 of a token, as gRPC does.
    double token_ratio = 0.1;
  };

  // INVALID_ARGUMENT naming the field for values outside the ranges above, or a metric
  // registration error. `metrics` (optional) must outlive the throttle.
  static absl::StatusOr<std::unique_ptr<TokenRetryThrottle>> Create(
      Options options, MetricsRegistry* metrics = nullptr);

  void OnCallStarted() override {}
  void OnCallFinished() override {}
  void OnAttemptSucceeded(int attempt) override;
  // Takes one token and allows the retry when the count it leaves is above max_tokens / 2, in
  // one compare-and-swap: two failures racing cannot both see the count before either.
  std::optional<Grant> OnAttemptFailed(const absl::Status& failure, bool retry_wanted) override;
  void OnRetryFinished(Grant, bool) override {}

  // The current token count.
  double tokens() const;
  // `available`: tokens above max_tokens / 2.
  RetryBudgetStats Stats() const;

 private:
  TokenRetryThrottle(int64_t max_milli, int64_t ratio_milli)
      : max_milli_(max_milli), ratio_milli_(ratio_milli), milli_tokens_(max_milli) {}

  const int64_t max_milli_;
  const int64_t ratio_milli_;
  // Thousandths of a token. Relaxed is enough: the count is a self-contained statistic that
  // orders no other memory; each update is one CAS, so the count stays exact and bounded.
  std::atomic<int64_t> milli_tokens_;
  retry_budget_internal::Counters counters_;
  std::vector<MetricsRegistry::Registration> registrations_;  // last: unregistered first
};

// Finagle's RetryBudget: retries <= percent * calls(last ttl) + min_retries_per_second * ttl.
class RetryBudget final : public RetryBudgetPolicy {
 public:
  struct Options {
    // Names the budget in metrics. Default: "retry-budget".
    std::string name = "retry-budget";
    // Retries allowed as a fraction of the calls seen in the last `ttl`. 0.2 caps the extra
    // load retries add at 20%. Default: 0.2. Must be in [0, 1000].
    double percent = 0.2;
    // A floor that lets a client with little traffic retry at all: this many retries per second
    // are always allowed (averaged over `ttl`). Default: 10. Must be >= 0.
    double min_retries_per_second = 10;
    // How long a call (deposit) or a retry (withdrawal) counts. Longer windows smooth bursts;
    // shorter ones react faster to a traffic change. Default: 10 s. Must be in [1 s, 60 s].
    Duration ttl = std::chrono::seconds(10);
  };

  // INVALID_ARGUMENT naming the field for values outside the ranges above, or a metric
  // registration error. `clock` and `metrics` (optional) must outlive the budget.
  static absl::StatusOr<std::unique_ptr<RetryBudget>> Create(Options options,
                                                             Clock& clock = SteadyClock(),
                                                             MetricsRegistry* metrics = nullptr);

  // Deposits one call.
  void OnCallStarted() override ABSL_LOCKS_EXCLUDED(mu_);
  void OnCallFinished() override {}
  void OnAttemptSucceeded(int) override {}
  // Withdraws one retry when the window holds enough (check and withdrawal under one lock).
  std::optional<Grant> OnAttemptFailed(const absl::Status& failure, bool retry_wanted) override
      ABSL_LOCKS_EXCLUDED(mu_);
  void OnRetryFinished(Grant, bool) override {}

  // Retries that would be allowed now, rounded down.
  int64_t available() const ABSL_LOCKS_EXCLUDED(mu_);
  // `available`: as available().
  RetryBudgetStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // The window is kept in per-second buckets, so calls leave it at one-second granularity: a
  // deposit counts for between ttl - 1 s and ttl (Finagle's WindowedAdder has the same slack).
  static constexpr int kMaxBuckets = 60;
  static constexpr int64_t kScale = 1000;  // fixed point: one call deposits kScale

  RetryBudget(Options options, Clock& clock);
  // Drops the buckets that left the window. REQUIRES: mu_ held.
  void Expire(int64_t now_second) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t BalanceLocked(int64_t now_second) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t NowSecond() const;

  Clock& clock_;
  const int buckets_;
  const int64_t withdraw_cost_;  // kScale / percent: one retry costs that many deposits' worth
  const int64_t reserve_;        // min_retries_per_second * ttl retries, in withdraw units
  const int64_t deposit_;        // kScale per call, 0 when percent is 0
  mutable Mutex mu_;
  // Net deposits minus withdrawals per second of the window, indexed by second % buckets_.
  mutable std::array<int64_t, kMaxBuckets> net_ ABSL_GUARDED_BY(mu_){};
  mutable int64_t last_second_ ABSL_GUARDED_BY(mu_);
  mutable int64_t sum_ ABSL_GUARDED_BY(mu_) = 0;
  retry_budget_internal::Counters counters_;
  std::vector<MetricsRegistry::Registration> registrations_;  // last: unregistered first
};

// Envoy's retry budget: retries in flight <= max(min_concurrent_retries, percent * calls in
// flight). A retry is in flight from the moment it is granted (its backoff included) until its
// attempt ends; a call is in flight from its first attempt until Retry returns, and counts once
// however many attempts it makes. The two counts are separate atomics, so a grant racing a call
// that starts or ends may see the call count one step behind: the cap can be exceeded by the
// number of threads racing, never more.
class ConcurrentRetryBudget final : public RetryBudgetPolicy {
 public:
  struct Options {
    // Names the budget in metrics. Default: "concurrent-retry-budget".
    std::string name = "concurrent-retry-budget";
    // Retries in flight allowed as a fraction of the calls in flight. Default: 0.2 (Envoy's
    // budget_percent 20%). Must be in [0, 1].
    double percent = 0.2;
    // Retries in flight always allowed, whatever the traffic, so a quiet client can retry.
    // Default: 3 (Envoy's min_retry_concurrency). Must be >= 0.
    int min_concurrent_retries = 3;
  };

  // INVALID_ARGUMENT naming the field for values outside the ranges above, or a metric
  // registration error. `metrics` (optional) must outlive the budget.
  static absl::StatusOr<std::unique_ptr<ConcurrentRetryBudget>> Create(
      Options options, MetricsRegistry* metrics = nullptr);

  void OnCallStarted() override;
  void OnCallFinished() override;
  void OnAttemptSucceeded(int) override {}
  // Takes a retry slot when fewer than the cap are in flight (one compare-and-swap).
  std::optional<Grant> OnAttemptFailed(const absl::Status& failure, bool retry_wanted) override;
  // Frees the slot.
  void OnRetryFinished(Grant grant, bool succeeded) override;

  // The cap on retries in flight at the current number of calls in flight.
  int64_t limit() const;
  int64_t calls_in_flight() const { return calls_.load(std::memory_order_relaxed); }
  int64_t retries_in_flight() const { return retries_.load(std::memory_order_relaxed); }
  // `available`: limit() minus the retries in flight, at least 0.
  RetryBudgetStats Stats() const;

 private:
  ConcurrentRetryBudget(Options options)
      : percent_(options.percent), min_(options.min_concurrent_retries) {}

  const double percent_;
  const int64_t min_;
  // Relaxed: gauges ordering no other memory; the retry slot itself is one CAS on retries_.
  std::atomic<int64_t> calls_{0};
  std::atomic<int64_t> retries_{0};
  retry_budget_internal::Counters counters_;
  std::vector<MetricsRegistry::Registration> registrations_;  // last: unregistered first
};

// The AWS SDK's client-side retry quota (aws-sdk-go-v2 retry.Standard: RetryCost 5,
// RetryTimeoutCost 10, NoRetryIncrement 1, a 500-token bucket). The quota drains only while
// retries fail: a retry that succeeds refunds what it cost, and every call that succeeds at once
// earns a token back, so a healthy client keeps it full.
class RetryQuota final : public RetryBudgetPolicy {
 public:
  struct Options {
    // Names the quota in metrics. Default: "retry-quota".
    std::string name = "retry-quota";
    // Size of the bucket, and its initial content. Default: 500. Must be >= 1.
    int64_t max_tokens = 500;
    // Tokens a retry costs. Default: 5. Must be in [1, max_tokens].
    int64_t retry_cost = 5;
    // Tokens a retry costs when the failed attempt timed out (DEADLINE_EXCEEDED): a timeout
    // suggests an overloaded backend, so it spends faster. Default: 10. Must be in
    // [1, max_tokens].
    int64_t timeout_retry_cost = 10;
    // Tokens a call earns back when its first attempt succeeds. Default: 1. Must be >= 0.
    int64_t success_increment = 1;
  };

  // INVALID_ARGUMENT naming the field for values outside the ranges above, or a metric
  // registration error. `metrics` (optional) must outlive the quota.
  static absl::StatusOr<std::unique_ptr<RetryQuota>> Create(Options options,
                                                            MetricsRegistry* metrics = nullptr);

  void OnCallStarted() override {}
  void OnCallFinished() override {}
  // A first-attempt success adds success_increment (capped at max_tokens).
  void OnAttemptSucceeded(int attempt) override;
  // Takes the retry's cost when the bucket holds it (one compare-and-swap).
  std::optional<Grant> OnAttemptFailed(const absl::Status& failure, bool retry_wanted) override;
  // A successful retry refunds its cost (capped at max_tokens).
  void OnRetryFinished(Grant grant, bool succeeded) override;

  int64_t tokens() const { return tokens_.load(std::memory_order_relaxed); }
  // `available`: tokens().
  RetryBudgetStats Stats() const;

 private:
  explicit RetryQuota(const Options& o)
      : max_(o.max_tokens),
        retry_cost_(o.retry_cost),
        timeout_cost_(o.timeout_retry_cost),
        increment_(o.success_increment),
        tokens_(o.max_tokens) {}
  void Add(int64_t n);

  const int64_t max_;
  const int64_t retry_cost_;
  const int64_t timeout_cost_;
  const int64_t increment_;
  // Relaxed: a self-contained count; each change is one CAS, keeping it within [0, max_].
  std::atomic<int64_t> tokens_;
  retry_budget_internal::Counters counters_;
  std::vector<MetricsRegistry::Registration> registrations_;  // last: unregistered first
};

}  // namespace keel
