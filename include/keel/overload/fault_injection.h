// keel/overload/fault_injection.h: chaos for tests and game days: make a dependency slow, fail
// or hang on purpose, and watch the overload controls around it react (Polly's Simmy is the
// reference).
//
// Defines `keel::overload::FaultInjection` and `FaultInjectionStats`. One FaultInjection injects
// one kind of fault into a share of the calls through it; stack several for several faults (as
// Simmy chains its chaos strategies):
//
//   kLatency  the call runs `latency` late; a deadline that passes during the delay ends it with
//             DEADLINE_EXCEEDED without running it, as a slow dependency would.
//   kError    the call does not run; it fails with `error_code` / `error_message`.
//   kHang     the call does not run; it waits until its deadline (at most `max_hang` without
//             one) and fails with DEADLINE_EXCEEDED, as a dependency that never answers.
//
// Which calls: each with probability `injection_rate`, or those `should_inject(ctx)` picks. It is
// off unless enabled (`Options::enabled`, or SetEnabled at run time): a configuration that forgets
// the flag injects nothing. Every call and every injection is counted in Stats and metrics. Waits
// sleep on the injected clock and end early when the call's cancellation token fires (CANCELLED).
// The Pipeline stage is in fault_injection_stage.h; its async form waits on the pipeline's Timer.
//
// Where keel departs from Simmy: disabled by default (Simmy's strategies are enabled unless told
// otherwise), and the hang is its own fault (in Simmy, a latency longer than the timeout).
//
// Thread safety: thread-safe. The random source, when you pass one, must itself be safe for the
// threads that use the FaultInjection.
//
//   auto chaos = keel::overload::FaultInjection::Create(
//       {.name = "db-latency", .enabled = game_day, .fault = FaultInjection::Fault::kLatency,
//        .injection_rate = 0.05, .latency = 800ms}, keel::SteadyClock(), &registry).value();
//   absl::StatusOr<Row> row = chaos->Execute(ctx, [&](const keel::CallContext& c) {
//     return db.Query(sql, c.deadline);
//   });
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/random/bit_gen_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/metrics.h"
#include "keel/resilience/call_context.h"

namespace keel::overload {

struct FaultInjectionStats;

class FaultInjection {
 public:
  enum class Fault { kLatency = 0, kError = 1, kHang = 2 };

  struct Options {
    // Names the policy in errors and metrics labels. Default: "fault_injection".
    std::string name = "fault_injection";
    // Nothing is injected unless this is true (or SetEnabled(true) is called). Default: false.
    bool enabled = false;
    // What to inject. Default: kError.
    Fault fault = Fault::kError;
    // The probability that a call gets the fault. Default: 0.001 (Simmy's). Must be in [0, 1].
    double injection_rate = 0.001;
    // When set, picks the calls instead of injection_rate (true: inject). One that throws
    // injects nothing and is counted (predicate_exceptions_total). Default: none.
    std::function<bool(const CallContext&)> should_inject;
    // kLatency: how late the call runs. Default: 30 s (Simmy's). Must be > 0.
    Duration latency = std::chrono::seconds(30);
    // kError: the status the call fails with; its message is prefixed with `fault injection
    // "<name>": `. Default: UNAVAILABLE, "injected fault". The code must not be OK.
    absl::StatusCode error_code = absl::StatusCode::kUnavailable;
    std::string error_message = "injected fault";
    // kHang: the longest a call without a deadline hangs (so a game day cannot wedge a thread
    // for good). Default: 1 min. Must be > 0.
    Duration max_hang = std::chrono::minutes(1);
  };

  // Validates `options` (INVALID_ARGUMENT naming the field: `fault injection "db":
  // injection_rate must be in [0, 1], got 2`). Draws come from a per-thread generator, or
  // `gen`. `clock` and `metrics` (optional) must outlive the policy.
  // Metrics (label name=<name>): keel_fault_injection_calls_total and
  // keel_fault_injection_injected_total{fault=latency|error|hang}.
  static absl::StatusOr<std::unique_ptr<FaultInjection>> Create(Options options,
                                                                Clock& clock = SteadyClock(),
                                                                MetricsRegistry* metrics = nullptr);
  static absl::StatusOr<std::unique_ptr<FaultInjection>> Create(Options options, Clock& clock,
                                                                absl::BitGenRef gen,
                                                                MetricsRegistry* metrics = nullptr);

  FaultInjection(const FaultInjection&) = delete;
  FaultInjection& operator=(const FaultInjection&) = delete;
  ~FaultInjection();

  // Turns injection on or off for the calls that start from now on.
  void SetEnabled(bool enabled) { enabled_.store(enabled, std::memory_order_relaxed); }
  bool enabled() const { return enabled_.load(std::memory_order_relaxed); }

  // Whether this call gets the fault: counts the call, and the injection when there is one.
  // nullopt when disabled or not picked.
  std::optional<Fault> Decide(const CallContext& ctx);

  // The blocking form of a decided fault, before the call: OK when the call should run now
  // (no fault, or a latency that ended before the deadline), else the status the call fails
  // with: the injected error; DEADLINE_EXCEEDED after a hang or a latency that reached the
  // deadline; CANCELLED when the call's token fired during the wait.
  absl::Status Inject(const CallContext& ctx);

  // Inject, then `fn(ctx)` (returning absl::Status or absl::StatusOr<T>) if it should run.
  template <typename F>
  auto Execute(const CallContext& ctx, F&& fn) {
    using R = std::invoke_result_t<F&, const CallContext&>;
    absl::Status injected = Inject(ctx);
    if (!injected.ok()) return R(std::move(injected));
    return R(fn(ctx));
  }

  // The status a call fails with for `fault`, waited `waited` (kLatency, kHang) or not.
  absl::Status FaultStatus(Fault fault, Duration waited) const;
  // How long a call with `deadline` waits for `fault` before it runs (kLatency) or fails
  // (kHang); 0 for kError. At most what is left before the deadline.
  Duration WaitFor(Fault fault, const Deadline& deadline) const;

  FaultInjectionStats Stats() const;
  const Options& options() const { return options_; }
  Clock& clock() const { return clock_; }

 private:
  FaultInjection(Options options, Clock& clock, std::optional<absl::BitGenRef> gen);
  static absl::StatusOr<std::unique_ptr<FaultInjection>> CreateImpl(
      Options options, Clock& clock, std::optional<absl::BitGenRef> gen, MetricsRegistry* metrics);
  absl::Status RegisterMetrics(MetricsRegistry& metrics);

  const Options options_;
  Clock& clock_;
  const std::optional<absl::BitGenRef> gen_;
  std::atomic<bool> enabled_;
  // Relaxed: independent statistics.
  std::atomic<uint64_t> calls_{0};
  std::array<std::atomic<uint64_t>, 3> injected_{};
  std::atomic<uint64_t> predicate_exceptions_{0};
  std::vector<MetricsRegistry::Registration> registrations_;  // last: unregistered first
};

// A snapshot of a FaultInjection (its Stats()); counters are cumulative since Create.
struct FaultInjectionStats {
  bool enabled = false;
  uint64_t calls_total = 0;                  // calls decided, enabled or not
  std::array<uint64_t, 3> injected_total{};  // indexed by FaultInjection::Fault
  uint64_t predicate_exceptions_total = 0;
};

}  // namespace keel::overload
