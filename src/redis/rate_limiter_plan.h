// What keel::redis::RateLimiter derives from its options once (the script, its constant
// arguments, the Redis key suffixes) and how it turns a script's reply into a Decision. Private.
//
// Thread safety: a Plan is immutable after MakePlan; the functions are pure.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/limit/decision.h"
#include "keel/redis/rate_limiter.h"
#include "keel/redis/reply.h"
#include "keel/redis/script.h"

namespace keel::redis::internal {

// How the script replies (rate_limiter_scripts.h).
enum class ReplyShape {
  kGcra,      // one integer per limit, the rest derived here
  kFiveTuple  // allowed, limit, remaining, reset_after_us, retry_after_us per limit (and, for the
              // sliding window counter, estimate * window_us)
};

// One GCRA limit, as the decoder needs it.
struct GcraParams {
  int64_t interval_us;  // T
  int64_t tau_us;       // T * limit
  int64_t limit;        // max_burst + 1
};

struct RateLimitPlan {
  const Script* script = nullptr;
  // The script when it is generated for this limiter (one GCRA limit without a block), else null.
  std::unique_ptr<const Script> own_script;
  // The generated GCRA script's layout: ARGV = n, control[, time] (the time left out when the
  // server's clock is used) instead of n, time, control.
  bool compact_argv = false;
  ReplyShape shape = ReplyShape::kFiveTuple;
  // ARGV after the quantity and the time, in order.
  std::vector<std::string> args;
  // The suffix of each Redis key of a check, appended to `{<name>:<key>}`, in KEYS order.
  std::vector<std::string> suffixes;
  size_t limits = 0;
  std::vector<GcraParams> gcra;  // per limit, for kGcra
  // Per limit, for the sliding window counter: its window (us), by which the script's sixth
  // value divides into Decision::estimate. Empty for the other algorithms (five values a limit).
  std::vector<int64_t> estimate_windows_us;
  // The smallest limit: the largest quantity ever admitted at once.
  int64_t limit = 0;
  std::optional<Duration> block_for;
};

// Validates the options (INVALID_ARGUMENT naming the field) and derives the plan. No I/O.
absl::StatusOr<RateLimitPlan> MakePlan(const RateLimiter::Options& options);

// The Decision a reply stands for, for quantity `n`: per limit as the in-process Check(n), then
// combined as keel::limit::Keyed combines them, then the penalty block applied as Keyed applies
// it. When the key is blocked after this call (a block that runs or starts), `*while_blocked` is
// the Decision any request gets until the block ends, at the time of the reply (for the local
// cache); otherwise nullopt. INTERNAL for a reply of an unexpected shape.
absl::StatusOr<limit::Decision> DecodeReply(const RateLimitPlan& plan, int64_t n,
                                            const Reply& reply,
                                            std::optional<limit::Decision>* while_blocked);

}  // namespace keel::redis::internal
