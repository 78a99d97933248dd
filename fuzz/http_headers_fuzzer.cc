// Fuzzes keel::limit::HttpHeaders and CeilSeconds with arbitrary Decisions and policies.
//
// Invariants, beyond "no crash, no sanitizer report":
//   - the fields come in the documented order; Retry-After only for a denial that can succeed;
//   - every value is printable ASCII (no CR, LF or NUL: a policy name cannot inject a line);
//   - RateLimit-Policy and RateLimit are RFC 8941 items: an sf-string (the policy name, with
//     non-printables as '?') and sf-integer parameters (at most 15 digits), all non-negative;
//   - the legacy fields are non-negative decimal integers equal to the structured ones, and
//     Retry-After is at least 1;
//   - the numbers are the Decision's: q the limit, r the remaining quantity (0 if negative), t and
//     Retry-After the durations rounded up to whole seconds, never early.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.h"
#include "keel/limit/http_headers.h"

namespace {

using keel::Duration;
using keel::fuzz::Check;
using keel::limit::Decision;
using keel::limit::HttpHeader;

constexpr int64_t kNanos = 1'000'000'000;
constexpr int64_t kMaxSfInteger = 999'999'999'999'999;

// RFC 9110 delay-seconds / legacy fields: 1*DIGIT.
std::optional<int64_t> ParseDigits(std::string_view s, size_t max_digits = 19) {
  if (s.empty() || s.size() > max_digits) return std::nullopt;
  int64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    if (v > (INT64_MAX - (c - '0')) / 10) return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

// An RFC 8941 sf-item `"name";a=1;b=2` with exactly the parameter keys `keys`; returns the
// unescaped string and the (non-negative, <= 15 digit) integer values.
struct Item {
  std::string name;
  std::vector<int64_t> params;
};
std::optional<Item> ParseItem(std::string_view s, std::initializer_list<std::string_view> keys) {
  Item item;
  if (s.empty() || s[0] != '"') return std::nullopt;
  size_t i = 1;
  for (;; ++i) {
    if (i >= s.size()) return std::nullopt;
    const char c = s[i];
    if (c == '"') break;
    if (c == '\\') {
      if (i + 1 >= s.size() || (s[i + 1] != '"' && s[i + 1] != '\\')) return std::nullopt;
      item.name += s[++i];
    } else if (c >= 0x20 && c <= 0x7e) {
      item.name += c;
    } else {
      return std::nullopt;
    }
  }
  ++i;
  for (std::string_view key : keys) {
    if (s.substr(i, 1) != ";" || s.substr(i + 1, key.size()) != key ||
        s.substr(i + 1 + key.size(), 1) != "=") {
      return std::nullopt;
    }
    i += key.size() + 2;
    const size_t end = std::min(s.find(';', i), s.size());
    const std::optional<int64_t> v = ParseDigits(s.substr(i, end - i), 15);  // sf-integer
    if (!v) return std::nullopt;
    item.params.push_back(*v);
    i = end;
  }
  if (i != s.size()) return std::nullopt;
  return item;
}

std::string Printable(const std::string& s) {
  std::string out;
  for (char c : s) out += (c >= 0x20 && c < 0x7f) ? c : '?';
  return out;
}

// CeilSeconds(d) is the least whole number of seconds not shorter than d (0 for d <= 0).
void CheckCeil(Duration d) {
  const int64_t s = keel::limit::CeilSeconds(d);
  if (d <= Duration::zero()) {
    Check(s == 0, "CeilSeconds of a non-positive duration");
    return;
  }
  Check(s >= 1, "CeilSeconds below 1 for a positive duration");
  // s * 1e9 >= d and (s - 1) * 1e9 < d, computed without overflow.
  Check(s - 1 < d.count() / kNanos + (d.count() % kNanos != 0 ? 1 : 0), "CeilSeconds too large");
  Check(s > (d.count() - 1) / kNanos, "CeilSeconds too small: a client would retry early");
}

Duration ConsumeDuration(FuzzedDataProvider& in) {
  switch (in.ConsumeIntegralInRange<int>(0, 3)) {
    case 0:
      return keel::limit::kNever;
    case 1:
      return Duration(in.ConsumeIntegralInRange<int64_t>(-kNanos, 100 * kNanos));
    default:
      return Duration(in.ConsumeIntegral<int64_t>());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  Decision d;
  d.allowed = in.ConsumeBool();
  d.limit = in.ConsumeIntegral<int64_t>();
  d.remaining = in.ConsumeIntegral<int64_t>();
  d.reset_after = ConsumeDuration(in);
  d.retry_after = ConsumeDuration(in);
  keel::limit::HttpPolicy policy;
  policy.window = ConsumeDuration(in);
  policy.name = in.ConsumeRemainingBytesAsString();
  // Counts are rendered clamped to RFC 8941's sf-integer range, 0..kMaxSfInteger (F3, F5).
  const auto clamped = [](int64_t v) { return std::clamp<int64_t>(v, 0, kMaxSfInteger); };
  CheckCeil(d.reset_after);
  CheckCeil(d.retry_after);
  CheckCeil(policy.window);

  const std::vector<HttpHeader> headers = keel::limit::HttpHeaders(d, policy);
  const bool retry_after = !d.allowed && d.retry_after != keel::limit::kNever;
  Check(headers.size() == (retry_after ? 6u : 5u), "number of header fields");
  static constexpr std::string_view kNames[] = {"RateLimit-Policy", "RateLimit",
                                                "RateLimit-Limit",  "RateLimit-Remaining",
                                                "RateLimit-Reset",  "Retry-After"};
  for (size_t i = 0; i < headers.size(); ++i) {
    Check(headers[i].name == kNames[i], "header field name or order");
    for (char c : headers[i].value) {
      Check(c >= 0x20 && c < 0x7f, "header value holds a control or non-ASCII byte");
    }
  }

  for (const HttpHeader& h : headers) {  // shown when a check below fails
    keel::fuzz::Show(h.name.c_str(), h.value);
  }
  const std::optional<Item> policy_item = ParseItem(headers[0].value, {"q", "w"});
  Check(policy_item.has_value(), "RateLimit-Policy is not a well-formed sf-item");
  const std::optional<Item> limit_item = ParseItem(headers[1].value, {"r", "t"});
  Check(limit_item.has_value(), "RateLimit is not a well-formed sf-item");
  Check(policy_item->name == Printable(policy.name) && limit_item->name == policy_item->name,
        "policy name not rendered as an sf-string of its printable bytes");

  const std::optional<int64_t> limit = ParseDigits(headers[2].value);
  const std::optional<int64_t> remaining = ParseDigits(headers[3].value);
  const std::optional<int64_t> reset = ParseDigits(headers[4].value);
  Check(limit && remaining && reset, "a legacy field is not a non-negative integer");
  Check(*limit == policy_item->params[0] && *limit == clamped(d.limit),
        "quota differs from the limit");
  Check(policy_item->params[1] == keel::limit::CeilSeconds(policy.window), "w is not the window");
  Check(*remaining == limit_item->params[0] && *remaining == clamped(d.remaining),
        "remaining differs from the decision");
  Check(*reset == limit_item->params[1] && *reset == keel::limit::CeilSeconds(d.reset_after),
        "reset differs from the decision");
  if (retry_after) {
    const std::optional<int64_t> after = ParseDigits(headers[5].value);
    Check(after && *after >= 1 && *after >= keel::limit::CeilSeconds(d.retry_after),
          "Retry-After is not delay-seconds >= 1 and >= retry_after");
  }
  return 0;
}
