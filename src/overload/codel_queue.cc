#include "keel/overload/codel_queue.h"

#include "keel/internal/status_macros.h"

namespace keel::overload {

absl::Status CodelQueue::Validate(const keel::internal::OptionsOf& of, const Options& o) {
  namespace ki = keel::internal;
  KEEL_RETURN_IF_ERROR(ki::RequirePositive(of, "queue.target", o.target));
  KEEL_RETURN_IF_ERROR(ki::RequirePositive(of, "queue.interval", o.interval));
  if (o.target > o.interval) return ki::InvalidOption(of, "queue.target", "<= interval", o.target);
  return ki::RequireAtLeast(of, "queue.max_waiting", o.max_waiting, 1);
}

bool CodelQueue::Standing(TimePoint now) const {
  return size_ > 0 && now - last_empty_ >= options_.interval;
}

Duration CodelQueue::TimeoutFor(TimePoint now) const {
  return Standing(now) ? options_.target : options_.interval;
}

bool CodelQueue::Push(Waiter& w, TimePoint now) {
  if (size_ >= static_cast<size_t>(options_.max_waiting)) {
    // Make room by shedding the newest waiter of the least critical level below w's.
    Waiter* victim = nullptr;
    for (int level = 3; level > static_cast<int>(w.criticality); --level) {
      if (!levels_[level].empty()) {
        victim = levels_[level].back();
        break;
      }
    }
    if (victim == nullptr) return false;
    Erase(*victim, now);
    victim->shed = true;
    // Signalled under the owner's lock: the victim's node lives on its stack.
    victim->cv.Signal();
  }
  if (size_ == 0) last_empty_ = now;
  auto& level = levels_[static_cast<int>(w.criticality)];
  w.enqueued = now;
  w.pos = level.insert(level.end(), &w);
  w.queued = true;
  ++size_;
  return true;
}

CodelQueue::Waiter* CodelQueue::Next(TimePoint now) const {
  const bool lifo = options_.adaptive_lifo && Standing(now);
  for (const auto& level : levels_) {
    if (!level.empty()) return lifo ? level.back() : level.front();
  }
  return nullptr;
}

void CodelQueue::Erase(Waiter& w, TimePoint now) {
  levels_[static_cast<int>(w.criticality)].erase(w.pos);
  w.queued = false;
  --size_;
  if (size_ == 0) last_empty_ = now;
}

void CodelQueue::Grant(Waiter& w, TimePoint now) {
  Erase(w, now);
  w.granted = true;
}

void CodelQueue::Remove(Waiter& w, TimePoint now) {
  if (w.queued) Erase(w, now);
}

CodelQueue::WaitEnd CodelQueue::Wait(Mutex& mu, Waiter& w, Duration timeout, Deadline deadline,
                                     const Clock& clock, const bool& shut_down) {
  // Like the bulkhead, the wait is measured on the deadline's own clock (the owner's when the
  // deadline is infinite), so a caller's timeline is honoured whatever clock the owner has.
  const Clock& wait_clock = deadline.IsInfinite() ? clock : deadline.clock();
  const TimePoint start = wait_clock.Now();
  const TimePoint own_limit = start + timeout;
  const bool deadline_first = deadline.time() <= own_limit;
  const TimePoint until = deadline_first ? deadline.time() : own_limit;
  wait_clock.WaitUntil(mu, w.cv, until, [&] {
    mu.AssertHeld();
    return w.granted || w.shed || shut_down;
  });
  if (w.granted) return WaitEnd::kGranted;  // wins over a shutdown or timeout that raced it
  if (w.shed) return WaitEnd::kShed;
  Remove(w, clock.Now());
  if (shut_down) return WaitEnd::kShutdown;
  return deadline_first ? WaitEnd::kDeadline : WaitEnd::kQueueTimeout;
}

}  // namespace keel::overload
