// keel::redis::CacheStampedeLock (see cache_stampede.h).
#include "keel/redis/cache_stampede.h"

#include <cstdint>
#include <optional>
#include <utility>

#include "absl/strings/str_format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "keel/redis/lock.h"

namespace keel::redis {

namespace {

constexpr size_t kMaxLockName = 128;  // redis::Lock's limit

// Stable across processes and builds (absl::Hash is seeded per process).
uint64_t Fnv1a64(std::string_view bytes) {
  uint64_t h = 14695981039346656037ull;
  for (const char c : bytes) {
    h ^= static_cast<unsigned char>(c);
    h *= 1099511628211ull;
  }
  return h;
}

// Holds the lock of one key; releasing it also drops the lock's fencing counter.
class LockHold final : public cache::StampedeLock::Hold {
 public:
  LockHold(std::unique_ptr<Lock> lock, LockGuard guard, Client& client, Duration timeout)
      : lock_(std::move(lock)), guard_(std::move(guard)), client_(client), timeout_(timeout) {}
  ~LockHold() override {
    guard_->Release(Deadline::After(timeout_)).IgnoreError();  // else the lease ends by itself
    guard_.reset();
    client_.Command(Deadline::After(timeout_), "DEL", lock_->FencingKey()).IgnoreError();
  }

 private:
  std::unique_ptr<Lock> lock_;  // outlives its guard
  std::optional<LockGuard> guard_;
  Client& client_;
  const Duration timeout_;
};

}  // namespace

absl::StatusOr<std::shared_ptr<CacheStampedeLock>> CacheStampedeLock::Create(Options options,
                                                                             Client& client,
                                                                             Clock& clock) {
  const keel::internal::OptionsOf of("redis cache stampede lock", options.name);
  if (options.name.empty() || options.name.size() > 64) {
    return keel::internal::InvalidOption(of, "name", "1 to 64 bytes", options.name.size());
  }
  KEEL_RETURN_IF_ERROR(
      keel::internal::RequirePositive(of, "release_timeout", options.release_timeout));
  // The lease's own rules (whole milliseconds, >= 10 ms) are redis::Lock's: check them once here.
  KEEL_RETURN_IF_ERROR(
      of.Nest(Lock::Create({.name = "probe", .ttl = options.ttl}, client, clock).status()));
  return std::shared_ptr<CacheStampedeLock>(
      new CacheStampedeLock(std::move(options), client, clock));
}

std::string CacheStampedeLock::LockName(std::string_view key) const {
  std::string name = keel::internal::StrCat("cache:", options_.name, ":", key);
  if (name.size() <= kMaxLockName) return name;
  return keel::internal::StrCat("cache:", options_.name, ":#",
                                absl::StrFormat("%016x", Fnv1a64(key)));
}

absl::StatusOr<std::unique_ptr<cache::StampedeLock::Hold>> CacheStampedeLock::TryAcquire(
    Deadline deadline, std::string_view key) {
  KEEL_ASSIGN_OR_RETURN(
      std::unique_ptr<Lock> lock,
      Lock::Create({.name = LockName(key), .ttl = options_.ttl}, client_, clock_));
  KEEL_ASSIGN_OR_RETURN(std::optional<LockGuard> guard, lock->TryAcquire(deadline));
  if (!guard) return std::unique_ptr<Hold>();
  return std::unique_ptr<Hold>(
      new LockHold(std::move(lock), std::move(*guard), client_, options_.release_timeout));
}

}  // namespace keel::redis
