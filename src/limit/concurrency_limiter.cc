#include "keel/limit/concurrency_limiter.h"

#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::limit {

absl::StatusOr<std::unique_ptr<ConcurrencyLimiter>> ConcurrencyLimiter::Create(Options options) {
  if (auto s = keel::internal::RequireAtLeast("concurrency_limiter", "max", options.max, 1);
      !s.ok()) {
    return s;
  }
  return std::unique_ptr<ConcurrencyLimiter>(new ConcurrencyLimiter(options.max));
}

std::optional<ConcurrencyLimiter::Permit> ConcurrencyLimiter::TryAcquire() {
  // Acquire on success pairs with the release in Permit::Release: whatever the previous holder
  // of a slot did before releasing it happens-before the next holder's work, the guarantee users
  // expect from anything called a permit. Failure needs no ordering.
  int64_t observed = in_flight_.load(std::memory_order_relaxed);
  while (observed < max_) {
    if (in_flight_.compare_exchange_weak(observed, observed + 1, std::memory_order_acquire,
                                         std::memory_order_relaxed)) {
      acquired_.fetch_add(1, std::memory_order_relaxed);
      return Permit(this);
    }
  }
  rejected_.fetch_add(1, std::memory_order_relaxed);
  return std::nullopt;
}

void ConcurrencyLimiter::Permit::Release() {
  if (owner_ == nullptr) return;
  owner_->in_flight_.fetch_sub(1, std::memory_order_release);
  owner_ = nullptr;
}

}  // namespace keel::limit
