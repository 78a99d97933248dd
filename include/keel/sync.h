// keel/sync.h: the mutex and condition variable every keel component locks.
//
// Defines `keel::Mutex`, `keel::MutexLock` (scoped) and `keel::CondVar`: thin wrappers over
// std::mutex and std::condition_variable carrying Abseil's thread-safety annotations
// (ABSL_GUARDED_BY works with them under clang's -Wthread-safety).
//
// Why not absl::Mutex: keel links the Abseil that Debian ships, which is not built with
// ThreadSanitizer, so TSan cannot see the ordering an absl::Mutex provides and reports races on
// everything it guards. pthread mutexes are intercepted by every sanitizer, and uncontended they
// cost the same. Timed waits use the steady clock (pthread_cond_clockwait), never wall time.
//
// Thread safety: these are the synchronization primitives.
//
//   keel::Mutex mu;
//   keel::CondVar cv;
//   int ready ABSL_GUARDED_BY(mu) = 0;
//   {
//     keel::MutexLock lock(mu);
//     while (ready == 0) cv.Wait(mu);          // or clock.WaitUntil(mu, cv, deadline, pred)
//   }
//   { keel::MutexLock lock(mu); ready = 1; }
//   cv.SignalAll();
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"

namespace keel {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }
  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) { return mu_.try_lock(); }
  // Documents (and tells the analysis) that the caller holds the lock; checks nothing at run time.
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

 private:
  friend class CondVar;
  std::mutex mu_;
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_.Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_.Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

class CondVar {
 public:
  // Waits for a signal (spurious wake-ups happen: re-check the predicate).
  // REQUIRES: `mu` is held; it is held again on return.
  void Wait(Mutex& mu) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> lock(mu.mu_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();
  }

  // As Wait, but returns false when the steady clock reaches `deadline` first.
  bool WaitUntil(Mutex& mu, std::chrono::steady_clock::time_point deadline)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    std::unique_lock<std::mutex> lock(mu.mu_, std::adopt_lock);
    const bool signalled = cv_.wait_until(lock, deadline) == std::cv_status::no_timeout;
    lock.release();
    return signalled;
  }

  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

}  // namespace keel
