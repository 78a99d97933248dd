#include "keel/redis/concurrency_limiter.h"

#include "absl/random/random.h"
#include "absl/strings/str_format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "keel/limit/decision.h"
#include "keel/redis/script.h"
#include "rate_limiter_scripts.h"

namespace keel::redis {
namespace {

using keel::internal::StrCat;

const Script& AcquireScript() {
  static const Script* s = new Script(internal::kConcurrencyAcquireScript);
  return *s;
}
const Script& RenewScript() {
  static const Script* s = new Script(internal::kConcurrencyRenewScript);
  return *s;
}

int64_t LeaseMicros(Duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ConcurrencyLimiter>> ConcurrencyLimiter::Create(Options options,
                                                                               Client& client) {
  const keel::internal::OptionsOf of("redis concurrency limiter", options.name);
  if (options.name.empty() || options.name.size() > 128) {
    return keel::internal::InvalidOption(of, "name", "1 to 128 bytes",
                                         StrCat(options.name.size(), " bytes"));
  }
  KEEL_RETURN_IF_ERROR(keel::internal::RequireAtLeast(of, "max", options.max, 1));
  if (options.lease < std::chrono::milliseconds(1) ||
      options.lease > std::chrono::hours(24 * 365)) {
    return keel::internal::InvalidOption(of, "lease", "in [1ms, 365 days]", options.lease);
  }
  KEEL_RETURN_IF_ERROR(
      keel::internal::RequirePositive(of, "release_timeout", options.release_timeout));
  std::unique_ptr<ConcurrencyLimiter> limiter(new ConcurrencyLimiter(std::move(options), client));
  absl::BitGen gen;
  limiter->instance_id_ =
      absl::StrFormat("%016x%016x", absl::Uniform<uint64_t>(gen), absl::Uniform<uint64_t>(gen));
  return limiter;
}

std::string ConcurrencyLimiter::RedisKey(std::string_view key) const {
  return StrCat("{", options_.name, ":", key, "}:cc");
}

std::string ConcurrencyLimiter::NewId() {
  return StrCat(instance_id_, ":", sequence_.fetch_add(1, std::memory_order_relaxed));
}

absl::StatusOr<std::optional<ConcurrencyLimiter::Permit>> ConcurrencyLimiter::TryAcquire(
    Deadline deadline, std::string_view key) {
  static const std::string kServerTime;
  return Acquire(key, kServerTime, deadline);
}

absl::StatusOr<std::optional<ConcurrencyLimiter::Permit>>
ConcurrencyLimiter::TryAcquireAtForTesting(Deadline deadline, std::string_view key,
                                           std::chrono::microseconds server_time) {
  return Acquire(key, std::to_string(server_time.count()), deadline);
}

absl::Status ConcurrencyLimiter::ValidateKey(std::string_view key) const {
  if (key.empty() || key.size() > limit::kMaxKeyBytes) {
    return absl::InvalidArgumentError(StrCat("redis concurrency limiter \"", options_.name,
                                             "\": key must be 1 to ", limit::kMaxKeyBytes,
                                             " bytes, got ", key.size()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<ConcurrencyLimiter::Permit>> ConcurrencyLimiter::Acquire(
    std::string_view key, const std::string& now, Deadline deadline) {
  KEEL_RETURN_IF_ERROR(ValidateKey(key));
  std::string redis_key = RedisKey(key);
  std::string id = NewId();
  absl::StatusOr<Reply> reply =
      deadline.Expired()
          ? absl::StatusOr<Reply>(absl::DeadlineExceededError("the deadline passed"))
          : AcquireScript().Run(client_, deadline, {redis_key},
                                {id, now, LeaseMicros(options_.lease), options_.max});
  return Decide(std::move(reply), std::move(redis_key), std::move(id));
}

Future<std::optional<ConcurrencyLimiter::Permit>> ConcurrencyLimiter::TryAcquireAsync(
    Deadline deadline, std::string_view key) {
  using Result = std::optional<Permit>;
  if (absl::Status valid = ValidateKey(key); !valid.ok()) {
    return Future<Result>::Ready(std::move(valid));
  }
  if (client_.options().transport != Transport::kMultiplexed) {
    return Future<Result>::Ready(absl::FailedPreconditionError(
        StrCat("redis concurrency limiter \"", options_.name,
               "\": async acquires run on the multiplexed transport; the client uses kPooled")));
  }
  std::string redis_key = RedisKey(key);
  std::string id = NewId();
  if (deadline.Expired()) {
    return Future<Result>::Ready(
        Decide(absl::DeadlineExceededError("the deadline passed"), redis_key, id));
  }
  Promise<Result> promise;
  Future<Result> future = promise.future();
  const std::string lease = std::to_string(LeaseMicros(options_.lease));
  const std::string max = std::to_string(options_.max);
  const std::string_view keys[] = {redis_key};
  const std::string_view args[] = {id, std::string_view(), lease, max};
  AcquireScript().AsyncRunArgv(
      client_, deadline, keys, args,
      [this, promise = std::move(promise), redis_key, id](absl::StatusOr<Reply> reply) mutable {
        promise.Set(Decide(std::move(reply), std::move(redis_key), std::move(id)));
      });
  return future;
}

absl::StatusOr<std::optional<ConcurrencyLimiter::Permit>> ConcurrencyLimiter::Decide(
    absl::StatusOr<Reply> reply, std::string redis_key, std::string id) {
  if (reply.ok() &&
      (!reply->is_array() || reply->elements().empty() || !reply->elements()[0].is_integer())) {
    reply = absl::InternalError(
        StrCat("redis concurrency limiter: unexpected script reply ", reply->DebugString()));
  }
  if (!reply.ok()) {
    if (options_.fail_mode == FailMode::kClosed) {
      fail_closed_.fetch_add(1, std::memory_order_relaxed);
      return absl::UnavailableError(
          StrCat("redis concurrency limiter \"", options_.name,
                 "\": unavailable (fail_mode kClosed): ", reply.status().message()));
    }
    fail_open_.fetch_add(1, std::memory_order_relaxed);
    return std::optional<Permit>(Permit(this, std::string(), std::string()));
  }
  if (reply->elements()[0].integer() != 1) {
    rejected_.fetch_add(1, std::memory_order_relaxed);
    return std::optional<Permit>();
  }
  acquired_.fetch_add(1, std::memory_order_relaxed);
  return std::optional<Permit>(Permit(this, std::move(redis_key), std::move(id)));
}

ConcurrencyLimiterStats ConcurrencyLimiter::Stats() const {
  return ConcurrencyLimiterStats{
      .acquired_total = acquired_.load(std::memory_order_relaxed),
      .rejected_total = rejected_.load(std::memory_order_relaxed),
      .fail_open_total = fail_open_.load(std::memory_order_relaxed),
      .fail_closed_total = fail_closed_.load(std::memory_order_relaxed),
  };
}

ConcurrencyLimiter::Permit& ConcurrencyLimiter::Permit::operator=(Permit&& other) noexcept {
  if (this != &other) {
    Release();
    owner_ = std::exchange(other.owner_, nullptr);
    key_ = std::move(other.key_);
    id_ = std::move(other.id_);
  }
  return *this;
}

void ConcurrencyLimiter::Permit::Release() {
  ConcurrencyLimiter* owner = std::exchange(owner_, nullptr);
  if (owner == nullptr || id_.empty()) return;
  // Best effort: if this fails, the lease gives the slot back.
  const Deadline deadline = Deadline::After(owner->options_.release_timeout);
  if (owner->client_.OnIoThread()) {
    // Released in a callback or coroutine on the I/O thread, which must not block: sent, not
    // waited for. The ZREM is queued before anything this thread sends next.
    owner->client_.AsyncCommand(deadline, "ZREM", key_, id_).Then([](absl::StatusOr<Reply>) {});
    return;
  }
  (void)owner->client_.Command(deadline, "ZREM", key_, id_);
}

absl::Status ConcurrencyLimiter::Permit::Renew(Deadline deadline) {
  if (owner_ == nullptr) {
    return absl::FailedPreconditionError("redis concurrency limiter: permit already released");
  }
  if (id_.empty()) return absl::OkStatus();  // a fail-open permit: nothing to renew
  static const std::string kServerTime;
  KEEL_ASSIGN_OR_RETURN(Reply r,
                        RenewScript().Run(owner_->client_, deadline, {key_},
                                          {id_, kServerTime, LeaseMicros(owner_->options_.lease)}));
  if (r.integer() != 1) {
    return absl::AbortedError(StrCat("redis concurrency limiter \"", owner_->options_.name,
                                     "\": the permit's lease ran out and was reclaimed"));
  }
  return absl::OkStatus();
}

}  // namespace keel::redis
