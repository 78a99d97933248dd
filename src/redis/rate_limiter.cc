#include "keel/redis/rate_limiter.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "rate_limiter_scripts.h"

namespace keel::redis {
namespace {

using keel::internal::StrCat;
using keel::internal::ToAbsl;
using limit::Decision;

// Lua numbers are doubles: products the scripts compute must stay below 2^52 to be exact (with
// room to add a TIME value, ~2^51 until 2041, without passing 2^53).
constexpr int64_t kMaxExactMicros = int64_t{1} << 52;

const Script& GcraScript() {
  static const Script* s = new Script(internal::kGcraScript);
  return *s;
}
const Script& TokenBucketScript() {
  static const Script* s = new Script(internal::kTokenBucketScript);
  return *s;
}
const Script& FixedWindowScript() {
  static const Script* s = new Script(internal::kFixedWindowScript);
  return *s;
}
const Script& SlidingLogScript() {
  static const Script* s = new Script(internal::kSlidingLogScript);
  return *s;
}
const Script& SlidingCounterScript() {
  static const Script* s = new Script(internal::kSlidingCounterScript);
  return *s;
}

int64_t Micros(Duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

absl::Status WholeMicros(std::string_view field, Duration d) {
  if (d.count() % 1000 != 0) {
    return absl::InvalidArgumentError(
        StrCat(field, " must be a whole number of microseconds for the Redis limiter (TIME has ",
               "microsecond resolution), got ", d.count(), "ns"));
  }
  return absl::OkStatus();
}

// What Create derives from the algorithm's options.
struct Plan {
  const Script* script;
  std::vector<std::string> args;
  std::vector<std::string> suffixes;
  int64_t limit;
};

absl::StatusOr<Plan> MakePlan(const limit::Gcra::Options& o) {
  if (auto g = limit::Gcra::Create(o); !g.ok()) return g.status();
  const int64_t interval_us = o.period.count() / o.count / 1000;
  if (interval_us < 1) {
    return absl::InvalidArgumentError(
        StrCat("gcra.period / gcra.count must be at least 1us for the Redis limiter (TIME has ",
               "microsecond resolution), got ", o.period.count() / o.count, "ns"));
  }
  const int64_t limit = o.max_burst + 1;
  if (limit > kMaxExactMicros / 2 / interval_us) {
    return absl::InvalidArgumentError(StrCat(
        "gcra.max_burst ", o.max_burst, " makes the tolerance too long for the Redis limiter"));
  }
  return Plan{
      &GcraScript(), {std::to_string(interval_us), std::to_string(limit)}, {":gcra"}, limit};
}

absl::StatusOr<Plan> MakePlan(const limit::TokenBucket::Options& o) {
  auto bucket = limit::TokenBucket::Create(o);
  if (!bucket.ok()) return bucket.status();
  const int64_t interval_us = bucket->interval().count() / 1000;
  if (interval_us < 1) {
    return absl::InvalidArgumentError(
        StrCat("token_bucket.rate must be at most 1e6 per second for the Redis limiter (TIME has ",
               "microsecond resolution), got ", o.rate));
  }
  if (o.burst > kMaxExactMicros / 2 / interval_us) {
    return absl::InvalidArgumentError(
        StrCat("token_bucket.burst ", o.burst, " at this rate is too long for the Redis limiter"));
  }
  return Plan{&TokenBucketScript(),
              {std::to_string(interval_us), std::to_string(o.burst)},
              {":tb"},
              o.burst};
}

absl::StatusOr<Plan> MakePlan(const limit::FixedWindow::Options& o) {
  if (auto w = limit::FixedWindow::Create(o); !w.ok()) return w.status();
  KEEL_RETURN_IF_ERROR(WholeMicros("fixed_window.window", o.window));
  if (Micros(o.window) > kMaxExactMicros / 2) {
    return absl::InvalidArgumentError("fixed_window.window is too long for the Redis limiter");
  }
  const bool aligned = o.alignment == limit::FixedWindow::Alignment::kAligned;
  return Plan{&FixedWindowScript(),
              {std::to_string(Micros(o.window)), std::to_string(o.limit), aligned ? "1" : "0"},
              {aligned ? ":fw" : ":fwf"},
              o.limit};
}

absl::StatusOr<Plan> MakePlan(const SlidingWindowLogOptions& o) {
  if (auto l = limit::SlidingWindowLog::Create(o.window); !l.ok()) return l.status();
  KEEL_RETURN_IF_ERROR(WholeMicros("sliding_window_log.window", o.window.window));
  if (Micros(o.window.window) > kMaxExactMicros / 2) {
    return absl::InvalidArgumentError(
        "sliding_window_log.window is too long for the Redis limiter");
  }
  return Plan{&SlidingLogScript(),
              {std::to_string(Micros(o.window.window)), std::to_string(o.window.limit)},
              {":log", ":log:n"},
              o.window.limit};
}

absl::StatusOr<Plan> MakePlan(const SlidingWindowCounterOptions& o) {
  if (auto c = limit::SlidingWindowCounter::Create(o.window); !c.ok()) return c.status();
  KEEL_RETURN_IF_ERROR(WholeMicros("sliding_window_counter.window", o.window.window));
  const int64_t w = Micros(o.window.window);
  // The script computes up to (2 * limit) * window exactly.
  if (o.window.limit > kMaxExactMicros / 2 / w) {
    return absl::InvalidArgumentError(StrCat(
        "sliding_window_counter.limit * sliding_window_counter.window (in microseconds) must be ",
        "below 2^51 for the Redis limiter, got limit ", o.window.limit, " and window ", w, "us"));
  }
  return Plan{&SlidingCounterScript(),
              {std::to_string(w), std::to_string(o.window.limit)},
              {":swc"},
              o.window.limit};
}

Duration FromMicros(int64_t us) { return std::chrono::microseconds(us); }

absl::StatusOr<Decision> ParseDecision(const Reply& reply) {
  const auto& e = reply.elements();
  if (!reply.is_array() || e.size() != 5 ||
      !std::all_of(e.begin(), e.end(), [](const Reply& r) { return r.is_integer(); })) {
    return absl::InternalError(
        StrCat("redis rate limiter: unexpected script reply ", reply.DebugString()));
  }
  Decision d;
  d.allowed = e[0].integer() == 1;
  d.limit = e[1].integer();
  d.remaining = std::max<int64_t>(0, e[2].integer());
  d.reset_after = FromMicros(std::max<int64_t>(0, e[3].integer()));
  d.retry_after = e[4].integer() < 0 ? limit::kNever : FromMicros(e[4].integer());
  return d;
}

}  // namespace

absl::StatusOr<std::unique_ptr<RateLimiter>> RateLimiter::Create(Options options, Client& client,
                                                                 Clock& clock,
                                                                 MetricsRegistry* metrics) {
  if (options.name.empty() || options.name.size() > 128) {
    return absl::InvalidArgumentError(StrCat("redis_rate_limiter.name must be 1 to 128 bytes, got ",
                                             options.name.size(), " bytes"));
  }
  absl::StatusOr<Plan> plan =
      std::visit([](const auto& o) { return MakePlan(o); }, options.algorithm);
  if (!plan.ok()) return plan.status();
  std::unique_ptr<RateLimiter> limiter(new RateLimiter(std::move(options), client, clock,
                                                       *plan->script, std::move(plan->args),
                                                       std::move(plan->suffixes), plan->limit));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(limiter->RegisterMetrics(*metrics));
  return limiter;
}

RateLimiter::RateLimiter(Options options, Client& client, Clock& clock, const Script& script,
                         std::vector<std::string> args, std::vector<std::string> suffixes,
                         int64_t limit)
    : name_(std::move(options.name)),
      fail_mode_(options.fail_mode),
      cache_size_(options.blocked_cache_size),
      client_(client),
      clock_(clock),
      script_(script),
      args_(std::move(args)),
      suffixes_(std::move(suffixes)),
      limit_(limit) {}

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

std::vector<std::string> RateLimiter::Keys(std::string_view key) const {
  std::vector<std::string> keys;
  keys.reserve(suffixes_.size());
  for (const std::string& suffix : suffixes_)
    keys.push_back(StrCat("{", name_, ":", key, "}", suffix));
  return keys;
}

std::vector<std::string> RateLimiter::RedisKeys(std::string_view key) const { return Keys(key); }

std::vector<std::string_view> RateLimiter::Argv(const std::string& n,
                                                const std::string& now) const {
  std::vector<std::string_view> argv = {n, now};
  for (const std::string& a : args_) argv.push_back(a);
  return argv;
}

absl::StatusOr<Decision> RateLimiter::Check(std::string_view key, int64_t n, Deadline deadline) {
  static const std::string kServerTime;
  return Run(key, n, kServerTime, deadline, /*use_cache=*/true);
}

absl::StatusOr<Decision> RateLimiter::CheckAtForTesting(std::string_view key, int64_t n,
                                                        std::chrono::microseconds server_time,
                                                        Deadline deadline) {
  return Run(key, n, std::to_string(server_time.count()), deadline, /*use_cache=*/false);
}

absl::StatusOr<Decision> RateLimiter::Run(std::string_view key, int64_t n, const std::string& now,
                                          Deadline deadline, bool use_cache) {
  KEEL_RETURN_IF_ERROR(ValidateKey(key, n));
  if (use_cache) {
    if (std::optional<Decision> d = CachedDenial(key, n)) return *d;
  }
  if (deadline.Expired()) {
    return Fail(absl::DeadlineExceededError("the deadline passed before the call"), n);
  }
  const std::vector<std::string> keys = Keys(key);
  const std::vector<std::string_view> key_views(keys.begin(), keys.end());
  const std::string quantity = std::to_string(n);
  absl::StatusOr<Reply> reply = script_.RunArgv(client_, deadline, key_views, Argv(quantity, now));
  if (!reply.ok()) return Fail(reply.status(), n);
  absl::StatusOr<Decision> d = ParseDecision(*reply);
  if (!d.ok()) return Fail(d.status(), n);
  Record(key, n, *d, use_cache);
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
  const std::string quantity = std::to_string(n);
  static const std::string kServerTime;
  const std::vector<std::string_view> argv = Argv(quantity, kServerTime);
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
      const std::vector<std::string> redis_keys = Keys(keys[i]);
      const std::vector<std::string_view> views(redis_keys.begin(), redis_keys.end());
      script_.AddTo(pipeline, views, argv);
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
      absl::StatusOr<Decision> d = ParseDecision(*r);
      if (d.ok()) {
        Record(keys[i], n, *d, /*use_cache=*/true);
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
          client_.Command(deadline, "SCRIPT", "LOAD", std::string_view(script_.source()));
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
  d.limit = limit_;
  d.remaining = std::max<int64_t>(0, limit_ - n);
  return d;
}

void RateLimiter::Record(std::string_view key, int64_t n, const Decision& d, bool use_cache) {
  if (d.allowed) {
    allowed_.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  denied_.fetch_add(1, std::memory_order_relaxed);
  if (!use_cache || cache_size_ == 0 || d.retry_after == limit::kNever ||
      d.retry_after <= Duration::zero()) {
    return;
  }
  const TimePoint now = clock_.Now();
  MutexLock lock(mu_);
  if (blocked_.size() >= cache_size_) {
    absl::erase_if(blocked_, [now](const auto& entry) { return entry.second.until <= now; });
    if (blocked_.size() >= cache_size_) return;
  }
  blocked_[ToAbsl(key)] = Blocked{now + d.retry_after, n, d};
}

std::optional<Decision> RateLimiter::CachedDenial(std::string_view key, int64_t n) {
  // Quantities above the limit are answered by Redis with kNever, not by a cached wait.
  if (cache_size_ == 0 || n > limit_) return std::nullopt;
  const TimePoint now = clock_.Now();
  Decision d;
  {
    MutexLock lock(mu_);
    auto it = blocked_.find(ToAbsl(key));
    if (it == blocked_.end()) return std::nullopt;
    if (it->second.until <= now) {
      blocked_.erase(it);
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
