// keel/internal/validate.h: the checks every Create applies to its options, with one message
// format. Not part of keel's API.
//
// A bad option is INVALID_ARGUMENT saying which field, the rule and the value given:
//   `<owner><field> must be <rule>, got <value>`
// where the owner is how the component's errors name it: `<type> "<name>": ` for a component
// with a name (the prefix of all its other errors, so a service with ten breakers learns which
// one is misconfigured) and `<path>.` for an unnamed one (a TokenBucket: `token_bucket.rate`).
// Durations print with FormatDuration ("250ms", "1.5s"), like everywhere in keel.
//
// Thread safety: pure functions. An OptionsOf holds views: keep what it names alive.
//
//   const keel::internal::OptionsOf of("circuit breaker", options.name);
//   KEEL_RETURN_IF_ERROR(RequireFraction(of, "failure_rate_threshold", o.failure_rate_threshold));
//   KEEL_RETURN_IF_ERROR(RequirePositive(of, "wait_in_open", o.wait_in_open));
//   // INVALID_ARGUMENT: circuit breaker "payments": wait_in_open must be > 0, got -250ms
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <type_traits>

#include "absl/status/status.h"
#include "keel/internal/strings.h"

namespace keel::internal {

// Whose options are checked, as its errors name it.
class OptionsOf {
 public:
  // An unnamed component: fields print as `<path>.<field>` (`gcra.period`).
  OptionsOf(std::string_view path) : type_(path) {}  // NOLINT: implicit, reads as a path
  OptionsOf(const char* path) : type_(path) {}       // NOLINT
  // A named component: fields print as `<type> "<name>": <field>`.
  OptionsOf(std::string_view type, std::string_view name)
      : type_(type), name_(name), named_(true) {}

  // How a message names `field` of these options.
  std::string Field(std::string_view field) const;
  // An error about a nested options struct, checked under its own path (Backoff's
  // "backoff.base must be > 0, ..."), as this owner's: `retry "api": backoff.base ...`. OK stays
  // OK.
  absl::Status Nest(const absl::Status& status) const;

 private:
  std::string_view type_;
  std::string_view name_;
  bool named_ = false;
};

// INVALID_ARGUMENT: `<field> must be <rule>, got <got>`.
absl::Status InvalidOption(const OptionsOf& of, std::string_view field, std::string_view rule,
                           std::string_view got);
// As above with a duration, printed by FormatDuration.
absl::Status InvalidOption(const OptionsOf& of, std::string_view field, std::string_view rule,
                           std::chrono::nanoseconds got);

// As above with a number, printed by StrCat (`1.5`, `0`).
template <typename Number, typename = std::enable_if_t<std::is_arithmetic_v<Number>>>
absl::Status InvalidOption(const OptionsOf& of, std::string_view field, std::string_view rule,
                           Number got) {
  return InvalidOption(of, field, rule, std::string_view(StrCat(got)));
}

// OK if value > 0, else `<field> must be > 0, got <value>`.
absl::Status RequirePositive(const OptionsOf& of, std::string_view field,
                             std::chrono::nanoseconds value);
// OK if value >= 0, else `<field> must be >= 0, got <value>`.
absl::Status RequireNonNegative(const OptionsOf& of, std::string_view field,
                                std::chrono::nanoseconds value);
// OK if value is in (0, 1] (so not NaN), else `<field> must be in (0, 1], got <value>`.
absl::Status RequireFraction(const OptionsOf& of, std::string_view field, double value);
// OK if `set` (a callback, a hook), else `<field> must be set`.
absl::Status RequireSet(const OptionsOf& of, std::string_view field, bool set);
// OK if value >= min, else `<field> must be >= <min>, got <value>`.
template <typename Int>
absl::Status RequireAtLeast(const OptionsOf& of, std::string_view field, Int value,
                            std::type_identity_t<Int> min) {
  static_assert(std::is_integral_v<Int>);
  if (value >= min) return absl::OkStatus();
  return InvalidOption(of, field, StrCat(">= ", min), value);
}

}  // namespace keel::internal
