// keel/overload/codel_queue.h: the waiting queue of a limiter or bulkhead under overload:
// controlled delay (CoDel) timeouts, adaptive LIFO and criticality.
//
// Defines `keel::overload::CodelQueueOptions` and `keel::overload::CodelQueue`, the queue that
// keel::overload::AdaptiveLimiter and keel::SemaphoreBulkhead (Options::queue) put callers in when
// no permit is free. It implements Facebook's rule ("Fail at Scale", ACM Queue 2015):
//
// - Controlled delay: a caller queued while the queue has not been empty within the last
//   `interval` (the queue is standing: it holds more than it drains) waits at most `target`;
//   otherwise at most `interval`. A burst after idle gets the long timeout and is absorbed; a
//   standing queue turns over every `target` instead of adding latency to every request.
// - Adaptive LIFO: waiters are served oldest first normally, newest first while the queue is
//   standing, so that the callers most likely still waiting are the ones served.
// - Criticality: a freed permit goes to the most critical waiter first (keel::Criticality,
//   kCriticalPlus before kCritical before kSheddablePlus before kSheddable), FIFO or LIFO within a
//   level as above. When `max_waiting` callers wait, a newcomer displaces the newest waiter of the
//   least critical level below its own (that waiter fails at once, "shed"); with none below, the
//   newcomer is refused.
//
// "Empty" is measured on the owner's clock: the queue remembers when it last became non-empty.
// The caller's own deadline still bounds every wait (whichever ends first wins).
//
// Thread safety: not thread-safe. The owner keeps it under its own mutex and passes that mutex
// to Wait(); every method REQUIRES it held.
//
//   keel::MutexLock lock(mu_);
//   keel::overload::CodelQueue::Waiter me(ctx.criticality);
//   const keel::Duration timeout = queue_.TimeoutFor(clock_.Now());
//   if (!queue_.Push(me, clock_.Now())) return Full();
//   switch (queue_.Wait(mu_, me, timeout, deadline, clock_, shut_down_)) { ... }
//   // and where a permit frees: if (auto* w = queue_.Next(now)) { queue_.Grant(*w, now);
//   //                                                             w->cv.Signal(); }
#pragma once

#include <array>
#include <chrono>
#include <cstddef>
#include <list>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/internal/validate.h"
#include "keel/resilience/call_context.h"
#include "keel/sync.h"

namespace keel::overload {

struct CodelQueueOptions {
  // The wait allowed while the queue is standing. Must be > 0 and <= interval. Default: 5 ms
  // (Facebook's M). Set it near the latency you can add to a request without anyone noticing.
  Duration target = std::chrono::milliseconds(5);
  // How long the queue may stay non-empty before it counts as standing, and the wait allowed
  // when it is not. Must be > 0. Default: 100 ms (Facebook's N).
  Duration interval = std::chrono::milliseconds(100);
  // The most callers waiting at once. Must be >= 1. Default: 1000.
  int max_waiting = 1000;
  // Serve newest first while the queue is standing. Default: true.
  bool adaptive_lifo = true;
};

class CodelQueue {
 public:
  using Options = CodelQueueOptions;

  // One waiting caller; lives on its thread's stack while it waits.
  struct Waiter {
    explicit Waiter(Criticality c = Criticality::kCritical) : criticality(c) {}
    CondVar cv;
    Criticality criticality;
    TimePoint enqueued{};
    bool granted = false;  // the owner handed it a permit (and removed it from the queue)
    bool shed = false;     // displaced by a more critical newcomer (and removed)
    bool queued = false;
    std::list<Waiter*>::iterator pos;
    // The owner's record of the grant (what the permit it hands over needs).
    TimePoint granted_at{};
    int grant_token = 0;
  };

  // How a wait ended.
  enum class WaitEnd { kGranted, kQueueTimeout, kDeadline, kShed, kShutdown };

  // INVALID_ARGUMENT naming the field under `of` (`adaptive limiter "db": queue.target must be
  // > 0, got 0`).
  static absl::Status Validate(const keel::internal::OptionsOf& of, const Options& options);

  // REQUIRES: `options` passed Validate. `now`: the queue counts as empty until then.
  CodelQueue(Options options, TimePoint now) : options_(options), last_empty_(now) {}

  // The longest the queue lets a caller who arrives at `now` wait: target while standing,
  // interval otherwise.
  Duration TimeoutFor(TimePoint now) const;
  // Whether the queue has not been empty within the last interval.
  bool Standing(TimePoint now) const;

  // Queues `w` at `now`. When max_waiting callers wait already, sheds the newest waiter of the
  // least critical level below w's (marking it shed and signalling it) to make room, or returns
  // false (w is not queued).
  bool Push(Waiter& w, TimePoint now);
  // The waiter a freed permit goes to (most critical level; oldest, or newest while standing),
  // without removing it; nullptr when empty.
  Waiter* Next(TimePoint now) const;
  // Removes `w` (the result of Next) and marks it granted; the caller signals it.
  void Grant(Waiter& w, TimePoint now);
  // Removes `w` if it is still queued (a waiter that timed out).
  void Remove(Waiter& w, TimePoint now);

  // Blocks on w.cv (releasing `mu`) until w is granted or shed, `shut_down` becomes true,
  // `timeout` (its TimeoutFor at Push) has passed since the wait began, or `deadline` passes;
  // both are measured on the deadline's clock, or on `clock` (the owner's) when the deadline is
  // infinite. Removes w from the queue unless it was granted or shed.
  // REQUIRES: `w` was pushed.
  WaitEnd Wait(Mutex& mu, Waiter& w, Duration timeout, Deadline deadline, const Clock& clock,
               const bool& shut_down) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu);

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const Options& options() const { return options_; }
  // Every waiter, for a shutdown that wakes them all.
  template <typename F>
  void ForEach(F f) const {
    for (const auto& level : levels_) {
      for (Waiter* w : level) f(*w);
    }
  }

 private:
  void Erase(Waiter& w, TimePoint now);

  const Options options_;
  // One FIFO per criticality level, indexed by its value (kCriticalPlus = 0).
  std::array<std::list<Waiter*>, 4> levels_;
  size_t size_ = 0;
  // When the queue last went from empty to non-empty (or was created): it has not been empty
  // since, if size_ > 0.
  TimePoint last_empty_;
};

}  // namespace keel::overload
