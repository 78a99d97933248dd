// keel/redis/cache_stampede.h: stampede protection across processes for keel::cache::Cache<T>.
//
// Defines `keel::redis::CacheStampedeLock`, a keel::cache::StampedeLock over keel's Redis lease
// lock (keel/redis/lock.h): one lock per cache key, named `cache:<name>:<key>` (a key that makes
// the name longer than the lock's 128 bytes is named by its 64-bit FNV-1a hash instead: two
// such keys may then share a lock, which costs waiting, never correctness).
//
// Pass it as CacheOptions::stampede_lock. The first process to miss a key takes the lock, reads
// the tiers again (another process may have just stored the value) and loads; the others poll the
// tiers every stampede_poll_interval and try the lock again on each poll. A holder that dies
// holds the lock for at most `ttl` (the lease), so a waiter loads itself within
// ttl + stampede_poll_interval, and never waits longer than stampede_max_wait (docs/caching.md).
// The lock's fencing counter is deleted after each release: the cache does not use fencing
// tokens, and a counter per cache key would otherwise stay in Redis forever.
//
// Thread safety: thread-safe. REQUIRES: the Client outlives the lock.
//
//   auto stampede = keel::redis::CacheStampedeLock::Create({.name = "profiles"}, *client).value();
//   auto cache = keel::cache::Cache<std::string>::Create(
//       {.name = "profiles", .stampede_lock = stampede}, std::move(tiers)).value();
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "keel/cache/tier.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/redis/client.h"

namespace keel::redis {

class CacheStampedeLock final : public cache::StampedeLock {
 public:
  struct Options {
    // The cache's name: processes sharing a cache must use the same. Required, 1 to 64 bytes.
    std::string name;
    // The lease of each lock: how long a holder that died blocks the other processes. Longer
    // than a typical load. A whole number of milliseconds, >= 10 ms. Default: 5 s.
    Duration ttl = std::chrono::seconds(5);
    // Bound of the release and of the fencing counter's DEL after it (the holder has loaded and
    // stored by then; only its return waits). A DEL that fails leaves that counter in Redis (one
    // small key). Must be > 0. Default: 500 ms.
    Duration release_timeout = std::chrono::milliseconds(500);
  };

  // Validates `options` (INVALID_ARGUMENT naming the field); no I/O.
  static absl::StatusOr<std::shared_ptr<CacheStampedeLock>> Create(Options options, Client& client,
                                                                   Clock& clock = SteadyClock());

  // One SET NX PX attempt (redis::Lock::TryAcquire). Errors: UNAVAILABLE / DEADLINE_EXCEEDED
  // from Redis (the cache then loads without the lock).
  absl::StatusOr<std::unique_ptr<Hold>> TryAcquire(Deadline deadline,
                                                   std::string_view key) override;

  // The lock name used for `key` (see the banner).
  std::string LockName(std::string_view key) const;

 private:
  CacheStampedeLock(Options options, Client& client, Clock& clock)
      : options_(std::move(options)), client_(client), clock_(clock) {}
  const Options options_;
  Client& client_;
  Clock& clock_;
};

}  // namespace keel::redis
