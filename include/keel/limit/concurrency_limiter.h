// keel/limit/concurrency_limiter.h: at most `max` in flight at once ("5 concurrent chat messages
// per user"), with move-only permits that give the slot back when they die.
//
// Defines `keel::limit::ConcurrencyLimiter`, its `Permit` and `ConcurrencyLimiterStats`.
//
// Semantics (exact): TryAcquire() hands out a Permit while fewer than `max` are held, and nothing
// otherwise (rejection is a value: an empty optional). It never waits: a limiter that queues is a
// bulkhead. Destroying a Permit, or calling Release(), frees its slot once.
//
// Thread safety: thread-safe; lock-free (one atomic counter). A Permit is not itself thread-safe
// (move it, do not share it). REQUIRES: the limiter outlives its permits.
//
//   auto chats = keel::limit::ConcurrencyLimiter::Create({.max = 5}).value();
//   std::optional<keel::limit::ConcurrencyLimiter::Permit> permit = chats->TryAcquire();
//   if (!permit) return TooManyRequests();
//   Stream(reply);   // the slot is freed when `permit` goes out of scope
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <utility>

#include "absl/status/statusor.h"

namespace keel::limit {

struct ConcurrencyLimiterStats {
  int64_t in_flight = 0;        // permits held now
  uint64_t acquired_total = 0;  // permits handed out
  uint64_t rejected_total = 0;  // refused: `max` were held
};

class ConcurrencyLimiter {
 public:
  struct Options {
    // The most permits held at once. Required: must be >= 1.
    int64_t max = 0;
  };

  class Permit {
   public:
    Permit(Permit&& other) noexcept : owner_(std::exchange(other.owner_, nullptr)) {}
    Permit& operator=(Permit&& other) noexcept {
      if (this != &other) {
        Release();
        owner_ = std::exchange(other.owner_, nullptr);
      }
      return *this;
    }
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;
    ~Permit() { Release(); }

    // Frees the slot now; later calls (and the destructor) do nothing.
    void Release();
    // Whether this permit still holds a slot.
    bool held() const { return owner_ != nullptr; }

   private:
    friend class ConcurrencyLimiter;
    explicit Permit(ConcurrencyLimiter* owner) : owner_(owner) {}
    ConcurrencyLimiter* owner_;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field). Returned by pointer: permits point
  // at the limiter, so it must not move.
  static absl::StatusOr<std::unique_ptr<ConcurrencyLimiter>> Create(Options options);

  // A permit if fewer than `max` are held, else nullopt. Never waits.
  std::optional<Permit> TryAcquire();

  // Permits held right now (a snapshot).
  int64_t in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  // A snapshot of the counters (relaxed loads: each exact, not taken together).
  ConcurrencyLimiterStats Stats() const {
    return {.in_flight = in_flight(),
            .acquired_total = acquired_.load(std::memory_order_relaxed),
            .rejected_total = rejected_.load(std::memory_order_relaxed)};
  }
  int64_t max() const { return max_; }

 private:
  explicit ConcurrencyLimiter(int64_t max) : max_(max) {}

  const int64_t max_;
  alignas(64) std::atomic<int64_t> in_flight_{0};
  // Counted apart from in_flight_ (own cache line) so that the permit CAS does not share a line
  // with them; relaxed, they order nothing.
  alignas(64) std::atomic<uint64_t> acquired_{0};
  std::atomic<uint64_t> rejected_{0};
};

}  // namespace keel::limit
