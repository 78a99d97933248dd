// keel/overload/adaptive_limiter.h: a concurrency limit that finds what the dependency can take
// from the latency and drops of the calls it admits.
//
// Defines `keel::overload::AdaptiveLimiter`, its move-only `Permit` and `AdaptiveLimiterStats`.
// The limit comes from a pluggable LimitAlgorithm (limit_algorithm.h): VegasLimit,
// Gradient2Limit, GradientLimit (Envoy's) or AimdLimit. Each call takes a Permit; when it ends the
// caller records its outcome, as Netflix concurrency-limits' Limiter.Listener does:
//
//   OnSuccess()  the dependency answered: its latency is a sample
//   OnDropped()  the dependency rejected it or timed out: a sample marked dropped (shrinks the
//                limit under every algorithm)
//   OnIgnore()   the outcome says nothing about the dependency (the caller gave up, a bad
//                request failed before reaching it): no sample. Destroying an unrecorded permit
//                ignores it.
//
// Over the limit, TryAcquire fails at once with RESOURCE_EXHAUSTED. With Options::queue, Acquire
// waits in a CoDel + adaptive LIFO queue (codel_queue.h) instead, bounded by the queue's timeout
// and the caller's deadline. The Pipeline stage is in adaptive_limit_stage.h, the keyed variant
// (one limiter per dependency or tenant, bounded memory) in keyed_adaptive_limiter.h.
//
// Criticality (keel::Criticality, CallContext::criticality): a call of criticality c is admitted
// only while in_flight < floor(limit * criticality_share[c]) (at least 1), so the least critical
// calls are turned away first as in-flight calls approach the limit, and the headroom above
// their share is reserved for more critical ones (the SRE book's "Handling Overload"). Defaults:
// kCriticalPlus and kCritical may use the whole limit (the algorithm's limit is exactly what
// default traffic gets), kSheddablePlus 90% of it, kSheddable 75%. In the queue, a freed permit
// goes to the most critical waiter first, and a full queue sheds its least critical waiter for a
// more critical newcomer. A waiter is granted only within its own share, so shares must not grow
// with decreasing criticality (Create checks).
//
// Where keel departs from Netflix's SimpleLimiter: the in-flight check and increment are one CAS
// (Netflix reads the limit and increments separately, admitting a few extra under a race, as
// Envoy's forwardingDecision does too); the limit algorithm runs under a spin lock, as Netflix's
// onSample is synchronized. Limit-change listeners run after the lock is released; changes made
// while a listener runs are merged into one call (from the last limit delivered to the current).
//
// Thread safety: thread-safe. A Permit may be recorded on any thread; it is not itself
// thread-safe (move it, do not share it). REQUIRES: the limiter outlives its permits.
//
//   auto limiter = keel::overload::AdaptiveLimiter::Create(
//       {.name = "orders-db"}, keel::overload::VegasLimit::Create({}).value()).value();
//   absl::StatusOr<keel::overload::AdaptiveLimiter::Permit> permit = limiter->TryAcquire();
//   if (!permit.ok()) return permit.status();   // RESOURCE_EXHAUSTED: over the limit
//   absl::Status s = db.Query(sql);
//   if (s.ok()) permit->OnSuccess();
//   else if (absl::IsDeadlineExceeded(s) || absl::IsUnavailable(s)) permit->OnDropped();
//   else permit->OnIgnore();
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/internal/spin_lock.h"
#include "keel/metrics.h"
#include "keel/overload/codel_queue.h"
#include "keel/overload/limit_algorithm.h"
#include "keel/resilience/call_context.h"
#include "keel/sync.h"

namespace keel::overload {

struct AdaptiveLimiterStats;

class AdaptiveLimiter {
 public:
  struct Options {
    // Names the limiter in errors and metrics labels. Default: "adaptive_limiter".
    std::string name = "adaptive_limiter";
    // The fraction of the limit each criticality may fill, indexed by keel::Criticality
    // (kCriticalPlus, kCritical, kSheddablePlus, kSheddable). Each must be in (0, 1] and none may
    // exceed the one before it. Default: {1, 1, 0.9, 0.75}.
    std::array<double, 4> criticality_share = {1.0, 1.0, 0.9, 0.75};
    // With a queue, Acquire waits for a permit in a CoDel + adaptive LIFO queue; without one,
    // Acquire fails at once like TryAcquire. Default: none.
    std::optional<CodelQueueOptions> queue = std::nullopt;
    // Called with (old, new) when the limit changes, never under a lock, on the thread that
    // recorded the sample. May call the limiter. An exception is caught and counted
    // (listener_exceptions_total). Default: none.
    std::function<void(int old_limit, int new_limit)> on_limit_change;
  };

  enum class Outcome { kSuccess, kDropped, kIgnored };

  // One admitted call. Record its outcome once; destroying an unrecorded permit ignores it.
  // Move-only.
  class Permit {
   public:
    Permit(Permit&& other) noexcept
        : owner_(std::exchange(other.owner_, nullptr)),
          start_(other.start_),
          in_flight_(other.in_flight_) {}
    Permit& operator=(Permit&& other) noexcept {
      if (this != &other) {
        OnIgnore();
        owner_ = std::exchange(other.owner_, nullptr);
        start_ = other.start_;
        in_flight_ = other.in_flight_;
      }
      return *this;
    }
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;
    ~Permit() { OnIgnore(); }

    // Records the outcome and frees the slot; later calls (and the destructor) do nothing.
    void OnSuccess() { Record(Outcome::kSuccess); }
    void OnDropped() { Record(Outcome::kDropped); }
    void OnIgnore() { Record(Outcome::kIgnored); }
    void Record(Outcome outcome) {
      if (AdaptiveLimiter* l = std::exchange(owner_, nullptr)) l->Complete(*this, outcome);
    }
    // Whether the permit still holds its slot.
    bool held() const { return owner_ != nullptr; }
    // When it was granted (the start of the latency it records).
    TimePoint start() const { return start_; }

   private:
    friend class AdaptiveLimiter;
    Permit(AdaptiveLimiter* owner, TimePoint start, int in_flight)
        : owner_(owner), start_(start), in_flight_(in_flight) {}
    AdaptiveLimiter* owner_;
    TimePoint start_;
    int in_flight_;  // in flight when granted, itself included
  };

  // Validates `options` (INVALID_ARGUMENT naming the field: `adaptive limiter "db":
  // criticality_share[2] must be in (0, 1], got 0`; `algorithm must be set`). `clock` and
  // `metrics` (optional) must outlive the limiter.
  // Metrics (labels name=<name>, algorithm=<algorithm name>): keel_adaptive_limit,
  // keel_adaptive_limit_in_flight, keel_adaptive_limit_waiting,
  // keel_adaptive_limit_rtt_seconds{estimate=no_load|sample} (gauges),
  // keel_adaptive_limit_calls_total{outcome=success|dropped|ignored} and
  // keel_adaptive_limit_rejected_total{reason=limit|queue_timeout|queue_full|shed|deadline}.
  static absl::StatusOr<std::unique_ptr<AdaptiveLimiter>> Create(
      Options options, std::unique_ptr<LimitAlgorithm> algorithm, Clock& clock = SteadyClock(),
      MetricsRegistry* metrics = nullptr);

  AdaptiveLimiter(const AdaptiveLimiter&) = delete;
  AdaptiveLimiter& operator=(const AdaptiveLimiter&) = delete;
  // REQUIRES: no permit is held and no thread waits in Acquire.
  ~AdaptiveLimiter();

  // A permit if fewer than the criticality's share of the limit are in flight (and, with a
  // queue, nobody waits: no barging). Never waits. Lock-free.
  // Errors: RESOURCE_EXHAUSTED `adaptive limiter "db": limit reached (20/20 in flight)` (no
  // retry-after hint: when a call ends is unknown); CANCELLED after Shutdown().
  absl::StatusOr<Permit> TryAcquire(Criticality criticality = Criticality::kCritical)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Without a queue: TryAcquire. With one: a permit at once if one is free, else waits in the
  // queue until granted, the queue's timeout (target while the queue is standing, interval
  // otherwise) or the deadline (measured on its own clock).
  // Errors: RESOURCE_EXHAUSTED with a retry-after hint of queue.interval when the queue timeout
  // ran out or a more critical caller displaced this one, without a hint when the queue is full;
  // DEADLINE_EXCEEDED when the deadline ran out first; CANCELLED after Shutdown().
  absl::StatusOr<Permit> Acquire(Deadline deadline,
                                 Criticality criticality = Criticality::kCritical)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Wakes every waiter with CANCELLED; later TryAcquire/Acquire fail with CANCELLED. Permits
  // held stay valid. Idempotent.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  // The current limit (a snapshot).
  int limit() const { return limit_.load(std::memory_order_relaxed); }
  int in_flight() const { return in_flight_.load(std::memory_order_relaxed); }
  AdaptiveLimiterStats Stats() const ABSL_LOCKS_EXCLUDED(mu_, algo_mu_);
  const std::string& name() const { return options_.name; }
  const std::string& algorithm_name() const { return algorithm_name_; }
  Clock& clock() const { return clock_; }

 private:
  AdaptiveLimiter(Options options, std::unique_ptr<LimitAlgorithm> algorithm, Clock& clock);
  absl::Status RegisterMetrics(MetricsRegistry& metrics);
  int Cap(int limit, Criticality c) const;
  // One CAS attempt loop: a slot if fewer than the cap are in flight; the in-flight count after.
  std::optional<int> TakeSlot(Criticality c);
  void Complete(const Permit& permit, Outcome outcome) ABSL_LOCKS_EXCLUDED(mu_, algo_mu_);
  // Hands free slots to queued waiters, most critical first.
  void GrantWaiters() ABSL_LOCKS_EXCLUDED(mu_);
  void GrantLocked(TimePoint now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void DeliverLimitChanges() ABSL_LOCKS_EXCLUDED(algo_mu_);
  absl::Status LimitError(Criticality c) const;
  absl::Status CancelledError() const;

  const Options options_;
  Clock& clock_;
  const bool queued_;  // options_.queue is set
  const std::string algorithm_name_;

  // The hot words, on their own line: the limit (written under algo_mu_, read relaxed: a stale
  // limit admits or rejects one call as if it came a moment earlier) and the in-flight count
  // (seq_cst RMWs: with waiting_, a Dekker pair, so a release never misses a new waiter).
  alignas(64) std::atomic<int> limit_;
  std::atomic<int> in_flight_{0};
  std::atomic<int> waiting_{0};  // the queue's size; written under mu_
  std::atomic<bool> shut_down_view_{false};

  // Guards the algorithm and the outcome counters: a few nanoseconds per sample (Envoy's window
  // close sorts at most max_samples_per_window samples), never blocks, never calls user code.
  alignas(64) mutable internal::SpinLock algo_mu_;
  // The pointer never changes after construction; what it points at is guarded.
  const std::unique_ptr<LimitAlgorithm> algorithm_ ABSL_PT_GUARDED_BY(algo_mu_);
  uint64_t success_ ABSL_GUARDED_BY(algo_mu_) = 0;
  uint64_t dropped_ ABSL_GUARDED_BY(algo_mu_) = 0;
  bool change_pending_ ABSL_GUARDED_BY(algo_mu_) = false;
  bool delivering_ ABSL_GUARDED_BY(algo_mu_) = false;
  int delivered_limit_ ABSL_GUARDED_BY(algo_mu_);

  // Guards the queue.
  mutable Mutex mu_;
  std::optional<CodelQueue> queue_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;

  alignas(64) std::atomic<uint64_t> ignored_{0};
  std::atomic<uint64_t> rejected_limit_{0};
  std::atomic<uint64_t> rejected_queue_timeout_{0};
  std::atomic<uint64_t> rejected_queue_full_{0};
  std::atomic<uint64_t> rejected_shed_{0};
  std::atomic<uint64_t> rejected_deadline_{0};
  std::atomic<uint64_t> queued_total_{0};
  std::atomic<uint64_t> listener_exceptions_{0};

  std::vector<MetricsRegistry::Registration> registrations_;  // last: unregistered first
};

// A snapshot of an AdaptiveLimiter (its Stats()); `*_total` counters are cumulative since Create.
struct AdaptiveLimiterStats {
  int limit = 0;
  int in_flight = 0;
  int waiting = 0;  // callers in the queue
  RttEstimates rtt;
  uint64_t success_total = 0;
  uint64_t dropped_total = 0;
  uint64_t ignored_total = 0;
  uint64_t queued_total = 0;                  // callers that waited in the queue
  uint64_t rejected_limit_total = 0;          // over the limit (or the criticality's share)
  uint64_t rejected_queue_timeout_total = 0;  // the CoDel timeout ran out
  uint64_t rejected_queue_full_total = 0;     // the queue held max_waiting, none less critical
  uint64_t rejected_shed_total = 0;           // displaced from the queue by a more critical call
  uint64_t rejected_deadline_total = 0;       // the caller's deadline ran out while queued
  uint64_t listener_exceptions_total = 0;
};

}  // namespace keel::overload
