// keel/internal/spin_lock.h: a tiny test-and-test-and-set lock for critical sections of a few
// nanoseconds on hot paths. Not part of keel's API.
//
// Why: an uncontended std::mutex costs two locked read-modify-writes (lock and unlock); this lock
// costs one (the exchange) and unlocks with a plain release store. Use it only where the critical
// section is short, never blocks, never allocates on the common path and never calls user code;
// everything else uses keel::Mutex. Under contention it spins briefly, then yields the CPU, so a
// preempted holder on an oversubscribed machine costs waiters a scheduler round trip, not a burnt
// time slice.
//
// Thread safety: it is the synchronization primitive. ThreadSanitizer understands it (atomics).
//
//   keel::internal::SpinLock lock;
//   { keel::internal::SpinLockGuard guard(lock); ++counter; }
#pragma once

#include <atomic>
#include <thread>

#include "absl/base/thread_annotations.h"

namespace keel::internal {

class ABSL_LOCKABLE SpinLock {
 public:
  SpinLock() = default;
  SpinLock(const SpinLock&) = delete;
  SpinLock& operator=(const SpinLock&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    // acquire: the critical section sees everything the previous holder wrote before Unlock.
    if (!locked_.exchange(true, std::memory_order_acquire)) return;
    LockSlow();
  }
  // release: publishes the critical section's writes to the next holder's acquire.
  void Unlock() ABSL_UNLOCK_FUNCTION() { locked_.store(false, std::memory_order_release); }
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

 private:
  void LockSlow() {
    for (int spins = 0;;) {
      // Read-only spinning keeps the cache line shared until the holder releases it.
      while (locked_.load(std::memory_order_relaxed)) {
        if (++spins > 100) std::this_thread::yield();
      }
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
    }
  }

  std::atomic<bool> locked_{false};
};

class ABSL_SCOPED_LOCKABLE SpinLockGuard {
 public:
  explicit SpinLockGuard(SpinLock& lock) ABSL_EXCLUSIVE_LOCK_FUNCTION(lock) : lock_(lock) {
    lock_.Lock();
  }
  ~SpinLockGuard() ABSL_UNLOCK_FUNCTION() { lock_.Unlock(); }
  SpinLockGuard(const SpinLockGuard&) = delete;
  SpinLockGuard& operator=(const SpinLockGuard&) = delete;

 private:
  SpinLock& lock_;
};

}  // namespace keel::internal
