// The watchdog that ends blocked libpq calls at their deadline (see
// keel/postgres/internal/watchdog.h).
#include "keel/postgres/internal/watchdog.h"

#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>

namespace keel::postgres::internal {

using SteadyTime = std::chrono::steady_clock::time_point;

Watchdog::Watchdog() : abort_fd_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  thread_ = std::thread([this] { Loop(); });
}

Watchdog::~Watchdog() {
  {
    MutexLock lock(mu_);
    stop_ = true;
    cv_.Signal();
  }
  thread_.join();
  if (abort_fd_ >= 0) ::close(abort_fd_);
}

void Watchdog::Abort() {
  // An eventfd stays readable once written: every poll that includes it returns from now on.
  const uint64_t one = 1;
  if (abort_fd_ >= 0) {
    [[maybe_unused]] const ssize_t n = ::write(abort_fd_, &one, sizeof one);
  }
}

void Watchdog::CapAt(SteadyTime by) {
  MutexLock lock(mu_);
  cap_ = std::min(cap_, by);
  // Re-key the watches due later than the cap.
  for (auto it = queue_.upper_bound(cap_); it != queue_.end();) {
    Watch* w = it->second;
    it = queue_.erase(it);
    w->it_ = queue_.emplace(cap_, w);
  }
  if (cap_ < wake_at_) {
    wake_at_ = cap_;
    cv_.Signal();
  }
}

void Watchdog::Arm(Watch* w, SteadyTime at) {
  MutexLock lock(mu_);
  at = std::min(at, cap_);
  w->it_ = queue_.emplace(at, w);
  w->armed_ = true;
  if (at < wake_at_) {
    wake_at_ = at;
    cv_.Signal();
  }
}

bool Watchdog::Disarm(Watch* w) {
  MutexLock lock(mu_);
  if (!w->fired_) queue_.erase(w->it_);
  w->armed_ = false;
  return w->fired_;
}

void Watchdog::FireLocked(Queue::iterator it) {
  Watch* w = it->second;
  // shutdown(2) does not block; it runs under the mutex so that the Watch's owner cannot disarm
  // and close the descriptor in between (which would let the call hit a reused descriptor).
  ::shutdown(w->fd_, SHUT_RDWR);
  w->fired_ = true;
  w->by_shutdown_ = cap_ != SteadyTime::max() && it->first >= cap_;
  queue_.erase(it);
}

void Watchdog::Loop() {
  MutexLock lock(mu_);
  while (!stop_) {
    const SteadyTime now = std::chrono::steady_clock::now();
    while (!queue_.empty() && queue_.begin()->first <= now) FireLocked(queue_.begin());
    wake_at_ = queue_.empty() ? SteadyTime::max() : queue_.begin()->first;
    if (wake_at_ == SteadyTime::max()) {
      cv_.Wait(mu_);
    } else {
      cv_.WaitUntil(mu_, wake_at_);
    }
  }
}

Watch::Watch(Watchdog& dog, int fd, const Deadline& deadline) : dog_(&dog), fd_(fd) {
  if (fd < 0) return;  // no socket: nothing can block on it
  const Duration left = deadline.Remaining();
  const SteadyTime now = std::chrono::steady_clock::now();
  const SteadyTime at = left >= SteadyTime::max() - now ? SteadyTime::max() : now + left;
  dog_->Arm(this, at);
}

bool Watch::Disarm() {
  if (!armed_) return fired_;
  return dog_->Disarm(this);
}

}  // namespace keel::postgres::internal
