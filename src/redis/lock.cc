// keel::redis::Lock: a lease lock on one Redis node (see lock.h).
#include "keel/redis/lock.h"

#include <algorithm>
#include <utility>

#include "absl/random/random.h"
#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "lease.h"
#include "lock_node.h"

namespace keel::redis {

using keel::internal::StrCat;

namespace internal {

absl::Status ValidateLockOptions(const keel::internal::OptionsOf& of, std::string_view name,
                                 Duration ttl, Duration acquire_timeout, Duration release_timeout) {
  if (name.empty() || name.size() > 128) {
    return keel::internal::InvalidOption(of, "name", "1 to 128 bytes",
                                         StrCat(name.size(), " bytes"));
  }
  if (ttl < std::chrono::milliseconds(10) || ttl > std::chrono::hours(24 * 365)) {
    return keel::internal::InvalidOption(of, "ttl", "in [10ms, 365 days]", ttl);
  }
  if (ttl % std::chrono::milliseconds(1) != Duration::zero()) {
    return keel::internal::InvalidOption(of, "ttl", "a whole number of milliseconds", ttl);
  }
  KEEL_RETURN_IF_ERROR(keel::internal::RequirePositive(of, "acquire_timeout", acquire_timeout));
  return keel::internal::RequirePositive(of, "release_timeout", release_timeout);
}

int64_t TtlMillis(Duration ttl) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(ttl).count();
}

}  // namespace internal

class Lock::Backend final : public internal::LeaseBackend {
 public:
  Backend(Options options, Client& client, Clock& clock, Timer* timer, Backoff backoff)
      : LeaseBackend(
            Config{
                .type = "redis lock",
                .name = options.name,
                .ttl = options.ttl,
                .release_timeout = options.release_timeout,
                .on_lost = options.on_lost,
                .watchdog = options.watchdog,
            },
            clock, timer),
        options_(std::move(options)),
        client_(client),
        keys_(
            internal::MakeLockKeys("redis lock", options_.name, internal::TtlMillis(options_.ttl))),
        backoff_(backoff) {}

  absl::Status Init(MetricsRegistry* metrics) {
    KEEL_RETURN_IF_ERROR(StartTimer());
    if (metrics != nullptr) {
      KEEL_RETURN_IF_ERROR(counters().Register(*metrics, name(), "redis", registrations_));
    }
    return absl::OkStatus();
  }

  Future<void> AsyncExtend(Deadline deadline, const std::string& token) override {
    return internal::AsyncNodeExtend(client_, deadline, keys_, token);
  }
  absl::Status Extend(Deadline deadline, const std::string& token) override {
    return internal::NodeExtend(client_, deadline, keys_, token);
  }
  absl::Status Release(Deadline deadline, const std::string& token) override {
    return internal::NodeRelease(client_, deadline, keys_, token);
  }

  absl::StatusOr<std::optional<LockGuard>> TryAcquire(Deadline deadline) {
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

  absl::StatusOr<LockGuard> Acquire(Deadline deadline, const Backoff& backoff,
                                    absl::BitGenRef random) {
    if (deadline.IsInfinite()) deadline = Deadline::After(options_.acquire_timeout, clock());
    return internal::AcquireWithBackoff(*this, deadline, backoff, random,
                                        [this](Deadline d) { return TryAcquire(d); });
  }

  const Options& options() const { return options_; }
  const internal::LockKeys& keys() const { return keys_; }
  const Backoff& backoff() const { return backoff_; }

 private:
  const Options options_;
  Client& client_;
  const internal::LockKeys keys_;
  const Backoff backoff_;
  std::vector<MetricsRegistry::Registration> registrations_;
};

absl::StatusOr<std::unique_ptr<Lock>> Lock::Create(Options options, Client& client, Clock& clock,
                                                   MetricsRegistry* metrics, Timer* timer) {
  const keel::internal::OptionsOf of("redis lock", options.name);
  KEEL_RETURN_IF_ERROR(internal::ValidateLockOptions(
      of, options.name, options.ttl, options.acquire_timeout, options.release_timeout));
  absl::StatusOr<Backoff> backoff = Backoff::Create(options.retry, "retry");
  if (!backoff.ok()) return of.Nest(backoff.status());
  if (options.watchdog && client.options().transport != Transport::kMultiplexed) {
    return keel::internal::InvalidOption(
        of, "watchdog", "used with a client on the multiplexed transport", "a pooled client");
  }
  if (timer != nullptr && &timer->clock() != &clock) {
    return absl::InvalidArgumentError(
        StrCat("redis lock \"", options.name, "\": the timer must run on the lock's clock"));
  }
  auto backend = std::make_unique<Backend>(std::move(options), client, clock, timer, *backoff);
  KEEL_RETURN_IF_ERROR(backend->Init(metrics));
  return std::unique_ptr<Lock>(new Lock(std::move(backend)));
}

Lock::Lock(std::unique_ptr<Backend> backend) : backend_(std::move(backend)) {}
// The guard taken by lock() (Lockable, a base class) is released while the backend it points
// to still exists.
Lock::~Lock() { unlock(); }

absl::StatusOr<std::optional<LockGuard>> Lock::TryAcquire(Deadline deadline) {
  return backend_->TryAcquire(deadline);
}

absl::StatusOr<LockGuard> Lock::Acquire(Deadline deadline) {
  absl::BitGen random;  // per call: a BitGen is not thread-safe, and seeding one is cheap
  return backend_->Acquire(deadline, backend_->backoff(), random);
}

absl::StatusOr<LockGuard> Lock::Acquire(Deadline deadline, const Backoff& backoff,
                                        absl::BitGenRef random) {
  return backend_->Acquire(deadline, backoff, random);
}

LockStats Lock::Stats() const { return backend_->counters().Snapshot(); }
const Lock::Options& Lock::options() const { return backend_->options(); }
Clock& Lock::clock() const { return backend_->clock(); }
std::string Lock::RedisKey() const { return backend_->keys().lock; }
std::string Lock::FencingKey() const { return backend_->keys().fence; }

}  // namespace keel::redis
