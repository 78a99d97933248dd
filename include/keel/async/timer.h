// keel/async/timer.h: one thread that runs callbacks at their time, so that waiting calls (retry
// backoff, async deadlines) hold a heap entry instead of a thread.
//
// Defines `keel::Timer`, `keel::TimerOptions`, `keel::TimerStats` and `keel::TimerId`.
//
//   auto timer = keel::Timer::Create({.name = "io"}, keel::SteadyClock(), &metrics).value();
//   keel::TimerId id = timer->Schedule(clock.Now() + 50ms, [] { Probe(); });
//   timer->Cancel(id);                        // true: removed before it ran
//   co_await timer->Sleep(100ms);             // in a coroutine: no thread waits
//
// Callbacks run on the timer's thread, one at a time, in time order (ties in scheduling order);
// a callback that blocks delays every later one: keep them short (complete a promise, post to an
// executor). A callback that throws is caught and counted (callback_exceptions_total). Time is
// the injected Clock's: under a ManualClock, callbacks run when the test advances the clock past
// their time.
//
// Thread safety: thread-safe. Callbacks may call Schedule and Cancel.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "keel/async/future.h"
#include "keel/clock.h"
#include "keel/internal/time_math.h"
#include "keel/metrics.h"
#include "keel/sync.h"

namespace keel {

// Names a scheduled callback for Cancel. 0 is never a valid id.
using TimerId = uint64_t;

struct TimerOptions {
  // Names the timer in metrics (label `name`) and errors. Default: "timer".
  std::string name = "timer";
};

struct TimerStats {
  uint64_t scheduled_total = 0;
  uint64_t fired_total = 0;
  uint64_t cancelled_total = 0;            // removed by Cancel before they ran
  uint64_t callback_exceptions_total = 0;  // callbacks that threw (caught)
  uint64_t pending = 0;                    // scheduled, not yet run or cancelled
};

class Timer {
 public:
  // Starts the timer's thread. `clock` (and `metrics`, when given: counters
  // keel_timer_{scheduled,fired,cancelled,callback_exceptions}_total and the gauge
  // keel_timer_pending, labelled name=<name>) must outlive the Timer.
  // Errors: INVALID_ARGUMENT for an empty name; a metric registration error.
  static absl::StatusOr<std::unique_ptr<Timer>> Create(TimerOptions options = {},
                                                       Clock& clock = SteadyClock(),
                                                       MetricsRegistry* metrics = nullptr);
  ~Timer();  // Shutdown()
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  // Runs `fn` on the timer's thread once the clock reaches `at` (at once if it has). After
  // Shutdown the callback is dropped unrun and 0 is returned.
  TimerId Schedule(TimePoint at, absl::AnyInvocable<void()> fn) ABSL_LOCKS_EXCLUDED(mu_);
  // Removes a callback that has not started; true if it was removed (it will never run).
  bool Cancel(TimerId id) ABSL_LOCKS_EXCLUDED(mu_);

  // A future completed with OK once the clock reaches `at`, or CANCELLED at Shutdown.
  Future<void> SleepUntil(TimePoint at);
  Future<void> Sleep(Duration d) { return SleepUntil(internal::AddSaturating(clock_.Now(), d)); }

  // Drops every pending callback unrun (those of SleepUntil complete their futures with
  // CANCELLED) and joins the thread; later Schedules are dropped. Idempotent. REQUIRES: not
  // called from a timer callback.
  void Shutdown() ABSL_LOCKS_EXCLUDED(mu_);

  TimerStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);
  Clock& clock() const { return clock_; }

 private:
  struct Entry {
    TimePoint at;
    TimerId id;  // ids grow: ties run in scheduling order
    bool operator>(const Entry& o) const { return at != o.at ? at > o.at : id > o.id; }
  };
  Timer(TimerOptions options, Clock& clock);
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);

  const TimerOptions options_;
  Clock& clock_;
  mutable Mutex mu_;
  CondVar cv_;
  std::vector<Entry> heap_ ABSL_GUARDED_BY(mu_);  // min-heap by (at, id); cancelled ids linger
  absl::flat_hash_map<TimerId, absl::AnyInvocable<void()>> callbacks_ ABSL_GUARDED_BY(mu_);
  TimerId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t scheduled_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t fired_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t cancelled_ ABSL_GUARDED_BY(mu_) = 0;
  std::atomic<uint64_t> exceptions_{0};
  std::thread thread_;
  std::once_flag joined_;
  // Last: removed from the registry before the counters they read.
  std::vector<MetricsRegistry::Registration> registrations_;
};

}  // namespace keel
