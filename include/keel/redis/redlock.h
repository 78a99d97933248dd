// keel/redis/redlock.h: a lease lock over N independent Redis servers (the Redlock algorithm),
// which survives the loss of a minority of them.
//
// Defines `keel::redis::Redlock`. It hands out the same LockGuard as keel::redis::Lock
// (keel/redis/lock.h), with the same keys, scripts, watchdog and on_lost, on each node.
//
// An attempt (antirez, "Distributed locks with Redis", redis.io):
//   1. takes a 128-bit random token and the time (monotonic, the injected Clock);
//   2. sends the acquire script to every node at once, through the async client API, so one
//      thread waits for all of them; each request is bounded by Options::node_timeout, small
//      next to the ttl, so a node that is down or paused costs that much of the lease at most;
//   3. holds the lock when a strict majority (N/2 + 1) granted it and validity is left:
//      ttl - elapsed - (ttl * 0.01 + 2 ms) > 0; the guard's Validity() starts from there;
//   4. otherwise releases on every node (compare-and-delete: only its own token goes), so a
//      failed attempt leaves nothing behind for the ttl, and Acquire retries after a random
//      (jittered) delay so contending clients do not keep splitting the votes.
// Extensions (the watchdog, Extend) and Release go to every node the same way: an extension
// holds when a majority accepted it; an extension or release ABORTED means too many nodes had
// lost the token for a majority to hold it.
//
// Fencing is weaker than Lock's: Redis servers that share nothing cannot agree on a counter, so
// the token is the fencing counter of one designated node (Options::fencing_node), and a guard
// acquired by a majority that did not include that node has no token (fencing_token() is
// nullopt). The tokens given are strictly increasing as long as that node keeps its data; if it
// restarts without persistence, or fails over without WAIT, they may repeat. Where correctness
// depends on fencing, use a Lock on one (replicated) Redis, or a consensus system.
//
// Safety also assumes what docs/lock.md says for every lease lock (bounded pauses and clock
// drift), plus that a node that crashed does not come back empty before the ttl passed (run the
// nodes with appendonly and fsync, or delay their restart by a ttl).
//
// Lockable: lock(), try_lock(), try_lock_for(), try_lock_until(), unlock(), for std::unique_lock
// (see internal::Lockable in lock.h).
//
// Thread safety: thread-safe; share one per lock name and process. REQUIRES: the Redlock
// outlives its guards, and the clients outlive the Redlock.
//
//   std::vector<keel::redis::Client*> nodes = {a.get(), b.get(), c.get(), d.get(), e.get()};
//   auto lock = keel::redis::Redlock::Create({.name = "report", .ttl = 10s}, nodes).value();
//   absl::StatusOr<keel::redis::LockGuard> guard = lock->Acquire(Deadline::After(2s));
//   if (!guard.ok()) return guard.status();   // DEADLINE_EXCEEDED: held, or most nodes down
//   Build(guard->Validity());                  // stop before the lease runs out
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/status/statusor.h"
#include "keel/async/timer.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/metrics.h"
#include "keel/redis/client.h"
#include "keel/redis/lock.h"
#include "keel/resilience/backoff.h"

namespace keel::redis {

class Redlock : public internal::LockBase {
 public:
  struct Options {
    // Names the lock, as Lock::Options::name (the same keys on every node). Required: 1 to 128
    // bytes.
    std::string name;
    // The lease, as Lock::Options::ttl. Must be a whole number of milliseconds, >= 10 ms, and at
    // least 10 x node_timeout. Default: 30 s.
    Duration ttl = std::chrono::seconds(30);
    // The bound of each request to one node (acquire, extend, release). A down or paused node
    // costs an attempt this much; keep it a small fraction of the ttl (the Redlock paper: 5-50 ms
    // for a 10 s ttl). Must be > 0 and <= ttl / 10. Default: 50 ms.
    Duration node_timeout = std::chrono::milliseconds(50);
    // The index (into the nodes given to Create) of the node whose fencing counter gives the
    // fencing tokens (see the banner). Must be < the number of nodes. Default: 0.
    size_t fencing_node = 0;
    // As Lock::Options: extend every ttl/3 while a guard lives. Default: false.
    bool watchdog = false;
    // As Lock::Options::on_lost. Optional.
    std::function<void(const LockLost&)> on_lost;
    // The random delays of Acquire between attempts. Default: full jitter from 10 ms to 500 ms.
    Backoff::Options retry = {
        .kind = Backoff::Kind::kFullJitter,
        .base = std::chrono::milliseconds(10),
        .cap = std::chrono::milliseconds(500),
    };
    // How long Acquire(Deadline::Infinite()) waits. Must be > 0. Default: 10 s.
    Duration acquire_timeout = std::chrono::seconds(10);
    // Deadline of a Release given Deadline::Infinite() (the destructor's). Must be > 0.
    // Default: 100 ms.
    Duration release_timeout = std::chrono::milliseconds(100);
  };

  // Validates `options` (INVALID_ARGUMENT naming the field); no I/O. `nodes`: one client per
  // independent Redis server (not replicas of one another), each on the multiplexed transport
  // (the async API sends to all at once); at least one, none null or repeated; 3 or 5 for
  // tolerating 1 or 2 failures. Timer, clock and metrics as Lock::Create (backend="redlock").
  static absl::StatusOr<std::unique_ptr<Redlock>> Create(Options options,
                                                         std::vector<Client*> nodes,
                                                         Clock& clock = SteadyClock(),
                                                         MetricsRegistry* metrics = nullptr,
                                                         Timer* timer = nullptr);

  // One attempt (see the banner) is TryAcquire: a guard when a majority granted it in time;
  // nullopt when a majority of the nodes answered but not enough granted (held by someone else,
  // or split between contenders). It returns within node_timeout (and the deadline, when
  // earlier) plus the release of a failed attempt (another node_timeout at most); UNAVAILABLE
  // when fewer than a majority of the nodes answered (with the first error), or when the
  // majority came too late to leave any validity. Acquire, Stats, clock and Lockable: see
  // internal::LockBase in lock.h.

  const Options& options() const;
  size_t nodes() const;

 private:
  class Backend;
  explicit Redlock(std::unique_ptr<Backend> backend);
  const Backend& typed() const;
};

}  // namespace keel::redis
