// keel/redis/lock.h: a distributed lease lock on one Redis, with fencing tokens and an optional
// lease-renewal watchdog.
//
// Defines `keel::redis::Lock`, its move-only `keel::redis::LockGuard`, `keel::redis::LockLost`
// (what the on_lost callback is told) and `keel::redis::LockStats`. keel::redis::Redlock
// (keel/redis/redlock.h) hands out the same LockGuard.
//
// A lease lock, not a mutex: the holder owns the lock for `ttl` after it acquired (or last
// extended) it, and Redis frees it on its own after that, so a crashed holder never blocks the
// others for longer than ttl. The price is that a holder that stalls longer than ttl (a GC-like
// pause, SIGSTOP, swapping, a slow network) may still believe it holds the lock while someone
// else does. The fencing token is the answer: every acquisition returns a strictly increasing
// integer, and the storage the lock protects refuses a write carrying an older token than the
// last one it saw (keel/postgres/fencing.h does that for PostgreSQL). docs/lock.md says what a
// lease lock can and cannot promise, and when fencing is required.
//
// On Redis (every key under one hash tag, so it works on Redis Cluster):
//   {keel:lock:<name>}        the holder's 128-bit random token, with the lease as its expiry
//   {keel:lock:<name>}:fence  the fencing counter (INCR on every acquisition; never expires)
// Acquire is one script (SET key token NX PX ttl, then INCR of the counter); release and extend
// are compare-and-delete and compare-and-pexpire scripts, ABORTED when the token is not there
// any more (the lease ran out, and maybe someone else holds the lock now). Every script runs by
// EVALSHA and reloads itself on NOSCRIPT (keel/redis/script.h).
//
// Watchdog (Options::watchdog): while a guard lives, its lease is extended every ttl/3 from a
// keel::Timer, with the async client API, so the timer thread never waits for a round trip.
// When an extension finds the token gone, or extensions keep failing until the lease's validity
// runs out, the guard is marked lost, its CancellationToken is cancelled (so the guarded work
// can stop) and Options::on_lost runs, outside any lock. A guard that was released is never
// extended again: Release waits for an extension in flight to be answered before it deletes
// the key, so Redis sees every extension of a guard before its release and none after it.
//
// Lock meets the C++ Lockable and TimedLockable requirements (std::unique_lock; see
// internal::Lockable below), for code that wants a scoped lock without a guard in hand.
//
// Thread safety: Lock is thread-safe; share one per lock name and process. A LockGuard is not
// (move it, do not share it), except that the watchdog works on it from the timer thread.
// REQUIRES: the Lock outlives its guards.
//
//   auto lock = keel::redis::Lock::Create({.name = "order:42", .ttl = 10s, .watchdog = true},
//                                         *client).value();
//   absl::StatusOr<keel::redis::LockGuard> guard = lock->Acquire(Deadline::After(2s));
//   if (!guard.ok()) return guard.status();   // DEADLINE_EXCEEDED: held by someone else
//   absl::Status written = pg->Transact(deadline, [&](keel::postgres::Transaction& tx) {
//     // fencing: a keel::postgres::Fencing (keel/postgres/fencing.h)
//     KEEL_RETURN_IF_ERROR(fencing.Check(tx, "order:42", *guard->fencing_token()));
//     return tx.Execute("UPDATE orders SET paid = true WHERE id = 42").status();
//   });
//   if (guard->cancellation().cancelled()) { /* the lease was lost: stop */ }
//   // released when `guard` goes out of scope (or guard->Release())
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "absl/base/thread_annotations.h"
#include "absl/random/bit_gen_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/async/timer.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/metrics.h"
#include "keel/redis/client.h"
#include "keel/resilience/backoff.h"
#include "keel/resilience/cancellation.h"
#include "keel/sync.h"

namespace keel::redis {

namespace internal {
struct Lease;
class LeaseBackend;
}  // namespace internal

// What Options::on_lost is told when the watchdog finds a guard's lease lost.
struct LockLost {
  std::string_view name;                 // the lock's name
  std::optional<int64_t> fencing_token;  // the lost guard's token
  absl::Status reason;  // ABORTED (the token was gone) or the error of the last extension
};

// Counters of one Lock or Redlock (monotonic; relaxed loads: each exact, not taken together).
struct LockStats {
  uint64_t acquired_total = 0;            // guards handed out
  uint64_t contended_total = 0;           // acquire attempts that found the lock held
  uint64_t errors_total = 0;              // acquire attempts that failed (Redis down, deadline)
  uint64_t released_total = 0;            // guards released (Release or the destructor)
  uint64_t release_aborted_total = 0;     // releases that found the token gone (lease had run out)
  uint64_t extended_total = 0;            // successful extensions (watchdog or Extend)
  uint64_t extend_failures_total = 0;     // extensions that failed (error or token gone)
  uint64_t lost_total = 0;                // guards the watchdog marked lost
  uint64_t on_lost_exceptions_total = 0;  // exceptions thrown by on_lost (caught, dropped)
};

// The move-only handle of a held lock; releases in its destructor.
class LockGuard {
 public:
  LockGuard(LockGuard&&) noexcept;
  LockGuard& operator=(LockGuard&&) noexcept;
  LockGuard(const LockGuard&) = delete;
  LockGuard& operator=(const LockGuard&) = delete;
  ~LockGuard();  // Release(), its error dropped

  // The fencing token of this acquisition: strictly greater than every earlier acquisition's of
  // the same lock name (as long as the counter key survives; see docs/lock.md). Pass it to the
  // storage the lock protects. Always set for a Lock; for a Redlock, the designated node's, and
  // nullopt when that node was not in the majority that granted the lock.
  std::optional<int64_t> fencing_token() const { return fencing_token_; }

  // How long the lease is still safe to rely on, on the lock's (monotonic) clock:
  //   ttl - (now - start of the last successful acquire or extend) - (ttl * 0.01 + 2 ms)
  // where the last term allows for drift between this clock and Redis's. Zero once that runs
  // out, once the guard is lost, and after Release.
  Duration Validity() const;

  // Whether the watchdog found the lease lost (see the banner). A lost guard still releases
  // (compare-and-delete) in case the key is still its own.
  bool lost() const;
  // Cancelled when the guard is lost, so the guarded work can poll it or wait on it.
  CancellationToken cancellation() const { return cancellation_; }
  // False after Release (or a move from this guard).
  bool held() const { return lease_ != nullptr; }

  // Extends the lease to ttl from now (compare-and-pexpire). The watchdog does this by itself.
  // Errors: ABORTED when the token was gone (the lease had run out); FAILED_PRECONDITION after
  // Release; UNAVAILABLE / DEADLINE_EXCEEDED from Redis (Infinite: the client's command_timeout).
  absl::Status Extend(Deadline deadline = Deadline::Infinite());

  // Releases the lock now (compare-and-delete) and stops the watchdog; later calls and the
  // destructor do nothing. Waits for an extension in flight to be answered first. Bounded by
  // `deadline` (Infinite: Options::release_timeout).
  // Errors: ABORTED when the token was gone (the lease had run out: someone else may have held
  // the lock meanwhile); FAILED_PRECONDITION when already released; UNAVAILABLE /
  // DEADLINE_EXCEEDED from Redis (the lease then ends by its expiry).
  absl::Status Release(Deadline deadline = Deadline::Infinite());

 private:
  friend class internal::LeaseBackend;
  LockGuard(std::shared_ptr<internal::Lease> lease, std::optional<int64_t> fencing_token,
            CancellationToken cancellation);
  std::shared_ptr<internal::Lease> lease_;
  std::optional<int64_t> fencing_token_;
  CancellationToken cancellation_;
};

namespace internal {

// The C++ Lockable and TimedLockable requirements over a keel lock (`std::unique_lock`,
// `std::scoped_lock`, `std::lock`): the guard of the lock taken with lock() lives in the lock
// object until unlock(). Derived provides TryAcquire(Deadline) and Acquire(Deadline) and
// `clock()`.
//
// lock() cannot report an error (keel never throws), so it blocks until it holds the lock, like
// std::mutex::lock: it retries Acquire(Deadline::Infinite()) (Options::acquire_timeout each)
// while the lock is held or Redis is down. Prefer try_lock_for, which gives up:
//
//   std::unique_lock held(*lock, std::defer_lock);
//   if (!held.try_lock_for(2s)) return Busy();
template <typename Derived>
class Lockable {
 public:
  void lock() ABSL_LOCKS_EXCLUDED(lockable_mu_) {
    while (true) {
      absl::StatusOr<LockGuard> guard = self().Acquire(Deadline::Infinite());
      if (guard.ok()) return Hold(std::move(*guard));
    }
  }
  // One attempt, within the client's command timeout (Redlock: the node timeout).
  bool try_lock() ABSL_LOCKS_EXCLUDED(lockable_mu_) {
    absl::StatusOr<std::optional<LockGuard>> guard = self().TryAcquire(Deadline::Infinite());
    if (!guard.ok() || !guard->has_value()) return false;
    Hold(std::move(**guard));
    return true;
  }
  template <typename Rep, typename Period>
  bool try_lock_for(const std::chrono::duration<Rep, Period>& d) ABSL_LOCKS_EXCLUDED(lockable_mu_) {
    if (d <= d.zero()) return try_lock();  // as std::timed_mutex: a time already past tries once
    absl::StatusOr<LockGuard> guard = self().Acquire(Deadline::After(d, self().clock()));
    if (!guard.ok()) return false;
    Hold(std::move(*guard));
    return true;
  }
  template <typename C, typename D>
  bool try_lock_until(const std::chrono::time_point<C, D>& t) ABSL_LOCKS_EXCLUDED(lockable_mu_) {
    return try_lock_for(t - C::now());
  }
  // Releases the lock taken by lock() / try_lock*(); does nothing when none is held. The lock's
  // destructor calls it.
  void unlock() ABSL_LOCKS_EXCLUDED(lockable_mu_) {
    std::optional<LockGuard> guard;
    {
      MutexLock lock(lockable_mu_);
      guard.swap(held_);
    }
    // Released here, outside the mutex: no I/O under a lock.
  }

 private:
  Derived& self() { return static_cast<Derived&>(*this); }
  void Hold(LockGuard guard) ABSL_LOCKS_EXCLUDED(lockable_mu_) {
    MutexLock lock(lockable_mu_);
    held_.emplace(std::move(guard));
  }
  Mutex lockable_mu_;
  std::optional<LockGuard> held_ ABSL_GUARDED_BY(lockable_mu_);
};

// What Lock and Redlock share: acquiring, statistics, Lockable. Their banners say what an
// attempt does on Redis.
class LockBase : public Lockable<LockBase> {
 public:
  ~LockBase();  // releases the guard held through lock(), if any
  LockBase(const LockBase&) = delete;
  LockBase& operator=(const LockBase&) = delete;

  // One attempt: a guard if the lock was free, nullopt if someone holds it (a value, not an
  // error). Returns within `deadline` (Infinite: the client's command_timeout; Redlock: the
  // node timeout).
  // Errors: UNAVAILABLE / DEADLINE_EXCEEDED from Redis (whether the lock was taken is then
  // unknown; if it was, it frees itself after ttl); INTERNAL for an unexpected script reply.
  absl::StatusOr<std::optional<LockGuard>> TryAcquire(Deadline deadline);

  // Waits for the lock until `deadline`, attempting with Options::retry's jittered backoff
  // between attempts (Redis errors are retried too, within the deadline).
  // Deadline::Infinite() waits Options::acquire_timeout.
  // Errors: DEADLINE_EXCEEDED when the deadline passed first (the message says whether the lock
  // was held or Redis failed, with Redis's last error).
  absl::StatusOr<LockGuard> Acquire(Deadline deadline);
  // As Acquire, with the backoff and the random source of its jitter given.
  absl::StatusOr<LockGuard> Acquire(Deadline deadline, const Backoff& backoff,
                                    absl::BitGenRef random);

  LockStats Stats() const;
  Clock& clock() const;

 protected:
  explicit LockBase(std::unique_ptr<LeaseBackend> backend);
  LeaseBackend& backend() const { return *backend_; }

 private:
  std::unique_ptr<LeaseBackend> backend_;
};

}  // namespace internal

class Lock : public internal::LockBase {
 public:
  struct Options {
    // Names the lock: every process locking the same name excludes the others. Part of the Redis
    // keys (see the banner) and the `name` label of metrics. Required: 1 to 128 bytes.
    std::string name;
    // The lease: how long the lock stays held without an extension, i.e. how long a crashed
    // holder blocks the others. Longer than the work it guards, or use the watchdog. Must be a
    // whole number of milliseconds (Redis's PX), at least 10 ms. Default: 30 s.
    Duration ttl = std::chrono::seconds(30);
    // Extend the lease of every guard every ttl/3 until it is released, so work may take longer
    // than ttl and a crashed process still frees the lock within ttl. Needs the client's
    // multiplexed transport (the default). Default: false.
    bool watchdog = false;
    // Called (on the timer or the client's I/O thread, outside any keel lock) when the watchdog
    // finds a guard's lease lost. Must not block; an exception is caught, counted
    // (on_lost_exceptions_total) and dropped. Optional.
    std::function<void(const LockLost&)> on_lost;
    // The waits of Acquire between attempts while the lock is held. Default: full jitter from
    // 10 ms up to 500 ms.
    Backoff::Options retry = {
        .kind = Backoff::Kind::kFullJitter,
        .base = std::chrono::milliseconds(10),
        .cap = std::chrono::milliseconds(500),
    };
    // How long Acquire(Deadline::Infinite()) waits for the lock. Must be > 0. Default: 10 s.
    Duration acquire_timeout = std::chrono::seconds(10);
    // Deadline of a Release given Deadline::Infinite() (the destructor's). Must be > 0.
    // Default: 100 ms.
    Duration release_timeout = std::chrono::milliseconds(100);
  };

  // Validates `options` (INVALID_ARGUMENT naming the field); no I/O. `client` and `clock` must
  // outlive the Lock. With the watchdog, extensions run on `timer` when given (REQUIRES
  // &timer->clock() == &clock, it must outlive the Lock), else on the client's shared timer
  // (Client::SharedTimer: one timer thread per client, however many locks) when `clock` is the
  // client's, else on a Timer the Lock creates for itself. With `metrics`, registers counters
  // mirroring LockStats: keel_lock_{acquired,contended,errors,released,release_aborted,extended,
  // extend_failures,lost,on_lost_exceptions}_total{name=<name>,backend="redis"}.
  static absl::StatusOr<std::unique_ptr<Lock>> Create(Options options, Client& client,
                                                      Clock& clock = SteadyClock(),
                                                      MetricsRegistry* metrics = nullptr,
                                                      Timer* timer = nullptr);

  // TryAcquire, Acquire, Stats, clock and Lockable: see internal::LockBase above.

  const Options& options() const;
  // The Redis keys of the lock (see the banner).
  std::string RedisKey() const;
  std::string FencingKey() const;

 private:
  class Backend;
  explicit Lock(std::unique_ptr<Backend> backend);
  const Backend& typed() const;
};

}  // namespace keel::redis
