#include "keel/limit/http_headers.h"

#include "absl/strings/str_cat.h"

namespace keel::limit {
namespace {

// RFC 8941 sf-string: printable ASCII with `"` and `\` escaped; anything else is replaced by '?'
// so a policy name can never inject a header line.
std::string SfString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (c >= 0x20 && c < 0x7f) {
      out += c;
    } else {
      out += '?';
    }
  }
  out += '"';
  return out;
}

// RFC 8941 sf-integers are 0..999,999,999,999,999 here (at most 15 digits; a quota is never
// negative): a Decision outside that range is clamped rather than rendered as a malformed field.
int64_t SfCount(int64_t v) {
  constexpr int64_t kMaxSfInteger = 999'999'999'999'999;
  return v < 0 ? 0 : (v > kMaxSfInteger ? kMaxSfInteger : v);
}

}  // namespace

int64_t CeilSeconds(Duration d) {
  if (d <= Duration::zero()) return 0;
  const int64_t ns = d.count();
  return ns / 1'000'000'000 + (ns % 1'000'000'000 != 0 ? 1 : 0);
}

std::vector<HttpHeader> HttpHeaders(const Decision& decision, const HttpPolicy& policy) {
  const std::string name = SfString(policy.name);
  const int64_t reset = CeilSeconds(decision.reset_after);
  const int64_t remaining = SfCount(decision.remaining);
  const int64_t limit = SfCount(decision.limit);
  std::vector<HttpHeader> headers;
  headers.reserve(6);
  headers.push_back(
      {"RateLimit-Policy", absl::StrCat(name, ";q=", limit, ";w=", CeilSeconds(policy.window))});
  if (decision.degraded) {
    // The limiter's backend did not decide: what is left and when it resets are unknown (a
    // fail-open decision) or only this process's share (a local fallback). Sending them would
    // tell clients figures keel does not know; the policy and the limit are configuration.
    headers.push_back({"RateLimit-Limit", absl::StrCat(limit)});
  } else {
    headers.push_back({"RateLimit", absl::StrCat(name, ";r=", remaining, ";t=", reset)});
    headers.push_back({"RateLimit-Limit", absl::StrCat(limit)});
    headers.push_back({"RateLimit-Remaining", absl::StrCat(remaining)});
    headers.push_back({"RateLimit-Reset", absl::StrCat(reset)});
  }
  if (!decision.allowed && decision.retry_after != kNever) {
    // At least 1: "Retry-After: 0" invites an immediate retry of a request just denied.
    const int64_t after = CeilSeconds(decision.retry_after);
    headers.push_back({"Retry-After", absl::StrCat(after < 1 ? 1 : after)});
  }
  return headers;
}

}  // namespace keel::limit
