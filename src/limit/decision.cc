#include "keel/limit/decision.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace keel::limit {
namespace {

std::string FormatDuration(Duration d) {
  if (d == kNever) return "never";
  return absl::FormatDuration(absl::FromChrono(d));
}

}  // namespace

namespace internal {

Decision Combine(const Decision* decisions, size_t count) {
  Decision out = decisions[0];
  for (size_t i = 1; i < count; ++i) {
    const Decision& d = decisions[i];
    out.allowed = out.allowed && d.allowed;
    out.degraded = out.degraded || d.degraded;
    if (d.remaining < out.remaining) {
      out.remaining = d.remaining;
      out.limit = d.limit;
      out.estimate = d.estimate;
    }
    out.reset_after = std::max(out.reset_after, d.reset_after);
    out.retry_after = std::max(out.retry_after, d.retry_after);
  }
  if (out.allowed) out.retry_after = Duration::zero();
  return out;
}

}  // namespace internal

std::string DebugString(const Decision& d) {
  return absl::StrCat(d.allowed ? "allowed" : "denied", " limit=", d.limit,
                      " remaining=", d.remaining, " reset_after=", FormatDuration(d.reset_after),
                      " retry_after=", FormatDuration(d.retry_after),
                      d.estimate ? absl::StrCat(" estimate=", *d.estimate) : "",
                      d.degraded ? " degraded" : "");
}

}  // namespace keel::limit
