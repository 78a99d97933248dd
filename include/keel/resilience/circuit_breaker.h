// keel/resilience/circuit_breaker.h: stop calling a dependency that is failing, probe it, recover.
//
// Defines `keel::CircuitBreaker` and its move-only `CircuitBreaker::Permit`. Resilience4j's
// semantics and defaults (failure and slow-call rates over a count- or time-based sliding window,
// a minimum number of calls, a wait in OPEN, a limited number of HALF_OPEN probes), plus what its
// users asked for: a half-open phase that cannot get stuck (`max_wait_in_half_open`), an outcome
// classifier whose defaults never let a caller's own mistakes open the breaker, and manual states
// DISABLED, FORCED_OPEN and METRICS_ONLY.
//
// Thread safety: thread-safe. Permits may be recorded on any thread.
//
//   auto breaker = keel::CircuitBreaker::Create({.name = "payments",
//                                                .failure_rate_threshold = 0.5,
//                                                .wait_in_open = 30s}).value();
//   // Non-blocking core, for any server model (callbacks, coroutines, threads):
//   absl::StatusOr<keel::CircuitBreaker::Permit> permit = breaker->TryAcquire();
//   if (!permit.ok()) return permit.status();        // UNAVAILABLE with keel::RetryAfter
//   const keel::TimePoint start = clock.Now();
//   absl::Status s = CallPayments();
//   permit->Record(s, clock.Now() - start);          // dropping it instead = "ignored"
//   // Or the convenience wrapper (fn returns absl::Status or absl::StatusOr<T>):
//   absl::StatusOr<Receipt> r = breaker->Execute([&] { return Charge(order); });
//
// Time: the breaker has no timer thread. The OPEN -> HALF_OPEN transition (when `wait_in_open`
// ends) and the HALF_OPEN -> OPEN transition (when `max_wait_in_half_open` ends) are evaluated
// against the injected clock on every TryAcquire(), state() and Stats() call, so they happen
// without any caller having to record anything, and listeners hear about them from the thread
// that made the observation. With a ManualClock, advancing the time and reading state() shows the
// transition.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/internal/spin_lock.h"
#include "keel/internal/status_of.h"
#include "keel/metrics.h"
#include "keel/sync.h"

namespace keel {

namespace internal {
template <typename R>
struct IsStatusOrStatusOr : std::false_type {};
template <>
struct IsStatusOrStatusOr<absl::Status> : std::true_type {};
template <typename T>
struct IsStatusOrStatusOr<absl::StatusOr<T>> : std::true_type {};
}  // namespace internal

struct CircuitBreakerStats;

class CircuitBreaker {
 public:
  enum class State {
    kClosed,       // calls flow; outcomes are recorded and may open the breaker
    kOpen,         // calls are rejected until `wait_in_open` has passed
    kHalfOpen,     // up to `half_open_permits` probe calls decide: back to CLOSED or OPEN
    kDisabled,     // manual: every call is permitted, nothing is recorded, never transitions
    kForcedOpen,   // manual: every call is rejected, never transitions
    kMetricsOnly,  // manual: every call is permitted and recorded (Stats), never transitions
  };

  // What a call's outcome means for the breaker.
  enum class Outcome { kSuccess, kFailure, kIgnored };

  enum class WindowType {
    kCountBased,  // the last `window_size` recorded calls
    kTimeBased,   // the calls recorded in the last `window_size` seconds (per-second buckets)
  };

  // The default classifier: OK is a success; CANCELLED, INVALID_ARGUMENT, NOT_FOUND,
  // ALREADY_EXISTS, PERMISSION_DENIED, UNAUTHENTICATED and FAILED_PRECONDITION are ignored (the
  // caller's mistake or choice says nothing about the dependency's health); anything else is a
  // failure.
  static Outcome DefaultClassifier(const absl::Status& status);

  // Passed to Options::max_wait_in_half_open to let probes take as long as they like (the
  // Resilience4j default, which can leave a breaker stuck in HALF_OPEN when a probe hangs).
  static constexpr Duration kNoHalfOpenLimit = Duration::max();

  struct Options {
    // Names the breaker in errors, metrics labels and listeners. Default: "circuit-breaker".
    std::string name = "circuit-breaker";

    // The breaker opens when at least this fraction of the recorded calls in the window failed.
    // Must be in (0, 1]. Default: 0.5. Lower it for dependencies whose failures are expensive.
    double failure_rate_threshold = 0.5;

    // The breaker opens when at least this fraction of the recorded calls were slow (took at
    // least `slow_call_duration`). Must be in (0, 1]. Default: 1.0 (only if every call is slow).
    double slow_call_rate_threshold = 1.0;

    // A call that took at least this long counts as slow (it may still be a success).
    // Must be > 0. Default: 60 s. Set it near the dependency's p99.9 latency.
    Duration slow_call_duration = std::chrono::seconds(60);

    // How the window of recent calls is kept. Default: kCountBased.
    WindowType window_type = WindowType::kCountBased;

    // kCountBased: the number of calls in the window; kTimeBased: its length in seconds.
    // Must be >= 1. Default: 100.
    int window_size = 100;

    // Rates are not evaluated (and the breaker cannot open) before this many calls were recorded
    // in the window. For a count-based window the effective value is min(minimum_calls,
    // window_size). Must be >= 1. Default: 100.
    int minimum_calls = 100;

    // Number of probe calls let through in HALF_OPEN; when all have been recorded their failure
    // and slow rates decide between CLOSED and OPEN. Must be >= 1. Default: 10.
    int half_open_permits = 10;

    // How long the breaker stays OPEN before it lets probes through. Must be > 0. Default: 60 s.
    Duration wait_in_open = std::chrono::seconds(60);

    // If the probes have not all been recorded this long after entering HALF_OPEN, the breaker
    // goes back to OPEN (a hung probe cannot keep it half-open forever). Must be > 0;
    // kNoHalfOpenLimit waits forever. Default: 60 s.
    Duration max_wait_in_half_open = std::chrono::seconds(60);

    // Classifies each recorded status. Must not be empty. Called outside the breaker's lock, on
    // the recording thread; it must be thread-safe. Default: DefaultClassifier.
    std::function<Outcome(const absl::Status&)> classifier = &CircuitBreaker::DefaultClassifier;
  };

  // A permission to make one call. Record its outcome, or drop it: a permit destroyed without
  // Record() counts as ignored and frees its HALF_OPEN probe slot. Move-only.
  // REQUIRES: the breaker outlives its permits.
  class Permit {
   public:
    Permit(Permit&& other) noexcept
        : breaker_(std::exchange(other.breaker_, nullptr)), epoch_(other.epoch_) {}
    Permit& operator=(Permit&& other) noexcept;
    Permit(const Permit&) = delete;
    Permit& operator=(const Permit&) = delete;
    ~Permit() { Release(); }

    // Records the call's outcome (classified by Options::classifier) and how long it took.
    // A second call, or a call on a moved-from permit, does nothing. An outcome recorded after
    // the breaker changed state since the permit was issued is counted in the lifetime totals
    // only: it belongs to a window that no longer exists.
    void Record(const absl::Status& outcome, Duration elapsed);

    // Gives the permit back without an outcome (as if dropped). Idempotent.
    void Release();

   private:
    friend class CircuitBreaker;
    Permit(CircuitBreaker* breaker, uint64_t epoch) : breaker_(breaker), epoch_(epoch) {}
    CircuitBreaker* breaker_;  // null once recorded, released or moved from
    uint64_t epoch_;           // the breaker's state epoch when issued
  };

  using Listener = std::function<void(State from, State to)>;

  // Validates `options`. `clock` and `metrics` (optional) must outlive the breaker.
  // Metrics registered (labels name=<name>): keel_circuit_breaker_calls_total{outcome=success|
  // failure|ignored}, keel_circuit_breaker_slow_calls_total, keel_circuit_breaker_not_permitted_
  // total, keel_circuit_breaker_transitions_total{to=<state>}, keel_circuit_breaker_state{state=
  // <state>} (1 for the current state, 0 for the others).
  // Errors: INVALID_ARGUMENT naming the bad field (`circuit_breaker.window_size must be >= 1,
  // got 0`); any error from registering the metrics.
  static absl::StatusOr<std::unique_ptr<CircuitBreaker>> Create(Options options,
                                                                Clock& clock = SteadyClock(),
                                                                MetricsRegistry* metrics = nullptr);

  CircuitBreaker(const CircuitBreaker&) = delete;
  CircuitBreaker& operator=(const CircuitBreaker&) = delete;
  ~CircuitBreaker();

  // Asks to make one call. Never blocks. In CLOSED, DISABLED and METRICS_ONLY it always succeeds
  // without reading the clock or taking a lock.
  // Errors: UNAVAILABLE when OPEN (with keel::RetryAfter = the time left until HALF_OPEN), when
  // FORCED_OPEN (no retry-after), or when HALF_OPEN and every probe permit is taken.
  absl::StatusOr<Permit> TryAcquire() ABSL_LOCKS_EXCLUDED(mu_);

  // Acquires a permit, runs `fn`, records its status and duration (on the breaker's clock), and
  // returns what `fn` returned. `fn()` returns absl::Status or absl::StatusOr<T>; when no permit
  // is granted `fn` is not called and TryAcquire's error is returned in that type.
  template <typename F>
  auto Execute(F&& fn) -> std::invoke_result_t<F&> {
    using R = std::invoke_result_t<F&>;
    static_assert(internal::IsStatusOrStatusOr<R>::value,
                  "CircuitBreaker::Execute: fn() must return absl::Status or absl::StatusOr<T>");
    absl::StatusOr<Permit> permit = TryAcquire();
    if (!permit.ok()) return R(permit.status());
    const TimePoint start = clock_.Now();
    R result = fn();
    permit->Record(internal::StatusOf(result), clock_.Now() - start);
    return result;
  }

  // The current state, after applying any time-driven transition that is due. Logically const:
  // applying a due transition (and notifying listeners of it) changes no observable decision.
  State state() const ABSL_LOCKS_EXCLUDED(mu_);

  // A snapshot of the state, rates and counters (applies due time-driven transitions first).
  CircuitBreakerStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);

  // Moves the breaker to `to` with a fresh window and notifies listeners (if the state changed).
  // Use it for the manual states (kDisabled, kForcedOpen, kMetricsOnly) and to leave them again;
  // kOpen starts a new `wait_in_open`, kHalfOpen a new set of probes. Permits issued before are
  // still accepted but their outcomes no longer count.
  void TransitionTo(State to) ABSL_LOCKS_EXCLUDED(mu_);

  // Back to CLOSED with an empty window, whatever the current state (including manual ones).
  void Reset() ABSL_LOCKS_EXCLUDED(mu_) { TransitionTo(State::kClosed); }

  // Adds a listener called on every state change, in order, never under the breaker's lock, on
  // the thread that caused or observed the change. A listener may call the breaker. A listener
  // that throws is caught: that call is dropped and counted (listener_exceptions_total), the other
  // listeners and later events are delivered as usual.
  void AddListener(Listener listener) ABSL_LOCKS_EXCLUDED(mu_);

  const std::string& name() const { return options_.name; }
  const Options& options() const { return options_; }
  // The clock durations are recorded on (what Execute measures `fn` with).
  Clock& clock() const { return clock_; }

 private:
  class Window;
  struct Event {
    State from;
    State to;
  };

  CircuitBreaker(Options options, Clock& clock);
  absl::Status RegisterMetrics(MetricsRegistry& metrics);

  static State StateOf(uint64_t word) { return static_cast<State>(word & kStateMask); }
  static uint64_t EpochOf(uint64_t word) { return word >> kStateBits; }

  absl::StatusOr<Permit> AcquireSlow(uint64_t word) ABSL_LOCKS_EXCLUDED(mu_);
  State StateImpl() ABSL_LOCKS_EXCLUDED(mu_);
  CircuitBreakerStats StatsImpl() ABSL_LOCKS_EXCLUDED(mu_);
  void OnRecord(uint64_t epoch, Outcome outcome, Duration elapsed) ABSL_LOCKS_EXCLUDED(mu_);
  void OnRelease(uint64_t epoch) ABSL_LOCKS_EXCLUDED(mu_);
  // Applies the time-driven transitions due at `now`.
  void AdvanceLocked(TimePoint now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void TransitionLocked(State to, TimePoint now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EvaluateClosedLocked(TimePoint now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EvaluateProbesLocked(TimePoint now) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status OpenError(TimePoint now) const;
  // Calls listeners for queued events, outside the lock, one thread at a time, in order.
  void DeliverEvents() ABSL_LOCKS_EXCLUDED(mu_);
  static void Bump(std::atomic<uint64_t>& counter) {
    // Only ever written under mu_: a plain load + store (no locked RMW) is enough; readers of
    // Stats()/metrics load it relaxed and need no ordering with anything else.
    counter.store(counter.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
  }

  static constexpr int kStateBits = 3;
  static constexpr uint64_t kStateMask = (uint64_t{1} << kStateBits) - 1;

  const Options options_;
  Clock& clock_;
  const int64_t effective_minimum_calls_;
  const bool window_type_time_based_;
  const bool default_classifier_;  // options_.classifier is DefaultClassifier: call it directly

  // (epoch << kStateBits) | state. Written only under mu_ (release), read lock-free (acquire) by
  // TryAcquire so the CLOSED path takes no lock. The epoch grows on every transition; a permit
  // carries the epoch it was issued in, so a late outcome never lands in a newer window.
  alignas(64) std::atomic<uint64_t> word_;
  // When OPEN ends, in clock nanoseconds; written under mu_ before word_'s release store.
  std::atomic<int64_t> open_until_ns_{0};

  // Guards the window, probes and events. A spin lock, not keel::Mutex: every critical section is
  // a few nanoseconds, never blocks and never calls user code, and the CLOSED Record path pays
  // one locked instruction instead of a mutex's two (see docs/circuit-breaker.md for figures).
  alignas(64) mutable internal::SpinLock mu_;
  std::unique_ptr<Window> window_ ABSL_GUARDED_BY(mu_);
  TimePoint half_open_until_ ABSL_GUARDED_BY(mu_);
  int probes_issued_ ABSL_GUARDED_BY(mu_) = 0;  // outstanding + recorded probes
  int probes_recorded_ ABSL_GUARDED_BY(mu_) = 0;
  int probes_failed_ ABSL_GUARDED_BY(mu_) = 0;
  int probes_slow_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<Event> events_ ABSL_GUARDED_BY(mu_);
  bool delivering_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<Listener> listeners_ ABSL_GUARDED_BY(mu_);

  // Lifetime counters (see Bump for the ordering argument; the two fetch_add ones are bumped
  // outside mu_).
  std::atomic<uint64_t> successful_{0};
  std::atomic<uint64_t> failed_{0};
  std::atomic<uint64_t> slow_{0};
  std::atomic<uint64_t> ignored_{0};              // fetch_add: bumped without mu_
  std::atomic<uint64_t> not_permitted_{0};        // fetch_add: bumped without mu_
  std::atomic<uint64_t> listener_exceptions_{0};  // fetch_add: bumped without mu_
  std::atomic<uint64_t> transitions_[6] = {};

  // Declared last: unregistered first, before anything the callbacks read is destroyed.
  std::vector<MetricsRegistry::Registration> registrations_;
};

// A snapshot of a CircuitBreaker (its Stats()); counters (`*_total`) are cumulative since Create.
struct CircuitBreakerStats {
  CircuitBreaker::State state = CircuitBreaker::State::kClosed;
  // Over the current window (CLOSED, METRICS_ONLY) or the current probes (HALF_OPEN); nullopt
  // until the minimum number of calls (or all probes) has been recorded.
  std::optional<double> failure_rate;
  std::optional<double> slow_call_rate;
  int64_t buffered_calls = 0;  // successes + failures in the window (or probes recorded)
  int64_t failed_calls = 0;    // failures in the window (or among the probes)
  int64_t slow_calls = 0;      // slow calls in the window (or among the probes)
  // Lifetime totals since Create.
  uint64_t successful_total = 0;
  uint64_t failed_total = 0;
  uint64_t ignored_total = 0;  // ignored outcomes plus permits dropped without Record
  uint64_t slow_total = 0;
  uint64_t not_permitted_total = 0;        // TryAcquire rejections
  uint64_t listener_exceptions_total = 0;  // listener calls that threw (caught and dropped)
};

// "closed", "open", "half_open", "disabled", "forced_open", "metrics_only".
const char* CircuitBreakerStateName(CircuitBreaker::State state);

}  // namespace keel
