#include "keel/redis/rate_limiter.h"

#include <algorithm>
#include <charconv>
#include <optional>
#include <utility>

#include "absl/container/inlined_vector.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "redis/rate_limiter_plan.h"

namespace keel::redis {
namespace {

using keel::internal::StrCat;
using keel::internal::ToAbsl;
using limit::Decision;

// The keys and arguments of one check, `<keys...>` and `<n> <now> <args...>`, for Script::RunArgv
// and Script::AddTo, without allocating beyond one buffer for the key names (the hot path's only
// allocation). <now> is "" for the server's clock, or left out when the plan says so (the
// generated GCRA script).
class Argv {
 public:
  Argv(const internal::RateLimitPlan& plan, std::string_view name, std::string_view key, int64_t n,
       std::string_view now) {
    const size_t prefix = name.size() + key.size() + 3;
    size_t total = 0;
    for (const std::string& s : plan.suffixes) total += prefix + s.size();
    names_.reserve(total);
    for (const std::string& s : plan.suffixes) {
      const size_t start = names_.size();
      names_.append("{").append(name).append(":").append(key).append("}").append(s);
      keys_.push_back(std::string_view(names_).substr(start));  // no reallocation: reserved
    }
    const auto [end, ec] = std::to_chars(quantity_, quantity_ + sizeof(quantity_), n);
    args_.push_back(std::string_view(quantity_, static_cast<size_t>(end - quantity_)));
    if (!now.empty() || !plan.omit_server_time) args_.push_back(now);
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
  std::unique_ptr<RateLimiter> limiter(
      new RateLimiter(std::move(options), client, clock,
                      std::make_unique<const internal::RateLimitPlan>(*std::move(plan))));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(limiter->RegisterMetrics(*metrics));
  return limiter;
}

RateLimiter::RateLimiter(Options options, Client& client, Clock& clock,
                         std::unique_ptr<const internal::RateLimitPlan> plan)
    : name_(std::move(options.name)),
      fail_mode_(options.fail_mode),
      cache_size_(options.blocked_cache_size),
      client_(client),
      clock_(clock),
      plan_(std::move(plan)) {}

RateLimiter::~RateLimiter() = default;

absl::Status RateLimiter::RegisterMetrics(MetricsRegistry& metrics) {
  const Labels labels = {{"limiter", name_}};
  const struct {
    const char* name;
    const char* help;
    const std::atomic<uint64_t>* value;
  } series[] = {
      {"keel_redis_rate_limiter_allowed_total", "Requests admitted by the shared limit.",
       &allowed_},
      {"keel_redis_rate_limiter_denied_total", "Requests denied by the shared limit.", &denied_},
      {"keel_redis_rate_limiter_blocked_cache_hits_total",
       "Denials answered by the local blocked-key cache without a Redis round trip.", &cache_hits_},
      {"keel_redis_rate_limiter_fail_open_total",
       "Requests admitted because Redis failed (fail_mode kOpen).", &fail_open_},
      {"keel_redis_rate_limiter_fail_closed_total",
       "Requests refused with UNAVAILABLE because Redis failed (fail_mode kClosed).",
       &fail_closed_},
  };
  for (const auto& s : series) {
    const std::atomic<uint64_t>* value = s.value;
    KEEL_ASSIGN_OR_RETURN(MetricsRegistry::Registration r,
                          metrics.AddCounterCallback(s.name, s.help, labels, [value] {
                            return static_cast<double>(value->load(std::memory_order_relaxed));
                          }));
    registrations_.push_back(std::move(r));
  }
  return absl::OkStatus();
}

absl::Status RateLimiter::ValidateKey(std::string_view key, int64_t n) {
  if (key.empty() || key.size() > limit::kMaxKeyBytes) {
    return absl::InvalidArgumentError(StrCat("redis_rate_limiter.key must be 1 to ",
                                             limit::kMaxKeyBytes, " bytes, got ", key.size()));
  }
  if (n < 0) {
    return absl::InvalidArgumentError(StrCat("redis_rate_limiter.quantity must be >= 0, got ", n));
  }
  return absl::OkStatus();
}

int64_t RateLimiter::limit() const { return plan_->limit; }

std::vector<std::string> RateLimiter::RedisKeys(std::string_view key) const {
  std::vector<std::string> keys;
  for (const std::string& suffix : plan_->suffixes) {
    keys.push_back(StrCat("{", name_, ":", key, "}", suffix));
  }
  return keys;
}

absl::StatusOr<Decision> RateLimiter::Check(std::string_view key, int64_t n, Deadline deadline) {
  return Run(key, n, /*now=*/"", deadline, /*use_cache=*/true);
}

absl::StatusOr<Decision> RateLimiter::CheckAtForTesting(std::string_view key, int64_t n,
                                                        std::chrono::microseconds server_time,
                                                        Deadline deadline) {
  return Run(key, n, std::to_string(server_time.count()), deadline, /*use_cache=*/false);
}

absl::StatusOr<Decision> RateLimiter::Run(std::string_view key, int64_t n, std::string_view now,
                                          Deadline deadline, bool use_cache) {
  KEEL_RETURN_IF_ERROR(ValidateKey(key, n));
  if (use_cache) {
    if (std::optional<Decision> d = CachedDenial(key, n)) return *d;
  }
  if (deadline.Expired()) {
    return Fail(absl::DeadlineExceededError("the deadline passed before the call"), n);
  }
  const Argv argv(*plan_, name_, key, n, now);
  // EVALSHA, falling back to EVAL on NOSCRIPT (first use on this server, after a restart, a
  // failover or SCRIPT FLUSH).
  absl::StatusOr<Reply> reply = plan_->script->RunArgv(client_, deadline, argv.keys(), argv.args());
  if (!reply.ok()) return Fail(reply.status(), n);
  std::optional<Decision> while_blocked;
  absl::StatusOr<Decision> d = internal::DecodeReply(*plan_, n, *reply, &while_blocked);
  if (!d.ok()) return Fail(d.status(), n);
  Record(key, n, *d, while_blocked, use_cache);
  return *d;
}

absl::StatusOr<std::vector<Decision>> RateLimiter::CheckMany(std::span<const std::string_view> keys,
                                                             int64_t n, Deadline deadline) {
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
  // Runs the pending checks in one pipeline; returns the entries the server did not know the
  // script for (NOSCRIPT: nothing ran for them).
  const auto run_pending = [&](const std::vector<size_t>& which) -> std::vector<size_t> {
    std::vector<size_t> unknown_script;
    if (deadline.Expired()) {
      for (size_t i : which) results[i] = Fail(absl::DeadlineExceededError("deadline passed"), n);
      return unknown_script;
    }
    Pipeline pipeline;
    for (size_t i : which) {
      const Argv argv(*plan_, name_, keys[i], n, /*now=*/"");
      plan_->script->AddTo(pipeline, argv.keys(), argv.args());
    }
    absl::StatusOr<PipelineReplies> replies = client_.Run(deadline, pipeline);
    for (size_t j = 0; j < which.size(); ++j) {
      const size_t i = which[j];
      if (!replies.ok()) {
        results[i] = Fail(replies.status(), n);
        continue;
      }
      const absl::StatusOr<Reply>& r = (*replies)[j];
      if (!r.ok()) {
        if (IsServerError(r.status(), "NOSCRIPT")) {
          unknown_script.push_back(i);
        } else {
          results[i] = Fail(r.status(), n);
        }
        continue;
      }
      std::optional<Decision> while_blocked;
      absl::StatusOr<Decision> d = internal::DecodeReply(*plan_, n, *r, &while_blocked);
      if (d.ok()) {
        Record(keys[i], n, *d, while_blocked, /*use_cache=*/true);
        results[i] = *d;
      } else {
        results[i] = Fail(d.status(), n);
      }
    }
    return unknown_script;
  };
  if (!pending.empty()) {
    std::vector<size_t> retry = run_pending(pending);
    if (!retry.empty()) {
      // First use on this server (or after a restart / SCRIPT FLUSH): load it, then run the
      // entries that did not run.
      absl::StatusOr<Reply> loaded =
          client_.Command(deadline, "SCRIPT", "LOAD", std::string_view(plan_->script->source()));
      if (loaded.ok()) {
        retry = run_pending(retry);
      }
      for (size_t i : retry) {
        results[i] =
            Fail(loaded.ok() ? absl::UnavailableError("script not loaded") : loaded.status(), n);
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

absl::StatusOr<Decision> RateLimiter::Fail(const absl::Status& cause, int64_t n) {
  if (fail_mode_ == FailMode::kClosed) {
    fail_closed_.fetch_add(1, std::memory_order_relaxed);
    return absl::UnavailableError(
        StrCat("redis rate limiter \"", name_,
               "\" unavailable (fail_mode kClosed): ", std::string(cause.message())));
  }
  fail_open_.fetch_add(1, std::memory_order_relaxed);
  // Admitted as if the key were fresh: nothing better is known.
  Decision d;
  d.allowed = true;
  d.limit = plan_->limit;
  d.remaining = std::max<int64_t>(0, plan_->limit - n);
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
  MutexLock lock(mu_);
  if (blocked_.size() >= cache_size_) {
    absl::erase_if(blocked_, [now](const auto& entry) { return entry.second.until <= now; });
    if (blocked_.size() >= cache_size_) {
      cached_.store(blocked_.size(), std::memory_order_relaxed);
      return;
    }
  }
  blocked_[ToAbsl(key)] = Blocked{now + cached.retry_after, while_blocked ? 0 : n, cached};
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
  };
}

}  // namespace keel::redis
