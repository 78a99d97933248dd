// keel/resilience/retry_budget.h: caps on how much extra load retries may add, shared by callers.
//
// Retries multiply load exactly when a backend is struggling: three attempts per call can triple
// the traffic of an overloaded service. A budget, shared by every Retry (and later hedging) that
// calls the same backend, bounds the extra load. Two published designs:
//
//   `keel::TokenRetryThrottle`  gRPC retry throttling (proposal A6). A token count starts at
//                               max_tokens; every attempt that fails with a retryable status
//                               takes 1, every success gives back token_ratio; retries are allowed
//                               only while tokens > max_tokens / 2. Adapts to the failure rate,
//                               needs no clock.
//   `keel::RetryBudget`         Finagle's RetryBudget (also Envoy's retry budget): retries may be
//                               up to `percent` of the requests of the last `ttl`, plus a floor of
//                               `min_retries_per_second` so low-traffic clients can still retry.
//
// Both implement `keel::RetryBudgetPolicy`, the interface Retry calls; implement it for a custom
// budget.
//
// Thread safety: thread-safe; share one instance between every policy calling one backend.
// TokenRetryThrottle is lock-free (one atomic word); RetryBudget takes a short mutex.
//
//   auto budget = keel::RetryBudget::Create({.percent = 0.2}).value();
//   auto retry_a = keel::Retry::Create({.name = "users", .budget = budget.get()}).value();
//   auto retry_b = keel::Retry::Create({.name = "orders", .budget = budget.get()}).value();
//   // Together, retry_a and retry_b add at most 20% retries (plus 10/s) to the backend.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/sync.h"

namespace keel {

// What a retry policy tells a shared budget, and asks it. Retry calls, for every logical call:
// OnRequest() once; then for each attempt OnAttemptSucceeded() or, when the attempt failed with a
// status the policy would retry, OnAttemptFailed(); and TryAcquireRetry() before each retry.
class RetryBudgetPolicy {
 public:
  virtual ~RetryBudgetPolicy() = default;

  // A new logical call (its first attempt) starts.
  virtual void OnRequest() = 0;
  // An attempt (first or retry) succeeded.
  virtual void OnAttemptSucceeded() = 0;
  // An attempt failed with a retryable status.
  virtual void OnAttemptFailed() = 0;
  // Whether one more retry may be made now; when true the retry is counted against the budget.
  virtual bool TryAcquireRetry() = 0;
};

// gRPC's retry throttling (A6).
class TokenRetryThrottle final : public RetryBudgetPolicy {
 public:
  struct Options {
    // The token count starts here and never exceeds it; retries stop at half. Larger values let
    // more consecutive failures through before throttling. Default: 10. Must be in (0, 1000].
    double max_tokens = 10;
    // Tokens given back per successful attempt. 0.1 means about ten successes earn back one
    // failure: retries continue while fewer than ~9% of attempts fail. Default: 0.1. Must be in
    // (0, max_tokens]. Kept to 1/1000 of a token, as gRPC does.
    double token_ratio = 0.1;
  };

  // INVALID_ARGUMENT naming the field for values outside the ranges above.
  static absl::StatusOr<std::unique_ptr<TokenRetryThrottle>> Create(Options options);

  void OnRequest() override {}
  void OnAttemptSucceeded() override;
  void OnAttemptFailed() override;
  bool TryAcquireRetry() override;

  // The current token count.
  double tokens() const;

 private:
  TokenRetryThrottle(int64_t max_milli, int64_t ratio_milli)
      : max_milli_(max_milli), ratio_milli_(ratio_milli), milli_tokens_(max_milli) {}

  const int64_t max_milli_;
  const int64_t ratio_milli_;
  // Thousandths of a token. Relaxed is enough: the count is a self-contained statistic that
  // orders no other memory.
  std::atomic<int64_t> milli_tokens_;
};

// Finagle's RetryBudget: retries <= percent * requests(last ttl) + min_retries_per_second * ttl.
class RetryBudget final : public RetryBudgetPolicy {
 public:
  struct Options {
    // Retries allowed as a fraction of the requests seen in the last `ttl`. 0.2 caps the extra
    // load retries add at 20%. Default: 0.2. Must be in [0, 1000].
    double percent = 0.2;
    // A floor that lets a client with little traffic retry at all: this many retries per second
    // are always allowed (averaged over `ttl`). Default: 10. Must be >= 0.
    double min_retries_per_second = 10;
    // How long a request (deposit) or a retry (withdrawal) counts. Longer windows smooth bursts;
    // shorter ones react faster to a traffic change. Default: 10 s. Must be in [1 s, 60 s].
    Duration ttl = std::chrono::seconds(10);
  };

  // INVALID_ARGUMENT naming the field for values outside the ranges above.
  static absl::StatusOr<std::unique_ptr<RetryBudget>> Create(Options options,
                                                             Clock& clock = SteadyClock());

  void OnRequest() override ABSL_LOCKS_EXCLUDED(mu_);
  void OnAttemptSucceeded() override {}
  void OnAttemptFailed() override {}
  bool TryAcquireRetry() override ABSL_LOCKS_EXCLUDED(mu_);

  // Retries that would be allowed now, rounded down.
  int64_t available() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // The window is kept in per-second buckets, so requests leave it at one-second granularity:
  // a deposit counts for between ttl - 1 s and ttl (Finagle's WindowedAdder has the same slack).
  static constexpr int kMaxBuckets = 60;
  static constexpr int64_t kScale = 1000;  // fixed point: one request deposits kScale

  RetryBudget(Options options, Clock& clock);
  // Drops the buckets that left the window. REQUIRES: mu_ held.
  void Expire(int64_t now_second) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t BalanceLocked(int64_t now_second) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  int64_t NowSecond() const;

  Clock& clock_;
  const int buckets_;
  const int64_t withdraw_cost_;  // kScale / percent: one retry costs that many deposits' worth
  const int64_t reserve_;        // min_retries_per_second * ttl retries, in withdraw units
  const int64_t deposit_;        // kScale per request, 0 when percent is 0
  mutable Mutex mu_;
  // Net deposits minus withdrawals per second of the window, indexed by second % buckets_.
  mutable std::array<int64_t, kMaxBuckets> net_ ABSL_GUARDED_BY(mu_){};
  mutable int64_t last_second_ ABSL_GUARDED_BY(mu_);
  mutable int64_t sum_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace keel
