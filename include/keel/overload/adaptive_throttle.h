// keel/overload/adaptive_throttle.h: client-side adaptive throttling (Google SRE book, "Handling
// Overload"): a client that sees its backend reject requests starts rejecting some locally, so
// the rejections cost the backend nothing.
//
// Defines `keel::overload::AdaptiveThrottle`, its move-only `Ticket`,
// `keel::overload::BackendAccepted` (the default classifier) and `AdaptiveThrottleStats`. Over
// the last `window` (default 2 minutes) the throttle counts
//
//   requests  every call the application attempted (TryAcquire), admitted or rejected locally
//   accepts   the admitted calls whose backend answer counts as accepted (Ticket::Record)
//
// and rejects a new call locally with probability
//
//   p = max(0, (requests - K * accepts) / (requests + 1))          K default 2
//
// so, under sustained overload, the traffic reaching the backend converges to about K times what
// it accepts. While the backend accepts everything, requests <= accepts < K * accepts and p is 0:
// no random draw, no rejection.
//
// Criticality (keel::Criticality, CallContext::criticality). A call of criticality c is decided
// on the calls at least as critical as c (criticality <= c in the enum order) with its own K:
//
//   p(c) = max(0, (requests(<=c) - K(c) * accepts(<=c)) / (requests(<=c) + 1))
//   K(c) = max(1, k * criticality_share[c])        default shares {1, 1, 0.75, 0.6}
//
// With the defaults, critical_plus and critical calls use K = 2, sheddable_plus 1.5, sheddable
// 1.2: a criticality starts being shed once the backend accepts fewer than 1 / K(c) of its calls
// (50%, 67%, 83%), so the least critical go first, and the traffic they stop sending raises the
// acceptance rate the more critical calls see. Less critical calls never enter a more critical
// call's counts: sheddable calls rejected locally do not raise the probability of critical ones.
//
// The window is a ring of `buckets` buckets (default 120, one per second) with running totals:
// O(1) per call, plus one bucket cleared per bucket width that passed (at most `buckets` after
// an idle spell). Buckets expire whole, so a call counts for between window - window/buckets and
// window. A call's accept is counted in the bucket of its request (requests and accepts of the
// same calls stay paired at the window's edge); the accept of a call longer than the window is
// dropped with its request.
//
// The decision and each count are one short spin lock (a few nanoseconds, no allocation, no user
// code). The random draw, when p > 0, happens outside it. The on_throttling_change listener runs
// after the lock is released.
//
// Thread safety: thread-safe. A Ticket may be recorded on any thread; it is not itself
// thread-safe. REQUIRES: the throttle outlives its tickets.
//
//   auto throttle = keel::overload::AdaptiveThrottle::Create({.name = "users-api"}).value();
//   absl::StatusOr<keel::overload::AdaptiveThrottle::Ticket> ticket =
//       throttle->TryAcquire(ctx.criticality);
//   if (!ticket.ok()) return ticket.status();   // RESOURCE_EXHAUSTED: rejected locally
//   absl::StatusOr<User> user = users.Get(id, ctx.deadline);
//   ticket->Record(user.status());              // accepted unless RESOURCE_EXHAUSTED/UNAVAILABLE
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/random/bit_gen_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/internal/spin_lock.h"
#include "keel/metrics.h"
#include "keel/resilience/call_context.h"

namespace keel::overload {

struct AdaptiveThrottleStats;

// The default classifier: the backend accepted the call unless it answered RESOURCE_EXHAUSTED
// (out of quota, overloaded) or UNAVAILABLE (shedding load, down). Every other answer, errors
// included, means the backend spent its work on the call.
bool BackendAccepted(const absl::Status& status);

class AdaptiveThrottle {
 public:
  struct Options {
    // Names the throttle in errors and metrics labels. Default: "adaptive_throttle".
    std::string name = "adaptive_throttle";
    // The SRE book's K: the traffic sent to an overloaded backend converges to about K times
    // what it accepts. Lower values shed sooner and waste less of the backend's work on
    // rejections; higher values react more slowly (2 is the book's choice). Default: 2. Must be
    // >= 1 (below 1 the throttle would reject calls a healthy backend accepts).
    double k = 2.0;
    // The fraction of k each criticality uses, indexed by keel::Criticality (kCriticalPlus,
    // kCritical, kSheddablePlus, kSheddable): K(c) = max(1, k * criticality_share[c]). Each must
    // be in (0, 1] and none may exceed the one before it. Default: {1, 1, 0.75, 0.6}.
    std::array<double, 4> criticality_share = {1.0, 1.0, 0.75, 0.6};
    // How long a request or an accept counts. Default: 2 min (the SRE book's). Must be > 0.
    Duration window = std::chrono::minutes(2);
    // Buckets the window is kept in; more buckets expire counts more smoothly. Default: 120.
    // Must be in [1, 3600], with window / buckets >= 1 ms.
    int buckets = 120;
    // Whether the backend accepted a call, from its status (Ticket::Record). A classifier that
    // throws counts the call as accepted (never throttles on a bug) and is counted
    // (classifier_exceptions_total). Default (unset): BackendAccepted.
    std::function<bool(const absl::Status&)> accepted;
    // Called with (criticality, true) when calls of that criticality start being rejected
    // locally (p(c) became > 0) and (criticality, false) when they stop, as seen by the next call
    // of that criticality. Never under a lock; on the thread of that call. May call the
    // throttle. An exception is caught and counted (listener_exceptions_total). Default: none.
    std::function<void(Criticality, bool throttling)> on_throttling_change;
  };

  // One admitted call: record the backend's answer once. Destroying an unrecorded ticket
  // ignores the call (OnIgnore). Move-only.
  class Ticket {
   public:
    Ticket(Ticket&& other) noexcept
        : owner_(std::exchange(other.owner_, nullptr)),
          bucket_(other.bucket_),
          criticality_(other.criticality_) {}
    Ticket& operator=(Ticket&& other) noexcept {
      if (this != &other) {
        OnIgnore();
        owner_ = std::exchange(other.owner_, nullptr);
        bucket_ = other.bucket_;
        criticality_ = other.criticality_;
      }
      return *this;
    }
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;
    ~Ticket() { OnIgnore(); }

    // Counts an accept when Options::accepted (default BackendAccepted) says the backend
    // accepted a call that ended with `status`.
    void Record(const absl::Status& status);
    // The backend accepted the call: one accept.
    void OnAccepted() { Finish(kAccepted); }
    // The backend rejected the call (overloaded, out of quota): no accept.
    void OnRejected() { Finish(kRejected); }
    // The outcome says nothing about the backend (the call never reached it, nobody waited for
    // it): the request is taken out of the window, as if never made.
    void OnIgnore() { Finish(kIgnored); }
    // Whether no outcome was recorded yet.
    bool pending() const { return owner_ != nullptr; }
    Criticality criticality() const { return criticality_; }

   private:
    friend class AdaptiveThrottle;
    enum Outcome { kAccepted, kRejected, kIgnored };
    Ticket(AdaptiveThrottle* owner, int64_t bucket, Criticality c)
        : owner_(owner), bucket_(bucket), criticality_(c) {}
    void Finish(Outcome outcome) {
      if (AdaptiveThrottle* t = std::exchange(owner_, nullptr)) t->Complete(*this, outcome);
    }
    AdaptiveThrottle* owner_;
    int64_t bucket_;  // where the request was counted
    Criticality criticality_;
  };

  // Validates `options` (INVALID_ARGUMENT naming the field: `adaptive throttle "api": k must be
  // >= 1, got 0.5`). Random draws come from a per-thread generator, or from `gen` (tests pass a
  // fixed one; it must be safe for the threads that use the throttle). `clock` and `metrics`
  // (optional) must outlive the throttle.
  // Metrics (label name=<name>): keel_adaptive_throttle_requests_total{criticality,
  // decision=admitted|rejected}, keel_adaptive_throttle_responses_total{result=accepted|
  // rejected|ignored} (counters), keel_adaptive_throttle_rejection_probability{criticality},
  // keel_adaptive_throttle_window{count=requests|accepts} (gauges).
  static absl::StatusOr<std::unique_ptr<AdaptiveThrottle>> Create(
      Options options, Clock& clock = SteadyClock(), MetricsRegistry* metrics = nullptr);
  static absl::StatusOr<std::unique_ptr<AdaptiveThrottle>> Create(
      Options options, Clock& clock, absl::BitGenRef gen, MetricsRegistry* metrics = nullptr);

  AdaptiveThrottle(const AdaptiveThrottle&) = delete;
  AdaptiveThrottle& operator=(const AdaptiveThrottle&) = delete;
  // REQUIRES: no ticket is pending.
  ~AdaptiveThrottle();

  // Counts one request of `criticality` and admits it (a Ticket) or rejects it locally with
  // probability p(criticality) computed before this request is counted. Never waits.
  // Errors: RESOURCE_EXHAUSTED `adaptive throttle "api": rejected call locally with probability
  // 0.43 (700 requests, 200 accepts of critical or more critical calls in the last 2m, K 2)` (the
  // counts p was computed on), without a retry-after hint: the rejection is random, and retrying
  // at once is what the throttle exists to stop.
  absl::StatusOr<Ticket> TryAcquire(Criticality criticality = Criticality::kCritical)
      ABSL_LOCKS_EXCLUDED(mu_) {
    return TryAcquire(criticality, clock_.Now());
  }
  // The same at `now` (a clock read saved when the caller has one). An earlier `now` than a
  // previous call's counts in the newest bucket.
  absl::StatusOr<Ticket> TryAcquire(Criticality criticality, TimePoint now)
      ABSL_LOCKS_EXCLUDED(mu_);

  // The dry run: p(criticality) now, counting nothing.
  double RejectionProbability(Criticality criticality = Criticality::kCritical) const
      ABSL_LOCKS_EXCLUDED(mu_);

  AdaptiveThrottleStats Stats() const ABSL_LOCKS_EXCLUDED(mu_);
  const std::string& name() const { return options_.name; }
  Clock& clock() const { return clock_; }

 private:
  static constexpr int kLevels = 4;
  struct Bucket {
    std::array<int64_t, kLevels> requests{};
    std::array<int64_t, kLevels> accepts{};
  };

  AdaptiveThrottle(Options options, Clock& clock, std::optional<absl::BitGenRef> gen);
  static absl::StatusOr<std::unique_ptr<AdaptiveThrottle>> CreateImpl(
      Options options, Clock& clock, std::optional<absl::BitGenRef> gen, MetricsRegistry* metrics);
  absl::Status RegisterMetrics(MetricsRegistry& metrics);
  // Nanoseconds from the origin to `now`, at least 0.
  int64_t SinceOrigin(TimePoint now) const;
  // Makes the bucket holding `since` the newest, unless it is already (or older).
  void AdvanceToLocked(int64_t since) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Expires the buckets that left the window by bucket `b` and makes `b` the newest.
  void AdvanceLocked(int64_t b) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // p(c), and (when asked) the requests and accepts it was computed on.
  double ProbabilityLocked(Criticality c, int64_t* requests = nullptr,
                           int64_t* accepts = nullptr) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Complete(const Ticket& ticket, Ticket::Outcome outcome) ABSL_LOCKS_EXCLUDED(mu_);
  bool Classify(const absl::Status& status);
  void DeliverThrottlingChanges() ABSL_LOCKS_EXCLUDED(mu_);
  absl::Status RejectedError(Criticality c, double p, int64_t requests, int64_t accepts) const;

  const Options options_;
  Clock& clock_;
  const std::optional<absl::BitGenRef> gen_;
  const TimePoint origin_;
  const int64_t bucket_width_ns_;
  const int64_t buckets_;
  std::array<double, kLevels> k_;  // K(c)

  alignas(64) mutable internal::SpinLock mu_;
  mutable std::vector<Bucket> ring_ ABSL_GUARDED_BY(mu_);
  mutable int64_t newest_ ABSL_GUARDED_BY(mu_) = 0;  // the newest bucket's number
  // Where the bucket after the newest starts, in nanoseconds since origin_.
  mutable int64_t next_boundary_ ABSL_GUARDED_BY(mu_);
  // Per criticality, summed over the ring.
  mutable std::array<int64_t, kLevels> requests_ ABSL_GUARDED_BY(mu_){};
  mutable std::array<int64_t, kLevels> accepts_ ABSL_GUARDED_BY(mu_){};
  std::array<uint64_t, kLevels> admitted_total_ ABSL_GUARDED_BY(mu_){};
  uint64_t accepted_total_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t backend_rejected_total_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t ignored_total_ ABSL_GUARDED_BY(mu_) = 0;
  // Listener state: whether each criticality is throttled, as last seen and as last delivered.
  std::array<bool, kLevels> throttling_ ABSL_GUARDED_BY(mu_){};
  std::array<bool, kLevels> delivered_ ABSL_GUARDED_BY(mu_){};
  bool delivering_ ABSL_GUARDED_BY(mu_) = false;

  // Off the lock: the rejection path and user-code failures.
  alignas(64) std::array<std::atomic<uint64_t>, kLevels> rejected_total_{};
  std::atomic<uint64_t> listener_exceptions_{0};
  std::atomic<uint64_t> classifier_exceptions_{0};

  std::vector<MetricsRegistry::Registration> registrations_;  // last: unregistered first
};

// A snapshot of an AdaptiveThrottle (its Stats()); `*_total` counters are cumulative since
// Create, arrays are indexed by keel::Criticality.
struct AdaptiveThrottleStats {
  int64_t requests = 0;  // in the window, every criticality
  int64_t accepts = 0;
  std::array<double, 4> rejection_probability{};  // p(c) now
  std::array<uint64_t, 4> admitted_total{};
  std::array<uint64_t, 4> rejected_total{};  // rejected locally
  uint64_t accepted_total = 0;               // recorded as accepted by the backend
  uint64_t backend_rejected_total = 0;       // recorded as rejected by the backend
  uint64_t ignored_total = 0;                // recorded or dropped as ignored
  uint64_t listener_exceptions_total = 0;
  uint64_t classifier_exceptions_total = 0;
};

}  // namespace keel::overload
