// keel/pool/pool.h: a generic, thread-safe pool of expensive resources (connections).
//
// Defines `keel::PoolOptions`, `keel::PoolHooks<T>` (how the adapter creates, checks and resets a
// T), `keel::PoolStats`, `keel::Lease<T>` (the move-only handle to a leased resource) and
// `keel::Pool<T>`. HikariCP's behaviour and defaults are the reference: a fixed-size pool,
// FIFO waiters, validation of resources that sat idle, max lifetime with jitter, keepalive,
// leak detection, and errors that say why a caller did not get a connection.
//
// Thread safety: Pool<T> is thread-safe. A Lease<T> is used by one thread at a time (like the T
// it points to) and may be moved to, and returned from, any thread.
//
//   keel::PoolHooks<Conn> hooks{
//       .create = [](keel::Deadline d) { return Conn::Connect("db:5432", d.Remaining()); },
//       .validate = [](Conn& c, keel::Deadline d) { return c.Ping(d); },
//   };
//   auto pool = keel::Pool<Conn>::Create({.name = "db", .max_size = 8}, std::move(hooks)).value();
//   absl::StatusOr<keel::Lease<Conn>> lease = pool->Acquire(keel::Deadline::After(250ms));
//   if (!lease.ok()) return lease.status();   // DEADLINE_EXCEEDED, UNAVAILABLE, CANCELLED, ...
//   absl::Status s = (*lease)->Query("...");
//   if (IsBroken(s)) lease->Invalidate();      // the pool closes it and makes a new one
//   // the Lease's destructor returns the connection to the pool
//
// How it works. One mutex guards the pool's bookkeeping; creation, validation and destruction of
// resources (the I/O) always happen outside it. Acquire takes the most recently returned idle
// resource (LIFO, so surplus ones age out through idle_timeout) when nobody is waiting; otherwise
// the caller joins a FIFO queue and a returned or newly created resource goes straight to the
// oldest waiter, never to a caller that arrives later. A waiter that finds room in the pool
// (fewer than max_size resources and fewer than max_connecting creations in flight) creates one
// itself, with its own deadline as the connect timeout; if that fails it returns UNAVAILABLE at
// once with the cause instead of waiting out its deadline, so callers fail fast while a backend is
// down.
//
// Maintenance and deterministic tests. `RunMaintenance()` performs one housekeeping pass
// synchronously: retire resources past their lifetime or idle past idle_timeout (above min_idle),
// validate idle ones due for a keepalive, report leaked leases, and create resources up to
// min_idle. With `background_maintenance` (the default) a thread per pool calls it every
// `maintenance_interval`, and at once when a resource was destroyed below min_idle; the thread
// waits through the injected Clock, so under a ManualClock it only runs when the test advances
// time. Unit tests set `background_maintenance = false` and call RunMaintenance() themselves:
// every step then happens on the test's thread, in the test's order.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/metrics.h"

namespace keel {

struct PoolOptions {
  // Names the pool in every error message (`pool "pg-primary": ...`) and as the `name` label of
  // every metric. Default: "pool".
  std::string name = "pool";

  // What the pool holds, as the error messages say it ("no connection within 30s").
  // Default: "connection".
  std::string resource_kind = "connection";

  // The most resources open at once (in use + idle + being checked). Size it to what the backend
  // can serve concurrently; more only adds queueing at the server. Default: 10 (HikariCP's).
  int max_size = 10;

  // Idle resources the maintainer keeps ready. Default: max_size, a fixed-size pool (HikariCP's
  // recommendation: no connection churn under bursty load). Lower it to let idle_timeout shrink
  // the pool in quiet periods. Must be in [0, max_size].
  std::optional<int> min_idle = std::nullopt;

  // The longest Acquire waits, whatever the caller's deadline says. Default: 30 s (HikariCP's
  // connectionTimeout). Callers usually pass a tighter Deadline.
  Duration acquire_timeout = std::chrono::seconds(30);

  // An idle resource above min_idle is closed after this long unused. Default: 10 min.
  Duration idle_timeout = std::chrono::minutes(10);

  // A resource is retired at a random point in the last 2.5% of this lifetime (so a pool's
  // resources don't all reconnect at once); a leased one when it is returned. Set it below any
  // server- or network-side connection limit. Default: 30 min.
  Duration max_lifetime = std::chrono::minutes(30);

  // Idle resources unchecked for this long are validated by the maintainer, so that firewalls and
  // servers don't silently drop them. Only with a validate hook. Default: 2 min.
  Duration keepalive_interval = std::chrono::minutes(2);

  // The most one validation may take (also bounded by the caller's deadline). Default: 5 s.
  Duration validation_timeout = std::chrono::seconds(5);

  // A resource idle for less than this is handed out without validation: it was just working.
  // Default: 500 ms (HikariCP's aliveBypassWindowMs).
  Duration validation_bypass = std::chrono::milliseconds(500);

  // At most this many creations in flight at once, so a reconnect storm does not stampede the
  // backend. Default: 2.
  int max_connecting = 2;

  // When set, a lease held longer than this is reported once (with its label, see
  // Lease::SetLabel) to `on_leak`, by the next maintenance pass. Default: off.
  std::optional<Duration> leak_detection_threshold = std::nullopt;

  // Receives leak reports; never called under a lock. Default: writes the report to stderr.
  std::function<void(std::string_view report)> on_leak = nullptr;

  // Run RunMaintenance() on a background thread. Default: true. Tests turn it off and call
  // RunMaintenance() themselves.
  bool background_maintenance = true;

  // How often the background maintainer runs (it also wakes when a resource is destroyed below
  // min_idle). Leak reports and retirements happen with this granularity. Default: 30 s
  // (HikariCP's housekeeping period).
  Duration maintenance_interval = std::chrono::seconds(30);
};

// How the pool makes, checks and resets a T. Hooks run outside the pool's lock, possibly on
// several threads at once (on different T objects). A hook that throws is caught and counted
// (PoolStats::hook_exceptions_total): a throwing create or validate is a failed creation or
// validation (INTERNAL, naming the hook), a throwing is_broken counts as broken, and a throwing
// on_return closes the resource instead of reusing it.
template <typename T>
struct PoolHooks {
  // Opens a new resource, honouring `deadline` as its connect timeout. Required.
  std::function<absl::StatusOr<std::unique_ptr<T>>(Deadline)> create = nullptr;
  // Checks that an idle resource still works (a PING, a SELECT 1). A non-OK status discards it.
  // Optional: without it resources are never validated and keepalive is off.
  std::function<absl::Status(T&, Deadline)> validate = nullptr;
  // Resets a returned resource before it is reused (roll back, clear session state). Not called
  // for invalidated resources. Optional.
  std::function<void(T&)> on_return = nullptr;
  // A cheap local check, without a round trip, run on every handout: true discards the resource
  // (counted as a validation failure) and the caller gets another or a new one. For a socket,
  // "readable while idle" means the server closed it or sent an error (a killed backend). Must
  // not block. Optional.
  std::function<bool(const T&)> is_broken = nullptr;
};

// A snapshot of a pool; counters (`*_total`) are cumulative since Create.
struct PoolStats {
  int max_size = 0;
  int in_use = 0;      // leased to callers
  int idle = 0;        // ready to be leased
  int pending = 0;     // callers waiting in Acquire
  int connecting = 0;  // creations in flight
  int total = 0;       // open resources: in use, idle, or being checked by the maintainer
  uint64_t acquired_total = 0;
  uint64_t created_total = 0;
  uint64_t destroyed_total = 0;
  uint64_t timeouts_total = 0;  // Acquire calls that returned DEADLINE_EXCEEDED
  uint64_t create_failures_total = 0;
  uint64_t validation_failures_total = 0;
  uint64_t leaks_detected_total = 0;
  uint64_t maintenance_runs_total = 0;
  uint64_t hook_exceptions_total = 0;  // hooks that threw (caught; see PoolHooks)
};

namespace pool_internal {
template <typename T>
class Core;
template <typename T>
struct Entry;
}  // namespace pool_internal

// A leased resource. Move-only; the destructor returns it to its pool. A Lease may outlive the
// Pool object: returned after Shutdown or destruction, the resource is closed.
template <typename T>
class Lease {
 public:
  Lease() = default;
  Lease(Lease&& other) noexcept : core_(other.core_), entry_(other.entry_) {
    other.core_ = nullptr;
    other.entry_ = nullptr;
  }
  Lease& operator=(Lease&& other) noexcept {
    if (this != &other) {
      Release();
      core_ = other.core_;
      entry_ = other.entry_;
      other.core_ = nullptr;
      other.entry_ = nullptr;
    }
    return *this;
  }
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;
  ~Lease() { Release(); }

  // REQUIRES (all four): the lease holds a resource (`*this` is true).
  T* operator->() const { return get(); }
  T& operator*() const { return *get(); }
  T* get() const;
  explicit operator bool() const { return entry_ != nullptr; }

  // Discards the resource (it is broken) now; the pool closes it and creates a replacement when
  // needed. The lease becomes empty. No-op on an empty lease.
  void Invalidate();
  // Returns the resource to the pool now; the lease becomes empty. No-op on an empty lease.
  void Release();

  // Names the holder in a leak report ("GET /diaries handler"). Cheap; call it after Acquire.
  // REQUIRES: the lease holds a resource.
  void SetLabel(std::string label);

 private:
  friend class pool_internal::Core<T>;
  Lease(pool_internal::Core<T>* core, pool_internal::Entry<T>* entry)
      : core_(core), entry_(entry) {}

  pool_internal::Core<T>* core_ = nullptr;
  pool_internal::Entry<T>* entry_ = nullptr;
};

template <typename T>
class Pool {
 public:
  // Validates `options` and creates an empty pool; resources are created by Acquire on demand and
  // by the maintainer up to min_idle (Create itself does no I/O, so it succeeds while the backend
  // is down). `clock` and `metrics` must outlive the Pool (not its leases: after the Pool is
  // destroyed nothing touches either). Registers, when `metrics` is given, gauges
  // keel_pool_{in_use,idle,pending,connecting,size,max_size}, counters
  // keel_pool_{acquired,created,destroyed,acquire_timeouts,create_failures,validation_failures,
  // leaks_detected,maintenance_runs,hook_exceptions}_total and the histogram
  // keel_pool_acquire_seconds, labelled name=<name>.
  // Errors: INVALID_ARGUMENT naming the bad field (`pool.max_size must be >= 1, got 0`), or a
  // metric registration error (e.g. two pools with one name in one registry).
  static absl::StatusOr<std::unique_ptr<Pool<T>>> Create(PoolOptions options, PoolHooks<T> hooks,
                                                         Clock& clock = SteadyClock(),
                                                         MetricsRegistry* metrics = nullptr);
  // As above with the random source that places each resource's retirement in the last 2.5% of
  // max_lifetime. `random` must outlive the Pool; the pool uses it under its lock only.
  static absl::StatusOr<std::unique_ptr<Pool<T>>> Create(PoolOptions options, PoolHooks<T> hooks,
                                                         Clock& clock, MetricsRegistry* metrics,
                                                         absl::BitGenRef random);

  // Shuts the pool down (see Shutdown). Outstanding leases stay valid until returned; from here
  // on, returning one calls no hook and reads no clock (the clock may be destroyed next).
  ~Pool();
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Leases a resource, waiting until min(deadline, now + acquire_timeout), both measured on the
  // deadline's own clock (an infinite deadline: acquire_timeout on the pool's clock). Resources
  // idle longer than validation_bypass are validated first; one that fails is closed and the
  // caller gets another or a new one.
  // Errors: DEADLINE_EXCEEDED when the wait ran out, with the explanation
  //   `pool "db": no connection within 250ms (10/10 in use, 7 waiting, last create error 3s ago:
  //   connection refused)`;
  // UNAVAILABLE when this caller's attempt to create one failed (the message carries the cause);
  // INTERNAL when the create hook threw or returned null;
  // CANCELLED when Shutdown() ran while waiting; FAILED_PRECONDITION after Shutdown().
  absl::StatusOr<Lease<T>> Acquire(Deadline deadline = Deadline::Infinite());

  // Leases an idle resource without waiting and without creating one (it may validate it, within
  // validation_timeout). Errors: RESOURCE_EXHAUSTED when none is idle or callers are already
  // waiting (no barging); FAILED_PRECONDITION after Shutdown().
  absl::StatusOr<Lease<T>> TryAcquire();

  // One synchronous housekeeping pass (see the banner). Safe to call at any time from any thread.
  void RunMaintenance();

  PoolStats Stats() const;
  const PoolOptions& options() const;

  // Stops the maintainer, fails every waiter with CANCELLED, closes idle resources; leases
  // returned later are closed (without on_return, without reading the clock), and Acquire fails
  // with FAILED_PRECONDITION. Waits for returns already in progress (their on_return hook).
  // Idempotent.
  void Shutdown();

 private:
  static absl::StatusOr<std::unique_ptr<Pool<T>>> CreateImpl(PoolOptions options,
                                                             PoolHooks<T> hooks, Clock& clock,
                                                             MetricsRegistry* metrics,
                                                             std::optional<absl::BitGenRef> random);
  explicit Pool(pool_internal::Core<T>* core) : core_(core) {}
  pool_internal::Core<T>* core_;  // deleted by whichever of ~Pool and the last lease is later
  std::vector<MetricsRegistry::Registration> registrations_;
};

}  // namespace keel

#include "keel/pool/internal/pool_impl.h"  // IWYU pragma: export
