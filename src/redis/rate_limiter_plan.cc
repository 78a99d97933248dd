#include "redis/rate_limiter_plan.h"

#include <algorithm>
#include <utility>

#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "redis/rate_limiter_scripts.h"

namespace keel::redis::internal {
namespace {

using keel::internal::StrCat;
using limit::Decision;

// Lua numbers are doubles: products the scripts compute must stay below 2^52 to be exact (with
// room to add a TIME value, ~2^51 until 2041, without passing 2^53).
constexpr int64_t kMaxExactMicros = int64_t{1} << 52;
// Bounds the script's work per call (and the reply): a key rarely needs more than a few limits.
constexpr size_t kMaxLimits = 16;
// As keel::limit::Keyed: `now + block_for` must not overflow.
constexpr Duration kLongestBlock = std::chrono::hours(24 * 365 * 50);

const Script& GcraScript() {
  static const Script* s = new Script(kGcraScript);
  return *s;
}
const Script& TokenBucketScript() {
  static const Script* s = new Script(kTokenBucketScript);
  return *s;
}
const Script& FixedWindowScript() {
  static const Script* s = new Script(kFixedWindowScript);
  return *s;
}
const Script& SlidingLogScript() {
  static const Script* s = new Script(kSlidingLogScript);
  return *s;
}
const Script& SlidingCounterScript() {
  static const Script* s = new Script(kSlidingCounterScript);
  return *s;
}

int64_t Micros(Duration d) {
  return std::chrono::duration_cast<std::chrono::microseconds>(d).count();
}

absl::Status WholeMicros(const keel::internal::OptionsOf& of, std::string_view field, Duration d) {
  if (d.count() % 1000 == 0) return absl::OkStatus();
  return keel::internal::InvalidOption(
      of, field,
      "a whole number of microseconds for the Redis limiter (TIME has microsecond resolution)", d);
}

// One limit's share of the plan.
struct LimitPart {
  const Script* script;
  ReplyShape shape;
  std::vector<std::string> args;      // its parameters, in ARGV order
  std::vector<std::string> suffixes;  // its keys when it is the only limit
  int64_t limit;
  GcraParams gcra{};
  int64_t estimate_window_us = 0;  // the sliding window counter's window (us), else 0
};

absl::StatusOr<LimitPart> MakePart(const limit::Gcra::Options& o) {
  if (auto g = limit::Gcra::Create(o); !g.ok()) return g.status();
  const int64_t interval_us = o.period.count() / o.count / 1000;
  if (interval_us < 1) {
    return absl::InvalidArgumentError(
        StrCat("gcra.period / gcra.count must be at least 1us for the Redis limiter (TIME has ",
               "microsecond resolution), got ",
               keel::internal::FormatDuration(Duration(o.period.count() / o.count))));
  }
  const int64_t limit = o.max_burst + 1;
  if (limit > kMaxExactMicros / 2 / interval_us) {
    return absl::InvalidArgumentError(StrCat(
        "gcra.max_burst ", o.max_burst, " makes the tolerance too long for the Redis limiter"));
  }
  const int64_t tau = interval_us * limit;
  return LimitPart{&GcraScript(),
                   ReplyShape::kGcra,
                   {std::to_string(interval_us), std::to_string(tau)},
                   {":gcra"},
                   limit,
                   {.interval_us = interval_us, .tau_us = tau, .limit = limit}};
}

absl::StatusOr<LimitPart> MakePart(const limit::TokenBucket::Options& o) {
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
  return LimitPart{&TokenBucketScript(),
                   ReplyShape::kFiveTuple,
                   {std::to_string(interval_us), std::to_string(o.burst)},
                   {":tb"},
                   o.burst};
}

absl::StatusOr<LimitPart> MakePart(const limit::FixedWindow::Options& o) {
  if (auto w = limit::FixedWindow::Create(o); !w.ok()) return w.status();
  KEEL_RETURN_IF_ERROR(WholeMicros("fixed_window", "window", o.window));
  if (Micros(o.window) > kMaxExactMicros / 2) {
    return absl::InvalidArgumentError("fixed_window.window is too long for the Redis limiter");
  }
  const bool aligned = o.alignment == limit::FixedWindow::Alignment::kAligned;
  return LimitPart{&FixedWindowScript(),
                   ReplyShape::kFiveTuple,
                   {std::to_string(Micros(o.window)), std::to_string(o.limit), aligned ? "1" : "0"},
                   {aligned ? ":fw" : ":fwf"},
                   o.limit};
}

absl::StatusOr<LimitPart> MakePart(const SlidingWindowLogOptions& o) {
  if (auto l = limit::SlidingWindowLog::Create(o.window); !l.ok()) return l.status();
  KEEL_RETURN_IF_ERROR(WholeMicros("sliding_window_log", "window", o.window.window));
  if (Micros(o.window.window) > kMaxExactMicros / 2) {
    return absl::InvalidArgumentError(
        "sliding_window_log.window is too long for the Redis limiter");
  }
  return LimitPart{&SlidingLogScript(),
                   ReplyShape::kFiveTuple,
                   {std::to_string(Micros(o.window.window)), std::to_string(o.window.limit)},
                   {":log", ":log:n"},
                   o.window.limit};
}

absl::StatusOr<LimitPart> MakePart(const SlidingWindowCounterOptions& o) {
  if (auto c = limit::SlidingWindowCounter::Create(o.window); !c.ok()) return c.status();
  KEEL_RETURN_IF_ERROR(WholeMicros("sliding_window_counter", "window", o.window.window));
  const int64_t w = Micros(o.window.window);
  // The script computes up to (2 * limit) * window exactly.
  if (o.window.limit > kMaxExactMicros / 2 / w) {
    return absl::InvalidArgumentError(StrCat(
        "sliding_window_counter.limit * sliding_window_counter.window (in microseconds) must be ",
        "below 2^51 for the Redis limiter, got limit ", o.window.limit, " and window ",
        keel::internal::FormatDuration(o.window.window)));
  }
  return LimitPart{&SlidingCounterScript(),
                   ReplyShape::kFiveTuple,
                   {std::to_string(w), std::to_string(o.window.limit)},
                   {":swc"},
                   o.window.limit,
                   {},
                   w};
}

Duration FromMicros(int64_t us) { return std::chrono::microseconds(us); }

// Limit `g` as the in-process Gcra::Check(n) decides it, from the script's value (see
// kGcraScript): the same arithmetic, done in int64 here instead of doubles in Lua.
Decision DecodeGcra(const GcraParams& g, int64_t n, int64_t v) {
  Decision d;
  d.limit = g.limit;
  int64_t ttl = v;
  if (v >= 0) {
    d.allowed = true;
  } else {
    ttl = -1 - v;
    // n <= limit bounds n * T by tau (< 2^52): no overflow.
    d.retry_after = n > g.limit ? limit::kNever : FromMicros(ttl + n * g.interval_us - g.tau_us);
  }
  const int64_t spare = g.tau_us - ttl;
  d.remaining = spare > 0 ? spare / g.interval_us : 0;
  d.reset_after = FromMicros(std::max<int64_t>(0, ttl));
  return d;
}

// One limit's values in a kFiveTuple reply; `window_us` > 0 for the sliding window counter,
// whose sixth value is its estimate * window_us.
Decision DecodeFive(const Reply* e, int64_t window_us) {
  Decision d;
  d.allowed = e[0].integer() == 1;
  d.limit = e[1].integer();
  d.remaining = std::max<int64_t>(0, e[2].integer());
  d.reset_after = FromMicros(std::max<int64_t>(0, e[3].integer()));
  d.retry_after = e[4].integer() < 0 ? limit::kNever : FromMicros(e[4].integer());
  if (window_us > 0) {
    const int64_t scaled = e[5].integer();
    d.estimate = limit::internal::WindowEstimate(scaled / window_us, scaled % window_us, window_us);
  }
  return d;
}

absl::Status Unexpected(const Reply& reply) {
  return absl::InternalError(
      StrCat("redis rate limiter: unexpected script reply ", reply.DebugString()));
}

// As keel::limit::Keyed during a block: limit 1's peek, denied, with the time left in the block.
Decision Blocked(Decision peek, int64_t left_us) {
  peek.allowed = false;
  peek.remaining = 0;
  peek.retry_after = FromMicros(left_us);
  peek.reset_after = std::max(peek.reset_after, peek.retry_after);
  return peek;
}

}  // namespace

absl::StatusOr<RateLimitPlan> MakePlan(const RateLimiter::Options& options) {
  const keel::internal::OptionsOf of("redis rate limiter", options.name);
  if (options.name.empty() || options.name.size() > 128) {
    return keel::internal::InvalidOption(of, "name", "1 to 128 bytes",
                                         StrCat(options.name.size(), " bytes"));
  }
  if (options.more_limits.size() + 1 > kMaxLimits) {
    return keel::internal::InvalidOption(of, "more_limits",
                                         StrCat("at most ", kMaxLimits - 1, " limits"),
                                         options.more_limits.size());
  }
  if (options.block_for) {
    const Duration b = *options.block_for;
    if (b <= Duration::zero() || b > kLongestBlock) {
      return keel::internal::InvalidOption(of, "block_for", "in (0, 50 years]", b);
    }
    KEEL_RETURN_IF_ERROR(WholeMicros(of, "block_for", b));
  }
  std::vector<LimitPart> parts;
  for (size_t i = 0; i <= options.more_limits.size(); ++i) {
    const RateLimiter::Algorithm& a = i == 0 ? options.algorithm : options.more_limits[i - 1];
    if (a.index() != options.algorithm.index()) {
      return absl::InvalidArgumentError(
          StrCat(of.Field(StrCat("more_limits[", i - 1, "]")),
                 " must use the same algorithm as `algorithm` (one script checks them all)"));
    }
    absl::StatusOr<LimitPart> part = std::visit([](const auto& o) { return MakePart(o); }, a);
    if (!part.ok()) return of.Nest(part.status());
    // A limit listed twice is one limit, as in-process (where both copies decide alike and the
    // Decision is the same): checking it twice here would charge its one Redis key twice.
    const bool repeated = std::any_of(parts.begin(), parts.end(),
                                      [&](const LimitPart& p) { return p.args == part->args; });
    if (!repeated) parts.push_back(*std::move(part));
  }

  RateLimitPlan plan;
  plan.script = parts[0].script;
  plan.shape = parts[0].shape;
  plan.limits = parts.size();
  plan.block_for = options.block_for;
  plan.limit = parts[0].limit;
  const std::string block_us =
      options.block_for ? std::to_string(Micros(*options.block_for)) : std::string();
  for (const LimitPart& part : parts) {
    plan.limit = std::min(plan.limit, part.limit);
    plan.args.insert(plan.args.end(), part.args.begin(), part.args.end());
    if (plan.shape == ReplyShape::kGcra) plan.gcra.push_back(part.gcra);
    if (part.estimate_window_us > 0) plan.estimate_windows_us.push_back(part.estimate_window_us);
    for (const std::string& suffix : part.suffixes) {
      if (parts.size() == 1) {
        plan.suffixes.push_back(suffix);
      } else {
        // Keys named by the limit's parameters: a limit added, removed or changed in a later
        // deployment starts fresh instead of reading another limit's state.
        std::string s = suffix;
        for (const std::string& arg : part.args) s += StrCat(":", arg);
        plan.suffixes.push_back(std::move(s));
      }
    }
  }
  // block_for comes last and only when set, so the common case (no block) has the fewest
  // arguments; the scripts tell it from the count.
  if (options.block_for) plan.args.push_back(block_us);
  if (plan.shape == ReplyShape::kGcra && parts.size() == 1 && !options.block_for) {
    // The hot path: T and tau written into the script, so a call sends only the quantity.
    std::string source = kGcraOneLimitTemplate;
    const auto replace = [&source](std::string_view from, const std::string& to) {
      source.replace(source.find(from), from.size(), to);
    };
    replace("$TAU", std::to_string(plan.gcra[0].tau_us));
    replace("$T", std::to_string(plan.gcra[0].interval_us));
    plan.own_script = std::make_unique<const Script>(std::move(source));
    plan.script = plan.own_script.get();
    plan.args.clear();
    plan.compact_argv = true;
  }
  if (options.block_for) plan.suffixes.push_back(":block");
  return plan;
}

absl::StatusOr<Decision> DecodeReply(const RateLimitPlan& plan, int64_t n, const Reply& reply,
                                     std::optional<Decision>* while_blocked) {
  while_blocked->reset();
  const size_t k = plan.limits;
  Decision decisions[16];
  Decision d;
  if (plan.shape == ReplyShape::kGcra) {
    if (reply.is_integer()) {
      if (k != 1 || plan.block_for) return Unexpected(reply);
      d = DecodeGcra(plan.gcra[0], n, reply.integer());
    } else {
      const std::vector<Reply>& e = reply.elements();
      if (!reply.is_array() || (e.size() != k && e.size() != k + 1) ||
          !std::all_of(e.begin(), e.end(), [](const Reply& r) { return r.is_integer(); })) {
        return Unexpected(reply);
      }
      if (e.size() == k + 1) {
        if (!plan.block_for) return Unexpected(reply);
        *while_blocked = Blocked(DecodeGcra(plan.gcra[0], 0, e[0].integer()), e[k].integer());
        return **while_blocked;
      }
      for (size_t i = 0; i < k; ++i) decisions[i] = DecodeGcra(plan.gcra[i], n, e[i].integer());
      d = k == 1 ? decisions[0] : limit::internal::Combine(decisions, k);
    }
  } else {
    // Values per limit: five, or six with the sliding window counter's estimate.
    const bool estimates = !plan.estimate_windows_us.empty();
    const size_t per = estimates ? 6 : 5;
    const auto window = [&](size_t i) { return estimates ? plan.estimate_windows_us[i] : 0; };
    const std::vector<Reply>& e = reply.elements();
    if (!reply.is_array() || (e.size() != per * k && e.size() != per + 1) ||
        !std::all_of(e.begin(), e.end(), [](const Reply& r) { return r.is_integer(); })) {
      return Unexpected(reply);
    }
    if (e.size() == per + 1) {
      if (!plan.block_for) return Unexpected(reply);
      *while_blocked = Blocked(DecodeFive(e.data(), window(0)), e[per].integer());
      return **while_blocked;
    }
    for (size_t i = 0; i < k; ++i) decisions[i] = DecodeFive(&e[per * i], window(i));
    d = k == 1 ? decisions[0] : limit::internal::Combine(decisions, k);
  }
  // The script started a block exactly when this holds (see the scripts' epilogues).
  if (!d.allowed && plan.block_for && d.retry_after != limit::kNever) {
    // Later requests see the block alone (the counters did not change: this one was denied).
    *while_blocked = Blocked(d, Micros(*plan.block_for));
    d.retry_after = std::max(d.retry_after, *plan.block_for);
    d.reset_after = std::max(d.reset_after, d.retry_after);
  }
  return d;
}

}  // namespace keel::redis::internal
