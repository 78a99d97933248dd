// keel::Timer: a min-heap of (time, id) and a map of callbacks, one thread (see timer.h).
#include "keel/async/timer.h"

#include <algorithm>
#include <functional>
#include <utility>

#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"

namespace keel {

absl::StatusOr<std::unique_ptr<Timer>> Timer::Create(TimerOptions options, Clock& clock,
                                                     MetricsRegistry* metrics) {
  if (options.name.empty()) return absl::InvalidArgumentError("timer.name must not be empty");
  std::unique_ptr<Timer> timer(new Timer(std::move(options), clock));
  if (metrics != nullptr) {
    Timer* t = timer.get();
    const Labels labels = {{"name", t->options_.name}};
    auto stat = [t](uint64_t TimerStats::*field) {
      return [t, field] { return static_cast<double>(t->Stats().*field); };
    };
    struct Series {
      const char* name;
      const char* help;
      uint64_t TimerStats::*field;
    };
    for (const Series& s : {
             Series{"keel_timer_scheduled_total", "Callbacks scheduled.",
                    &TimerStats::scheduled_total},
             Series{"keel_timer_fired_total", "Callbacks run.", &TimerStats::fired_total},
             Series{"keel_timer_cancelled_total", "Callbacks cancelled before they ran.",
                    &TimerStats::cancelled_total},
             Series{"keel_timer_callback_exceptions_total", "Callbacks that threw (caught).",
                    &TimerStats::callback_exceptions_total},
         }) {
      KEEL_ASSIGN_OR_RETURN(MetricsRegistry::Registration r,
                            metrics->AddCounterCallback(s.name, s.help, labels, stat(s.field)));
      t->registrations_.push_back(std::move(r));
    }
    KEEL_ASSIGN_OR_RETURN(
        MetricsRegistry::Registration pending,
        metrics->AddGaugeCallback("keel_timer_pending", "Callbacks waiting for their time.", labels,
                                  stat(&TimerStats::pending)));
    t->registrations_.push_back(std::move(pending));
  }
  return timer;
}

Timer::Timer(TimerOptions options, Clock& clock) : options_(std::move(options)), clock_(clock) {
  thread_ = std::thread([this] { Loop(); });
}

Timer::~Timer() {
  registrations_.clear();
  Shutdown();
}

TimerId Timer::Schedule(TimePoint at, absl::AnyInvocable<void()> fn) {
  TimerId id;
  {
    MutexLock lock(mu_);
    if (stop_) return 0;
    id = next_id_++;
    callbacks_.emplace(id, std::move(fn));
    heap_.push_back({at, id});
    std::push_heap(heap_.begin(), heap_.end(), std::greater<>());
    ++scheduled_;
    // Wake the thread only when this entry is the new earliest.
    if (heap_.front().id != id) return id;
  }
  cv_.Signal();
  return id;
}

bool Timer::Cancel(TimerId id) {
  MutexLock lock(mu_);
  if (callbacks_.erase(id) == 0) return false;
  ++cancelled_;  // its heap entry is skipped when it comes up
  return true;
}

Future<void> Timer::SleepUntil(TimePoint at) {
  auto promise = std::make_shared<Promise<void>>(clock_);
  Future<void> future = promise->future();
  // Dropped unrun (Shutdown, or never scheduled): the promise dies and completes CANCELLED.
  Schedule(at, [promise] { promise->Set(absl::OkStatus()); });
  return future;
}

void Timer::Loop() {
  mu_.Lock();
  for (;;) {
    if (stop_) break;
    while (!heap_.empty() && !callbacks_.contains(heap_.front().id)) {
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<>());
      heap_.pop_back();
    }
    const TimePoint next = heap_.empty() ? TimePoint::max() : heap_.front().at;
    if (next != TimePoint::max() && clock_.Now() >= next) {
      const TimerId id = heap_.front().id;
      std::pop_heap(heap_.begin(), heap_.end(), std::greater<>());
      heap_.pop_back();
      auto it = callbacks_.find(id);
      absl::AnyInvocable<void()> fn = std::move(it->second);
      callbacks_.erase(it);
      ++fired_;
      mu_.Unlock();
      try {
        fn();
      } catch (...) {
        exceptions_.fetch_add(1, std::memory_order_relaxed);
      }
      fn = nullptr;  // destroy what it captured outside the lock too
      mu_.Lock();
      continue;
    }
    // Until the earliest entry is due, a new earlier one arrives, or Shutdown.
    const size_t size = heap_.size();
    const TimerId front = heap_.empty() ? 0 : heap_.front().id;
    clock_.WaitUntil(mu_, cv_, next, [&] {
      mu_.AssertHeld();
      return stop_ || heap_.size() != size || (!heap_.empty() && heap_.front().id != front);
    });
  }
  mu_.Unlock();
}

void Timer::Shutdown() {
  absl::flat_hash_map<TimerId, absl::AnyInvocable<void()>> dropped;
  {
    MutexLock lock(mu_);
    stop_ = true;
    dropped.swap(callbacks_);
    heap_.clear();
  }
  cv_.SignalAll();
  std::call_once(joined_, [this] { thread_.join(); });
  dropped.clear();  // outside the lock: SleepUntil's promises complete CANCELLED here
}

TimerStats Timer::Stats() const {
  MutexLock lock(mu_);
  return TimerStats{.scheduled_total = scheduled_,
                    .fired_total = fired_,
                    .cancelled_total = cancelled_,
                    .callback_exceptions_total = exceptions_.load(std::memory_order_relaxed),
                    .pending = callbacks_.size()};
}

}  // namespace keel
