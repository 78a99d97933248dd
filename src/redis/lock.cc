// keel::redis::Lock: a lease lock on one Redis node (see lock.h).
#include "keel/redis/lock.h"

#include <utility>

#include "keel/internal/status_macros.h"
#include "keel/internal/validate.h"
#include "lease.h"
#include "lock_node.h"

namespace keel::redis {

class Lock::Backend final : public internal::LeaseBackend {
 public:
  Backend(Options options, Client& client, Clock& clock, Timer* timer, Backoff backoff)
      : LeaseBackend(ConfigOf("redis lock", options, backoff), clock, timer),
        options_(std::move(options)),
        client_(client),
        keys_(internal::MakeLockKeys("redis lock", options_.name,
                                     internal::TtlMillis(options_.ttl))) {}

  Future<void> AsyncExtend(Deadline deadline, const std::string& token) override {
    return internal::AsyncNodeExtend(client_, deadline, keys_, token);
  }
  absl::Status Extend(Deadline deadline, const std::string& token) override {
    return internal::NodeExtend(client_, deadline, keys_, token);
  }
  absl::Status Release(Deadline deadline, const std::string& token) override {
    return internal::NodeRelease(client_, deadline, keys_, token);
  }

  absl::StatusOr<std::optional<LockGuard>> TryAcquire(Deadline deadline) override {
    std::string token = internal::NewLockToken();
    const TimePoint started = clock().Now();
    absl::StatusOr<int64_t> fencing = internal::NodeAcquire(client_, deadline, keys_, token);
    if (!fencing.ok()) {
      counters().errors.fetch_add(1, std::memory_order_relaxed);
      return std::move(fencing).status();
    }
    if (*fencing == 0) {
      counters().contended.fetch_add(1, std::memory_order_relaxed);
      return std::optional<LockGuard>();
    }
    return std::optional<LockGuard>(MakeGuard(std::move(token), *fencing, started));
  }

  const Options& options() const { return options_; }
  const internal::LockKeys& keys() const { return keys_; }

 private:
  const Options options_;
  Client& client_;
  const internal::LockKeys keys_;
};

absl::StatusOr<std::unique_ptr<Lock>> Lock::Create(Options options, Client& client, Clock& clock,
                                                   MetricsRegistry* metrics, Timer* timer) {
  const keel::internal::OptionsOf of("redis lock", options.name);
  KEEL_ASSIGN_OR_RETURN(Backoff backoff, internal::ValidateLockOptions(
                                             of, options.name, options.ttl, options.acquire_timeout,
                                             options.release_timeout, options.retry, timer, clock));
  if (options.watchdog && client.options().transport != Transport::kMultiplexed) {
    return keel::internal::InvalidOption(
        of, "watchdog", "used with a client on the multiplexed transport", "a pooled client");
  }
  // The watchdog's extensions run on the client's shared timer when the clocks agree: one timer
  // thread per client, however many locks.
  if (timer == nullptr && options.watchdog && &client.clock() == &clock) {
    KEEL_ASSIGN_OR_RETURN(timer, client.SharedTimer());
  }
  auto backend = std::make_unique<Backend>(std::move(options), client, clock, timer, backoff);
  KEEL_RETURN_IF_ERROR(backend->Init(metrics, "redis"));
  return std::unique_ptr<Lock>(new Lock(std::move(backend)));
}

Lock::Lock(std::unique_ptr<Backend> backend) : LockBase(std::move(backend)) {}

const Lock::Backend& Lock::typed() const { return static_cast<const Backend&>(backend()); }
const Lock::Options& Lock::options() const { return typed().options(); }
std::string Lock::RedisKey() const { return typed().keys().lock; }
std::string Lock::FencingKey() const { return typed().keys().fence; }

}  // namespace keel::redis
