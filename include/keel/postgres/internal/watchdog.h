// keel/postgres/internal/watchdog.h: ends blocked libpq calls at their deadline. Not part of
// keel's API (included by keel/postgres/pool.h).
//
// Defines `keel::postgres::internal::Watchdog` (one thread per postgres::Pool) and `Watch` (one
// armed deadline for one call on one socket).
//
// Why: statements run through libpqxx block inside libpq, which waits in poll() without a timeout;
// a paused server or a silent network would hold the caller for the kernel's TCP timeout. The
// watchdog calls shutdown(2) on the socket of a call whose deadline passed: the blocked poll()
// returns at once, libpq reports the connection lost, and the pool discards the connection (the
// caller sees DEADLINE_EXCEEDED). shutdown(2) leaves the descriptor open, so it can never hit a
// descriptor that was closed and reused: a Watch is disarmed (under the watchdog's mutex) before
// its connection can be closed.
//
// Thread safety: Watchdog is thread-safe; a Watch belongs to the thread that armed it.
#pragma once

#include <chrono>
#include <map>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/sync.h"

namespace keel::postgres::internal {

class Watch;

class Watchdog {
 public:
  Watchdog();
  ~Watchdog();  // joins the thread; REQUIRES: no Watch is armed
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;

  // From now on every armed and future Watch fires at `by` at the latest (Pool::Shutdown).
  void CapAt(std::chrono::steady_clock::time_point by) ABSL_LOCKS_EXCLUDED(mu_);
  // Readable once Abort() ran: connects and keel's own statements poll it with their socket, so
  // a shutdown abandons them at once.
  int abort_fd() const { return abort_fd_; }
  void Abort();

 private:
  friend class Watch;
  using Queue = std::multimap<std::chrono::steady_clock::time_point, Watch*>;
  void Arm(Watch* w, std::chrono::steady_clock::time_point at) ABSL_LOCKS_EXCLUDED(mu_);
  bool Disarm(Watch* w) ABSL_LOCKS_EXCLUDED(mu_);
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);
  void FireLocked(Queue::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Mutex mu_;
  CondVar cv_;
  Queue queue_ ABSL_GUARDED_BY(mu_);
  // When the thread will look next: an Arm before it signals, any later one does not (a steady
  // stream of calls with similar deadlines costs no wake-ups).
  std::chrono::steady_clock::time_point wake_at_ ABSL_GUARDED_BY(mu_) =
      std::chrono::steady_clock::time_point::max();
  std::chrono::steady_clock::time_point cap_ ABSL_GUARDED_BY(mu_) =
      std::chrono::steady_clock::time_point::max();
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  int abort_fd_ = -1;
  std::thread thread_;
};

// Arms `dog` for one call on socket `fd`: shutdown(fd) once `deadline` passes (measured on the
// steady clock from the deadline's Remaining() now). Disarmed by Disarm() or the destructor.
class Watch {
 public:
  Watch(Watchdog& dog, int fd, const Deadline& deadline);
  ~Watch() { Disarm(); }
  Watch(const Watch&) = delete;
  Watch& operator=(const Watch&) = delete;

  // Disarms (idempotent); true when the watch fired, i.e. the socket was shut down.
  bool Disarm();
  // After Disarm() returned true: whether it fired at the Shutdown cap rather than the deadline.
  bool by_shutdown() const { return by_shutdown_; }

 private:
  friend class Watchdog;
  Watchdog* dog_;
  int fd_;
  bool armed_ = false;
  bool fired_ = false;        // under dog_->mu_ while armed
  bool by_shutdown_ = false;  // likewise
  Watchdog::Queue::iterator it_;
};

}  // namespace keel::postgres::internal
