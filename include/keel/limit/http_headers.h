// keel/limit/http_headers.h: the HTTP response header fields that tell a client its rate limit.
//
// Defines `keel::limit::HttpPolicy` (a policy's name and window) and `keel::limit::HttpHeaders`,
// which turns a Decision into:
//
//   RateLimit-Policy: "api";q=100;w=60     IETF draft-ietf-httpapi-ratelimit-headers-10
//   RateLimit: "api";r=42;t=17             (q quota, w window, r remaining, t seconds to reset)
//   RateLimit-Limit: 100                   the widely deployed legacy fields (GitHub, IETF
//   RateLimit-Remaining: 42                draft-00 .. -06): same figures, no structure
//   RateLimit-Reset: 17
//   Retry-After: 3                         only when denied (RFC 9110 delay-seconds)
//
// Seconds are rounded up: a client told "1" that retries after one second must not be early.
// A request that can never be admitted (retry_after == kNever) gets no Retry-After: no wait
// helps it, and the status code (413 or 400) is the caller's to choose.
//
// A degraded Decision (a Redis-backed limiter that failed open or decided with its local
// fallback, see Decision::degraded) gets only RateLimit-Policy, RateLimit-Limit and, when denied,
// Retry-After: the remaining quota and the reset time are not known, and are not invented.
//
// Thread safety: pure functions.
//
//   auto d = limiter.TryAcquire(key).value();
//   for (const keel::limit::HttpHeader& h :
//        keel::limit::HttpHeaders(d, {.name = "per-user", .window = std::chrono::minutes(1)})) {
//     res.set_header(h.name, h.value);
//   }
//   if (!d.allowed) res.status = 429;
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "keel/limit/decision.h"

namespace keel::limit {

struct HttpPolicy {
  // The policy's name, sent as a structured-field string ("api"); `"` and `\` are escaped.
  // Default: "default".
  std::string name = "default";
  // The time window the quota applies to (`w=`): the window of a window limiter, the period of a
  // GCRA, burst/rate for a token bucket. Rounded up to whole seconds. Default: one second.
  Duration window = std::chrono::seconds(1);
};

struct HttpHeader {
  std::string name;
  std::string value;
  friend bool operator==(const HttpHeader&, const HttpHeader&) = default;
};

// The header fields for `decision` under `policy`, in the order listed above. The quota (`q=`,
// RateLimit-Limit) is `decision.limit`.
std::vector<HttpHeader> HttpHeaders(const Decision& decision, const HttpPolicy& policy);

// Whole seconds, rounded up, as the headers carry them (exposed for callers building their own).
int64_t CeilSeconds(Duration d);

}  // namespace keel::limit
