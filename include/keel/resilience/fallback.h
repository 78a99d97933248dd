// keel/resilience/fallback.h: answer with something else when a call fails.
//
// Defines `keel::Fallback<T>`: when the call fails with a status `handle_if` accepts (default:
// any error), `handler(status)` produces the result instead: a cached value, a default, a
// degraded answer, or a different error. Outermost in a Pipeline, it sees every failure of the
// policies inside it (a full bulkhead, an open breaker, exhausted retries).
//
// Thread safety: thread-safe if `handler` and `handle_if` are (they are called concurrently).
//
//   auto fallback = keel::Fallback<Price>::Create({
//       .handler = [&](const absl::Status&) -> absl::StatusOr<Price> { return cache.Last(); },
//       .handle_if = [](const absl::Status& s) { return !absl::IsInvalidArgument(s); }}).value();
//   absl::StatusOr<Price> p = fallback.Execute(ctx, [&](const keel::CallContext& c) {
//     return prices.Get(sku, c.deadline);
//   });
#pragma once

#include <functional>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/internal/validate.h"
#include "keel/resilience/call_context.h"

namespace keel {

template <typename T>
class Fallback {
 public:
  using Handler = std::function<absl::StatusOr<T>(const absl::Status&)>;
  using Predicate = std::function<bool(const absl::Status&)>;

  // The default `handle_if`: every error.
  static bool AnyError(const absl::Status& status) { return !status.ok(); }

  struct Options {
    // Names the policy in error messages. Default: "fallback".
    std::string name = "fallback";
    // Produces the result from the failure. Must be set.
    Handler handler;
    // Which failures the handler answers; the others pass through unchanged. Narrow it to keep
    // caller mistakes (INVALID_ARGUMENT) visible. Default: AnyError. Must be set.
    Predicate handle_if = AnyError;
  };

  // INVALID_ARGUMENT naming the field when `handler` or `handle_if` is empty.
  static absl::StatusOr<Fallback> Create(Options options) {
    const internal::OptionsOf of("fallback", options.name);
    if (auto s = internal::RequireSet(of, "handler", bool(options.handler)); !s.ok()) return s;
    if (auto s = internal::RequireSet(of, "handle_if", bool(options.handle_if)); !s.ok()) return s;
    return Fallback(std::move(options));
  }
  // The short form: Create(handler, predicate).
  static absl::StatusOr<Fallback> Create(Handler handler, Predicate handle_if = AnyError) {
    Options options;
    options.handler = std::move(handler);
    options.handle_if = std::move(handle_if);
    return Create(std::move(options));
  }

  // `result` if it is OK or not handled, otherwise handler(result.status()).
  absl::StatusOr<T> Recover(absl::StatusOr<T> result) const {
    if (result.ok() || !options_.handle_if(result.status())) return result;
    return options_.handler(result.status());
  }

  // Runs `fn(const CallContext&) -> absl::StatusOr<T>` and recovers its failure.
  template <typename F>
  absl::StatusOr<T> Execute(const CallContext& ctx, F&& fn) const {
    return Recover(std::forward<F>(fn)(ctx));
  }

  const Options& options() const { return options_; }

 private:
  explicit Fallback(Options options) : options_(std::move(options)) {}

  Options options_;
};

}  // namespace keel
