#include "keel/resilience/retry_budget.h"

#include <algorithm>
#include <cmath>

#include "keel/internal/strings.h"

namespace keel {

// ---- TokenRetryThrottle ----------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<TokenRetryThrottle>> TokenRetryThrottle::Create(Options options) {
  if (!(options.max_tokens > 0 && options.max_tokens <= 1000)) {
    return absl::InvalidArgumentError(internal::StrCat(
        "token_retry_throttle.max_tokens must be in (0, 1000], got ", options.max_tokens));
  }
  if (!(options.token_ratio > 0 && options.token_ratio <= options.max_tokens)) {
    return absl::InvalidArgumentError(internal::StrCat(
        "token_retry_throttle.token_ratio must be in (0, max_tokens], got ", options.token_ratio));
  }
  const auto max_milli = static_cast<int64_t>(std::llround(options.max_tokens * 1000));
  // A ratio below 1/1000 would round to zero and never give tokens back: keep at least one.
  const auto ratio_milli =
      std::max<int64_t>(1, static_cast<int64_t>(std::llround(options.token_ratio * 1000)));
  return std::unique_ptr<TokenRetryThrottle>(new TokenRetryThrottle(max_milli, ratio_milli));
}

void TokenRetryThrottle::OnAttemptSucceeded() {
  int64_t t = milli_tokens_.load(std::memory_order_relaxed);
  // Relaxed: a statistic ordering nothing else; the CAS keeps the count exact and bounded.
  while (t < max_milli_ &&
         !milli_tokens_.compare_exchange_weak(t, std::min(max_milli_, t + ratio_milli_),
                                              std::memory_order_relaxed)) {
  }
}

void TokenRetryThrottle::OnAttemptFailed() {
  int64_t t = milli_tokens_.load(std::memory_order_relaxed);
  while (t > 0 && !milli_tokens_.compare_exchange_weak(t, std::max<int64_t>(0, t - 1000),
                                                       std::memory_order_relaxed)) {
  }
}

bool TokenRetryThrottle::TryAcquireRetry() {
  // A6: retries are allowed while token_count > max_tokens / 2. The failure that prompted this
  // retry has already been charged by OnAttemptFailed, so asking costs nothing more.
  return 2 * milli_tokens_.load(std::memory_order_relaxed) > max_milli_;
}

double TokenRetryThrottle::tokens() const {
  return static_cast<double>(milli_tokens_.load(std::memory_order_relaxed)) / 1000;
}

// ---- RetryBudget -----------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<RetryBudget>> RetryBudget::Create(Options options, Clock& clock) {
  if (!(options.percent >= 0 && options.percent <= 1000)) {
    return absl::InvalidArgumentError(
        internal::StrCat("retry_budget.percent must be in [0, 1000], got ", options.percent));
  }
  if (!(options.min_retries_per_second >= 0 && std::isfinite(options.min_retries_per_second))) {
    return absl::InvalidArgumentError(internal::StrCat(
        "retry_budget.min_retries_per_second must be >= 0, got ", options.min_retries_per_second));
  }
  if (options.ttl < std::chrono::seconds(1) || options.ttl > std::chrono::seconds(kMaxBuckets)) {
    return absl::InvalidArgumentError(
        internal::StrCat("retry_budget.ttl must be in [1s, 60s], got ",
                         std::chrono::duration<double>(options.ttl).count(), "s"));
  }
  return std::unique_ptr<RetryBudget>(new RetryBudget(options, clock));
}

RetryBudget::RetryBudget(Options options, Clock& clock)
    : clock_(clock),
      buckets_(static_cast<int>(std::chrono::ceil<std::chrono::seconds>(options.ttl).count())),
      // With percent 0 a deposit is worth nothing (see OnRequest) and only the reserve remains.
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

void RetryBudget::OnRequest() {
  const int64_t now = NowSecond();
  MutexLock lock(mu_);
  Expire(now);
  net_[static_cast<size_t>(now % buckets_)] += deposit_;
  sum_ += deposit_;
}

bool RetryBudget::TryAcquireRetry() {
  const int64_t now = NowSecond();
  MutexLock lock(mu_);
  if (BalanceLocked(now) < withdraw_cost_) return false;
  net_[static_cast<size_t>(now % buckets_)] -= withdraw_cost_;
  sum_ -= withdraw_cost_;
  return true;
}

int64_t RetryBudget::available() const {
  const int64_t now = NowSecond();
  MutexLock lock(mu_);
  return std::max<int64_t>(0, BalanceLocked(now) / withdraw_cost_);
}

}  // namespace keel
