#include "keel/limit/decision.h"

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace keel::limit {
namespace {

std::string FormatDuration(Duration d) {
  if (d == kNever) return "never";
  return absl::FormatDuration(absl::FromChrono(d));
}

}  // namespace

std::string DebugString(const Decision& d) {
  return absl::StrCat(d.allowed ? "allowed" : "denied", " limit=", d.limit,
                      " remaining=", d.remaining, " reset_after=", FormatDuration(d.reset_after),
                      " retry_after=", FormatDuration(d.retry_after));
}

}  // namespace keel::limit
