#include "keel/redis/rate_limiter.h"

#include <algorithm>
#include <charconv>
#include <deque>
#include <optional>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "redis/rate_limiter_fallback.h"
#include "redis/rate_limiter_plan.h"

namespace keel::redis {
namespace {

using keel::internal::StrCat;
using keel::internal::ToAbsl;
using limit::Decision;

// The keys and arguments of one check, `<keys...>` and `<n> <now> <control> <args...>`, for
// Script::RunArgv and Script::AddTo, without allocating beyond one buffer for the key names (the
// hot path's only allocation). <now> is "" for the server's clock; the generated GCRA script
// takes `<n> <control> [<now>]` (plan.compact_argv).
class Argv {
 public:
  Argv(const internal::RateLimitPlan& plan, std::string_view name, std::string_view key, int64_t n,
       std::string_view now, std::string_view control) {
    const size_t prefix = name.size() + key.size() + 3;
    size_t total = 0;
    for (const std::string& s : plan.suffixes) total += prefix + s.size();
    names_.reserve(total);
    for (const std::string& s : plan.suffixes) {
      const size_t start = names_.size();
      names_.append("{").append(name).append(":").append(key).append("}").append(s);
      keys_.push_back(std::string_view(names_).substr(start));  // no reallocation: reserved
    }
    keys_.reserve(plan.suffixes.size());
    args_.reserve(3 + plan.args.size());
    const auto [end, ec] = std::to_chars(quantity_, quantity_ + sizeof(quantity_), n);
    args_.push_back(std::string_view(quantity_, static_cast<size_t>(end - quantity_)));
    if (plan.compact_argv) {
      args_.push_back(control);
      if (!now.empty()) args_.push_back(now);
    } else {
      args_.push_back(now);
      args_.push_back(control);
    }
    for (const std::string& a : plan.args) args_.push_back(a);
  }
  Argv(const Argv&) = delete;
  Argv& operator=(const Argv&) = delete;

  std::span<const std::string_view> keys() const { return keys_; }
  std::span<const std::string_view> args() const { return args_; }

 private:
  std::string names_;  // the Redis key names, one buffer
  char quantity_[24];
  absl::InlinedVector<std::string_view, 4> keys_;
  absl::InlinedVector<std::string_view, 12> args_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<RateLimiter>> RateLimiter::Create(Options options, Client& client,
                                                                 Clock& clock,
                                                                 MetricsRegistry* metrics) {
  absl::StatusOr<internal::RateLimitPlan> plan = internal::MakePlan(options);
  if (!plan.ok()) return plan.status();
  if (options.late_check_allowance) {
    KEEL_RETURN_IF_ERROR(keel::internal::RequireNonNegative({"redis rate limiter", options.name},
                                                            "late_check_allowance",
                                                            *options.late_check_allowance));
  }
  std::unique_ptr<internal::LocalFallback> fallback;
  if (options.local_fallback) {
    KEEL_ASSIGN_OR_RETURN(fallback, internal::LocalFallback::Create(options, clock));
  }
  std::unique_ptr<RateLimiter> limiter(
      new RateLimiter(std::move(options), client, clock,
                      std::make_unique<const internal::RateLimitPlan>(*std::move(plan))));
  limiter->fallback_ = std::move(fallback);
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(limiter->RegisterMetrics(*metrics));
  return limiter;
}

RateLimiter::RateLimiter(Options options, Client& client, Clock& clock,
                         std::unique_ptr<const internal::RateLimitPlan> plan)
    : name_(std::move(options.name)),
      fail_mode_(options.fail_mode),
      cache_size_(options.blocked_cache_size),
      late_allowance_(options.late_check_allowance),
      client_(client),
      clock_(clock),
      plan_(std::move(plan)) {}

RateLimiter::~RateLimiter() = default;

absl::Status RateLimiter::RegisterMetrics(MetricsRegistry& metrics) {
  const auto add = [&](const char* family, const char* help, Labels labels,
                       const std::atomic<uint64_t>* value) -> absl::Status {
    KEEL_ASSIGN_OR_RETURN(MetricsRegistry::Registration r,
                          metrics.AddCounterCallback(family, help, std::move(labels), [value] {
                            return static_cast<double>(value->load(std::memory_order_relaxed));
                          }));
    registrations_.push_back(std::move(r));
    return absl::OkStatus();
  };
  // The family the in-process limiters count in too, told apart by backend="redis".
  const std::pair<const char*, const std::atomic<uint64_t>*> decisions[] = {
      {"allowed", &allowed_},
      {"denied", &denied_},
      {"fail_open", &fail_open_},
      {"fail_closed", &fail_closed_},
      {"fallback_allowed", &fallback_allowed_},
      {"fallback_denied", &fallback_denied_},
  };
  for (const auto& [decision, value] : decisions) {
    KEEL_RETURN_IF_ERROR(add(limit::internal::kDecisionsFamily, limit::internal::kDecisionsHelp,
                             {{"name", name_}, {"decision", decision}, {"backend", "redis"}},
                             value));
  }
  return add("keel_redis_rate_limiter_blocked_cache_hits_total",
             "Denials answered by the local blocked-key cache without a Redis round trip.",
             {{"name", name_}}, &cache_hits_);
}

absl::Status RateLimiter::ValidateKey(std::string_view key, int64_t n) const {
  if (key.empty() || key.size() > limit::kMaxKeyBytes) {
    return absl::InvalidArgumentError(StrCat("redis rate limiter \"", name_,
                                             "\": key must be 1 to ", limit::kMaxKeyBytes,
                                             " bytes, got ", key.size()));
  }
  if (n < 0) {
    return keel::internal::InvalidOption({"redis rate limiter", name_}, "quantity", ">= 0", n);
  }
  return absl::OkStatus();
}

std::string_view RateLimiter::Control(Mode mode, Deadline deadline, ControlBuf& buf) const {
  if (mode == Mode::kDryRun || mode == Mode::kReplayDryRun) return "d";
  if (mode == Mode::kReplay || !late_allowance_) return "";
  // The latest server time at which the caller may still be waiting for this answer, on the
  // wall clock the server's TIME reads: the steady deadline moved to this machine's wall clock,
  // plus the allowance for the skew between the two machines' clocks.
  const Duration remaining = deadline.IsInfinite()
                                 ? client_.options().command_timeout
                                 : std::max(Duration::zero(), deadline.Remaining());
  const auto latest = std::chrono::system_clock::now() + remaining + *late_allowance_;
  const int64_t us =
      std::chrono::duration_cast<std::chrono::microseconds>(latest.time_since_epoch()).count();
  const auto [end, ec] = std::to_chars(buf.bytes, buf.bytes + sizeof(buf.bytes), us);
  return std::string_view(buf.bytes, static_cast<size_t>(end - buf.bytes));
}

int64_t RateLimiter::limit() const { return plan_->limit; }

std::vector<std::string> RateLimiter::RedisKeys(std::string_view key) const {
  std::vector<std::string> keys;
  for (const std::string& suffix : plan_->suffixes) {
    keys.push_back(StrCat("{", name_, ":", key, "}", suffix));
  }
  return keys;
}

absl::StatusOr<Decision> RateLimiter::TryAcquire(Deadline deadline, std::string_view key,
                                                 int64_t n) {
  return Run(deadline, key, n, /*now=*/"", Mode::kConsume);
}

absl::StatusOr<Decision> RateLimiter::Check(Deadline deadline, std::string_view key, int64_t n) {
  return Run(deadline, key, n, /*now=*/"", Mode::kDryRun);
}

absl::StatusOr<Decision> RateLimiter::TryAcquireAtForTesting(Deadline deadline,
                                                             std::string_view key, int64_t n,
                                                             std::chrono::microseconds server_time,
                                                             bool dry_run) {
  return Run(deadline, key, n, std::to_string(server_time.count()),
             dry_run ? Mode::kReplayDryRun : Mode::kReplay);
}

absl::StatusOr<Decision> RateLimiter::Run(Deadline deadline, std::string_view key, int64_t n,
                                          std::string_view now, Mode mode) {
  KEEL_RETURN_IF_ERROR(ValidateKey(key, n));
  // Only a consuming call uses the cache: a dry run and a replay must see Redis's answer.
  if (mode == Mode::kConsume) {
    if (std::optional<Decision> d = CachedDenial(key, n)) return *d;
  }
  if (deadline.Expired()) {
    return Fail(absl::DeadlineExceededError("the deadline passed before the call"), key, n, mode);
  }
  ControlBuf buf;
  const std::string_view control = Control(mode, deadline, buf);
  const Argv argv(*plan_, name_, key, n, now, control);
  // EVALSHA, falling back to EVAL on NOSCRIPT (first use on this server, after a restart, a
  // failover or SCRIPT FLUSH).
  return Decide(plan_->script->RunArgv(client_, deadline, argv.keys(), argv.args()), key, n, mode);
}

absl::StatusOr<Decision> RateLimiter::Decide(absl::StatusOr<Reply> reply, std::string_view key,
                                             int64_t n, Mode mode) {
  if (!reply.ok()) return Fail(reply.status(), key, n, mode);
  std::optional<Decision> while_blocked;
  absl::StatusOr<Decision> d = internal::DecodeReply(*plan_, n, *reply, &while_blocked);
  if (!d.ok()) return Fail(d.status(), key, n, mode);
  if (mode == Mode::kConsume || mode == Mode::kReplay) {
    Record(key, n, *d, while_blocked, /*use_cache=*/mode == Mode::kConsume);
  }
  return *d;
}

Future<Decision> RateLimiter::TryAcquireAsync(Deadline deadline, std::string_view key, int64_t n) {
  if (absl::Status valid = ValidateKey(key, n); !valid.ok()) {
    return Future<Decision>::Ready(std::move(valid), clock_);
  }
  if (client_.options().transport != Transport::kMultiplexed) {
    return Future<Decision>::Ready(
        absl::FailedPreconditionError(
            StrCat("redis rate limiter \"", name_,
                   "\": async checks run on the multiplexed transport; the client uses kPooled")),
        clock_);
  }
  if (std::optional<Decision> d = CachedDenial(key, n)) return Future<Decision>::Ready(*d, clock_);
  if (deadline.Expired()) {
    return Future<Decision>::Ready(
        Fail(absl::DeadlineExceededError("the deadline passed before the call"), key, n,
             Mode::kConsume),
        clock_);
  }
  ControlBuf buf;
  const std::string_view control = Control(Mode::kConsume, deadline, buf);
  const Argv argv(*plan_, name_, key, n, /*now=*/"", control);
  Promise<Decision> promise(clock_);
  Future<Decision> future = promise.future();
  // The callback form: the script's completion decides and sets this promise directly, with no
  // future in between.
  plan_->script->AsyncRunArgv(client_, deadline, argv.keys(), argv.args(),
                              [this, promise = std::move(promise), key = std::string(key),
                               n](absl::StatusOr<Reply> reply) mutable {
                                promise.Set(Decide(std::move(reply), key, n, Mode::kConsume));
                              });
  return future;
}

absl::StatusOr<std::vector<Decision>> RateLimiter::TryAcquireMany(
    Deadline deadline, std::span<const std::string_view> keys, int64_t n) {
  for (std::string_view key : keys) KEEL_RETURN_IF_ERROR(ValidateKey(key, n));
  std::vector<std::optional<absl::StatusOr<Decision>>> results(keys.size());
  std::vector<size_t> pending;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (std::optional<Decision> d = CachedDenial(keys[i], n)) {
      results[i] = *d;
    } else {
      pending.push_back(i);
    }
  }
  if (!pending.empty() && deadline.Expired()) {
    for (size_t i : pending) {
      results[i] = Fail(absl::DeadlineExceededError("the deadline passed before the call"), keys[i],
                        n, Mode::kConsume);
    }
    pending.clear();
  }
  if (!pending.empty()) {
    ControlBuf buf;
    const std::string_view control = Control(Mode::kConsume, deadline, buf);
    std::deque<Argv> argvs;  // stable addresses: the calls point into them
    std::vector<Script::Call> calls;
    calls.reserve(pending.size());
    for (size_t i : pending) {
      const Argv& argv = argvs.emplace_back(*plan_, name_, keys[i], n, /*now=*/"", control);
      calls.push_back({argv.keys(), argv.args()});
    }
    // One pipeline, with Script's NOSCRIPT fallback for a server that does not know the script
    // yet (first use, a restart, a failover or SCRIPT FLUSH).
    absl::StatusOr<PipelineReplies> replies = plan_->script->RunMany(client_, deadline, calls);
    for (size_t j = 0; j < pending.size(); ++j) {
      const size_t i = pending[j];
      if (!replies.ok()) {
        results[i] = Fail(replies.status(), keys[i], n, Mode::kConsume);
        continue;
      }
      const absl::StatusOr<Reply>& r = (*replies)[j];
      if (!r.ok()) {
        results[i] = Fail(r.status(), keys[i], n, Mode::kConsume);
        continue;
      }
      std::optional<Decision> while_blocked;
      absl::StatusOr<Decision> d = internal::DecodeReply(*plan_, n, *r, &while_blocked);
      if (d.ok()) {
        Record(keys[i], n, *d, while_blocked, /*use_cache=*/true);
        results[i] = *d;
      } else {
        results[i] = Fail(d.status(), keys[i], n, Mode::kConsume);
      }
    }
  }
  std::vector<Decision> decisions;
  decisions.reserve(keys.size());
  for (auto& r : results) {
    if (!r->ok()) return r->status();
    decisions.push_back(**r);
  }
  return decisions;
}

absl::StatusOr<Decision> RateLimiter::Fail(const absl::Status& cause, std::string_view key,
                                           int64_t n, Mode mode) {
  const bool dry_run = mode == Mode::kDryRun || mode == Mode::kReplayDryRun;
  if (fallback_ != nullptr) {
    Decision d = fallback_->Decide(key, n, dry_run);
    // `limit` stays the configured limit (what RateLimit-Policy announces); the other figures
    // are this process's share, and `degraded` says so.
    d.limit = plan_->limit;
    if (!dry_run)
      (d.allowed ? fallback_allowed_ : fallback_denied_).fetch_add(1, std::memory_order_relaxed);
    return d;
  }
  if (dry_run) {
    // A dry run changes nothing, so it is not a fail-open or fail-closed decision to count.
  } else if (fail_mode_ == FailMode::kClosed) {
    fail_closed_.fetch_add(1, std::memory_order_relaxed);
  } else {
    fail_open_.fetch_add(1, std::memory_order_relaxed);
  }
  if (fail_mode_ == FailMode::kClosed) {
    return absl::UnavailableError(StrCat("redis rate limiter \"", name_,
                                         "\": unavailable (fail_mode kClosed): ", cause.message()));
  }
  // Admitted without knowing the key's state: `limit` is the configured one, the rest unknown
  // (left at zero, and marked so that nobody reports them).
  Decision d;
  d.allowed = true;
  d.limit = plan_->limit;
  d.degraded = true;
  return d;
}

void RateLimiter::Record(std::string_view key, int64_t n, const Decision& d,
                         const std::optional<Decision>& while_blocked, bool use_cache) {
  if (d.allowed) {
    allowed_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  denied_.fetch_add(1, std::memory_order_relaxed);
  // During a block every request, whatever its quantity, gets the block's decision.
  const Decision& cached = while_blocked ? *while_blocked : d;
  if (!use_cache || cache_size_ == 0 || cached.retry_after == limit::kNever ||
      cached.retry_after <= Duration::zero()) {
    return;
  }
  const TimePoint now = clock_.Now();
  const Blocked entry{now + cached.retry_after, while_blocked ? 0 : n, cached};
  MutexLock lock(mu_);
  auto it = blocked_.find(ToAbsl(key));
  if (it != blocked_.end()) {
    by_expiry_.erase({it->second.until, &it->first});
  } else {
    // At the cap, drop the entries that have ended, soonest first: O(log n) each, so a flood of
    // distinct denied keys costs every denial the same whatever the cache holds.
    while (blocked_.size() >= cache_size_ && !by_expiry_.empty() &&
           by_expiry_.begin()->first <= now) {
      const std::string* ended = by_expiry_.begin()->second;
      by_expiry_.erase(by_expiry_.begin());
      blocked_.erase(*ended);
    }
    if (blocked_.size() >= cache_size_) {
      // Every entry is still running: this denial is not remembered (Redis still answers it).
      cached_.store(blocked_.size(), std::memory_order_relaxed);
      return;
    }
    it = blocked_.emplace(std::string(key), entry).first;
  }
  it->second = entry;
  by_expiry_.insert({entry.until, &it->first});
  cached_.store(blocked_.size(), std::memory_order_relaxed);
}

std::optional<Decision> RateLimiter::CachedDenial(std::string_view key, int64_t n) {
  // Quantities above the limit are answered by Redis with kNever, not by a cached wait.
  if (cache_size_ == 0 || n > plan_->limit) return std::nullopt;
  if (cached_.load(std::memory_order_relaxed) == 0) return std::nullopt;
  const TimePoint now = clock_.Now();
  Decision d;
  {
    MutexLock lock(mu_);
    auto it = blocked_.find(ToAbsl(key));
    if (it == blocked_.end()) return std::nullopt;
    if (it->second.until <= now) {
      by_expiry_.erase({it->second.until, &it->first});
      blocked_.erase(it);
      cached_.store(blocked_.size(), std::memory_order_relaxed);
      return std::nullopt;
    }
    // A denial for quantity q says nothing about smaller quantities (they may fit now).
    if (n < it->second.quantity) return std::nullopt;
    const Blocked& b = it->second;
    d = b.decision;
    const Duration elapsed = now - (b.until - b.decision.retry_after);
    d.retry_after = b.until - now;
    d.reset_after = std::max(Duration::zero(), b.decision.reset_after - elapsed);
  }
  cache_hits_.fetch_add(1, std::memory_order_relaxed);
  denied_.fetch_add(1, std::memory_order_relaxed);
  return d;
}

RateLimiterStats RateLimiter::Stats() const {
  return RateLimiterStats{
      .allowed_total = allowed_.load(std::memory_order_relaxed),
      .denied_total = denied_.load(std::memory_order_relaxed),
      .blocked_cache_hits_total = cache_hits_.load(std::memory_order_relaxed),
      .fail_open_total = fail_open_.load(std::memory_order_relaxed),
      .fail_closed_total = fail_closed_.load(std::memory_order_relaxed),
      .fallback_allowed_total = fallback_allowed_.load(std::memory_order_relaxed),
      .fallback_denied_total = fallback_denied_.load(std::memory_order_relaxed),
  };
}

}  // namespace keel::redis
