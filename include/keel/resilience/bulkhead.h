// keel/resilience/bulkhead.h: cap how many calls run at once, so one slow dependency cannot take
// every thread of the service with it.
//
// Defines `keel::SemaphoreBulkhead` and its move-only `SemaphoreBulkhead::Permit`: a counting
// semaphore with FIFO waiters (no barging: a released permit goes to the longest waiter before any
// newcomer), deadline-aware waits and a Shutdown that fails waiters with CANCELLED. The thread
// pool variant, which also bounds the time a caller waits for a result, is in
// keel/resilience/thread_pool_bulkhead.h.
//
// With Options::queue, waiters wait in a CoDel + adaptive LIFO queue instead
// (keel/overload/codel_queue.h): a caller arriving while the queue has not been empty within the
// last `interval` waits at most `target`, others at most `interval`; waiters are served oldest
// first normally, newest first while the queue is standing, and most critical first
// (Acquire's criticality). Without it (the default), waiters are served strictly FIFO and wait
// up to max_wait, as before.
//
// Thread safety: thread-safe. Permits may be released on any thread.
//
//   auto bulkhead = keel::SemaphoreBulkhead::Create({.name = "ai-calls",
//                                                    .max_concurrent = 8,
//                                                    .max_wait = 50ms}).value();
//   absl::StatusOr<keel::SemaphoreBulkhead::Permit> permit =
//       bulkhead->Acquire(keel::Deadline::After(200ms));
//   if (!permit.ok()) return permit.status();  // RESOURCE_EXHAUSTED or DEADLINE_EXCEEDED
//   auto answer = CallModel(prompt);           // at most 8 of these run at once
//   // the permit is released when it goes out of scope (or by permit->Release())
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <list>
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
#include "keel/metrics.h"
#include "keel/overload/codel_queue.h"
#include "keel/resilience/call_context.h"
#include "keel/sync.h"

namespace keel {

struct SemaphoreBulkheadStats;

class SemaphoreBulkhead {
 public:
  struct Options {
    // Names the bulkhead in errors and metrics labels. Default: "bulkhead".
    std::string name = "bulkhead";

    // How many permits may be held at once. Must be >= 1. Default: 25. Size it to what the
    // dependency (or the share of threads you give it) can serve at its p99 latency.
    int max_concurrent = 25;

    // How long Acquire() may wait for a permit (further bounded by the caller's deadline).
    // Must be >= 0; zero rejects at once when full (Resilience4j's default). Default: 0.
    Duration max_wait = Duration::zero();

    // Wait in a CoDel + adaptive LIFO queue (see above) instead of FIFO up to max_wait, which
    // must then be 0 (the queue's timeouts bound the wait). Default: none.
    std::optional<overload::CodelQueueOptions> queue = std::nullopt;
  };

  // One unit of the bulkhead's capacity. Released when destroyed or by Release(). Move-only.
  // REQUIRES: the bulkhead outlives its permits.
  class Permit {
   public:
    Permit(Permit&& other) noexcept : bulkhead_(std::exchange(other.bulkhead_, nullptr)) {}
    Permit& operator=(Permit&& other) noexcept {
      if (this != &other) {
        Release();
        bulkhead_ = std::exchange(other.bulkhead_, nullptr);
      }
      return *this;
    }
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;
    ~Permit() { Release(); }

    // Gives the permit back early. Idempotent.
    void Release() {
      if (SemaphoreBulkhead* b = std::exchange(bulkhead_, nullptr)) b->ReleaseOne();
    }

   private:
    friend class SemaphoreBulkhead;
    explicit Permit(SemaphoreBulkhead* bulkhead) : bulkhead_(bulkhead) {}
    SemaphoreBulkhead* bulkhead_;
  };

  // Validates `options`. `clock` and `metrics` (optional) must outlive the bulkhead.
  // Metrics (label name=<name>): keel_bulkhead_in_use, keel_bulkhead_waiting,
  // keel_bulkhead_max_concurrent (gauges), keel_bulkhead_acquired_total,
  // keel_bulkhead_rejected_total{reason=full|deadline}.
  // Errors: INVALID_ARGUMENT naming the bad field (`bulkhead.max_concurrent must be >= 1, got 0`).
  static absl::StatusOr<std::unique_ptr<SemaphoreBulkhead>> Create(
      Options options, Clock& clock = SteadyClock(), MetricsRegistry* metrics = nullptr);

  SemaphoreBulkhead(const SemaphoreBulkhead&) = delete;
  SemaphoreBulkhead& operator=(const SemaphoreBulkhead&) = delete;
  // REQUIRES: no permit is held and no thread is waiting in Acquire().
  ~SemaphoreBulkhead();

  // Takes a permit if one is free and nobody is waiting for one. Never blocks.
  // Errors: RESOURCE_EXHAUSTED `bulkhead "name": full (25/25 in use)` (no retry-after hint: the
  // bulkhead cannot know when a call will end); CANCELLED after Shutdown().
  absl::StatusOr<Permit> TryAcquire() ABSL_LOCKS_EXCLUDED(mu_);

  // Takes a permit, waiting in FIFO order until min(deadline, now + max_wait) if none is free,
  // both measured on the deadline's own clock (an infinite deadline: max_wait on the bulkhead's).
  // With Options::queue, waits in the CoDel queue instead, until the queue's timeout or the
  // deadline; `criticality` orders the waiters (ignored without a queue).
  // Errors: DEADLINE_EXCEEDED when the caller's deadline is what ran out (it came first, or was
  // already expired); RESOURCE_EXHAUSTED when max_wait ran out first, and with a queue when the
  // queue's timeout ran out or a more critical caller displaced this one from a full queue (both
  // with a retry-after hint of queue.interval) or the queue was full (no hint); CANCELLED when
  // Shutdown() was called before or during the wait.
  absl::StatusOr<Permit> Acquire(Deadline deadline,
                                 Criticality criticality = Criticality::kCritical)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Wakes every waiter with CANCELLED; every later TryAcquire/Acquire fails with CANCELLED.
  // Permits already held stay valid and are released as usual. Idempotent.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  SemaphoreBulkheadStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);
  const std::string& name() const { return options_.name; }

 private:
  struct Waiter {
    CondVar cv;
    bool granted = false;
  };

  SemaphoreBulkhead(Options options, Clock& clock) : options_(std::move(options)), clock_(clock) {
    if (options_.queue) queue_.emplace(*options_.queue, clock_.Now());
  }
  absl::StatusOr<Permit> AcquireQueued(Deadline deadline, Criticality criticality)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool NobodyWaits() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return waiters_.empty() && (!queue_ || queue_->empty());
  }
  absl::Status RegisterMetrics(MetricsRegistry& metrics);
  void ReleaseOne() ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status FullError() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CancelledError() const;

  const Options options_;
  Clock& clock_;

  mutable Mutex mu_;
  int in_use_ ABSL_GUARDED_BY(mu_) = 0;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  // FIFO of waiting callers (each node lives on its waiter's stack). A released permit is handed
  // straight to the front waiter, so in_use_ never drops and a newcomer cannot barge in.
  std::list<Waiter*> waiters_ ABSL_GUARDED_BY(mu_);
  // With Options::queue, callers wait here instead of in waiters_.
  std::optional<overload::CodelQueue> queue_ ABSL_GUARDED_BY(mu_);

  // Written under mu_ (load + store), read relaxed by Stats() and metrics callbacks.
  std::atomic<int> in_use_view_{0};
  std::atomic<int> waiting_view_{0};
  std::atomic<uint64_t> acquired_{0};
  std::atomic<uint64_t> rejected_full_{0};
  std::atomic<uint64_t> rejected_deadline_{0};
  std::atomic<uint64_t> rejected_queue_timeout_{0};  // queue timeout or shed (with a queue)

  std::vector<MetricsRegistry::Registration> registrations_;  // last: unregistered first
};

// A snapshot of a SemaphoreBulkhead (its Stats()); counters (`*_total`) are cumulative since
// Create.
struct SemaphoreBulkheadStats {
  int max_concurrent = 0;
  int in_use = 0;   // permits held now
  int waiting = 0;  // callers queued in Acquire()
  uint64_t acquired_total = 0;
  uint64_t rejected_total = 0;   // RESOURCE_EXHAUSTED: full (TryAcquire) or max_wait ran out
  uint64_t timed_out_total = 0;  // DEADLINE_EXCEEDED: the caller's deadline ran out
  // RESOURCE_EXHAUSTED from the queue (Options::queue): its timeout ran out, or the caller was
  // displaced by a more critical one. Not counted in rejected_total.
  uint64_t queue_timed_out_total = 0;
  bool shut_down = false;
};

}  // namespace keel
