#include "keel/resilience/circuit_breaker.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"
#include "keel/status.h"

namespace keel {
namespace {

constexpr CircuitBreaker::State kAllStates[] = {
    CircuitBreaker::State::kClosed,     CircuitBreaker::State::kOpen,
    CircuitBreaker::State::kHalfOpen,   CircuitBreaker::State::kDisabled,
    CircuitBreaker::State::kForcedOpen, CircuitBreaker::State::kMetricsOnly};

int64_t Nanos(TimePoint t) { return t.time_since_epoch().count(); }

// A time point plus a duration that saturates at TimePoint::max() (for kNoHalfOpenLimit).
TimePoint SaturatingAdd(TimePoint t, Duration d) {
  if (d >= TimePoint::max() - t) return TimePoint::max();
  return t + d;
}

}  // namespace

// The sliding window of recent outcomes with running totals, so every record and every rate is
// O(1) whatever the window size. Not thread-safe: the breaker holds mu_.
class CircuitBreaker::Window {
 public:
  Window(WindowType type, int size)
      : type_(type),
        size_(size),
        slots_(type == WindowType::kCountBased ? size : 0),
        buckets_(type == WindowType::kTimeBased ? size : 0) {}

  void Record(bool failure, bool slow, TimePoint now) {
    if (type_ == WindowType::kCountBased) {
      uint8_t& slot = slots_[next_];
      Subtract(slot);
      slot = static_cast<uint8_t>(kPresent | (failure ? kFailure : 0) | (slow ? kSlow : 0));
      Add(slot);
      if (++next_ == size_) next_ = 0;
      return;
    }
    Bucket& b = AdvanceTo(now);
    ++b.calls;
    ++calls_;
    if (failure) ++b.failures, ++failures_;
    if (slow) ++b.slow, ++slow_;
  }

  void Clear() {
    std::fill(slots_.begin(), slots_.end(), uint8_t{0});
    std::fill(buckets_.begin(), buckets_.end(), Bucket{});
    next_ = 0;
    started_ = false;
    calls_ = failures_ = slow_ = 0;
  }

  // Drops the buckets that have left a time-based window at `now`. Amortised O(1): each bucket
  // is cleared at most once per second of clock time.
  void Expire(TimePoint now) {
    if (type_ == WindowType::kTimeBased) AdvanceTo(now);
  }

  int64_t calls() const { return calls_; }
  int64_t failures() const { return failures_; }
  int64_t slow() const { return slow_; }

 private:
  static constexpr uint8_t kPresent = 1, kFailure = 2, kSlow = 4;
  struct Bucket {
    int64_t calls = 0, failures = 0, slow = 0;
  };

  void Add(uint8_t slot) {
    calls_ += (slot & kPresent) ? 1 : 0;
    failures_ += (slot & kFailure) ? 1 : 0;
    slow_ += (slot & kSlow) ? 1 : 0;
  }
  void Subtract(uint8_t slot) {
    calls_ -= (slot & kPresent) ? 1 : 0;
    failures_ -= (slot & kFailure) ? 1 : 0;
    slow_ -= (slot & kSlow) ? 1 : 0;
  }

  // Makes `now`'s second the newest bucket, clearing the seconds skipped since the last call.
  Bucket& AdvanceTo(TimePoint now) {
    const int64_t second = Nanos(now) / 1'000'000'000;
    if (!started_) {
      started_ = true;
      head_second_ = second;
    } else if (second > head_second_) {
      const int64_t skipped = std::min<int64_t>(second - head_second_, size_);
      for (int64_t s = 1; s <= skipped; ++s) {
        Bucket& b = buckets_[static_cast<size_t>((head_second_ + s) % size_)];
        calls_ -= b.calls;
        failures_ -= b.failures;
        slow_ -= b.slow;
        b = Bucket{};
      }
      head_second_ = second;
    }
    // A record from a thread whose clock read raced behind the head lands in the head bucket
    // (it is at most a few microseconds late).
    return buckets_[static_cast<size_t>(head_second_ % size_)];
  }

  const WindowType type_;
  const int size_;
  std::vector<uint8_t> slots_;  // count-based: one outcome per slot, 0 = empty
  int next_ = 0;
  std::vector<Bucket> buckets_;  // time-based: one per second, indexed second % size
  bool started_ = false;
  int64_t head_second_ = 0;
  int64_t calls_ = 0, failures_ = 0, slow_ = 0;
};

const char* CircuitBreakerStateName(CircuitBreaker::State state) {
  switch (state) {
    case CircuitBreaker::State::kClosed:
      return "closed";
    case CircuitBreaker::State::kOpen:
      return "open";
    case CircuitBreaker::State::kHalfOpen:
      return "half_open";
    case CircuitBreaker::State::kDisabled:
      return "disabled";
    case CircuitBreaker::State::kForcedOpen:
      return "forced_open";
    case CircuitBreaker::State::kMetricsOnly:
      return "metrics_only";
  }
  return "unknown";
}

CircuitBreaker::Outcome CircuitBreaker::DefaultClassifier(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return Outcome::kSuccess;
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kAlreadyExists:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kUnauthenticated:
    case absl::StatusCode::kFailedPrecondition:
      return Outcome::kIgnored;
    default:
      return Outcome::kFailure;
  }
}

absl::StatusOr<std::unique_ptr<CircuitBreaker>> CircuitBreaker::Create(Options options,
                                                                       Clock& clock,
                                                                       MetricsRegistry* metrics) {
  const internal::OptionsOf of("circuit breaker", options.name);
  if (options.name.empty()) return internal::InvalidOption(of, "name", "non-empty", "\"\"");
  KEEL_RETURN_IF_ERROR(
      internal::RequireFraction(of, "failure_rate_threshold", options.failure_rate_threshold));
  KEEL_RETURN_IF_ERROR(
      internal::RequireFraction(of, "slow_call_rate_threshold", options.slow_call_rate_threshold));
  KEEL_RETURN_IF_ERROR(
      internal::RequirePositive(of, "slow_call_duration", options.slow_call_duration));
  KEEL_RETURN_IF_ERROR(internal::RequireAtLeast(of, "window_size", options.window_size, 1));
  KEEL_RETURN_IF_ERROR(internal::RequireAtLeast(of, "minimum_calls", options.minimum_calls, 1));
  KEEL_RETURN_IF_ERROR(
      internal::RequireAtLeast(of, "half_open_permits", options.half_open_permits, 1));
  KEEL_RETURN_IF_ERROR(internal::RequirePositive(of, "wait_in_open", options.wait_in_open));
  if (options.max_wait_in_half_open <= Duration::zero()) {
    return internal::InvalidOption(of, "max_wait_in_half_open", "> 0 (or kNoHalfOpenLimit)",
                                   options.max_wait_in_half_open);
  }
  KEEL_RETURN_IF_ERROR(internal::RequireSet(of, "classifier", bool(options.classifier)));
  std::unique_ptr<CircuitBreaker> breaker(new CircuitBreaker(std::move(options), clock));
  if (metrics != nullptr) KEEL_RETURN_IF_ERROR(breaker->RegisterMetrics(*metrics));
  return breaker;
}

CircuitBreaker::CircuitBreaker(Options options, Clock& clock)
    : options_(std::move(options)),
      clock_(clock),
      effective_minimum_calls_(options_.window_type == WindowType::kCountBased
                                   ? std::min(options_.minimum_calls, options_.window_size)
                                   : options_.minimum_calls),
      window_type_time_based_(options_.window_type == WindowType::kTimeBased),
      default_classifier_([this] {
        using Fn = Outcome (*)(const absl::Status&);
        const Fn* fn = options_.classifier.target<Fn>();
        return fn != nullptr && *fn == &CircuitBreaker::DefaultClassifier;
      }()),
      word_(static_cast<uint64_t>(State::kClosed)),
      window_(std::make_unique<Window>(options_.window_type, options_.window_size)) {}

CircuitBreaker::~CircuitBreaker() = default;

absl::Status CircuitBreaker::RegisterMetrics(MetricsRegistry& metrics) {
  const std::string& n = options_.name;
  auto add_counter = [&](const char* name, const char* help, Labels labels,
                         const std::atomic<uint64_t>* value) -> absl::Status {
    KEEL_ASSIGN_OR_RETURN(auto reg, metrics.AddCounterCallback(name, help, labels, [value] {
      return static_cast<double>(value->load(std::memory_order_relaxed));
    }));
    registrations_.push_back(std::move(reg));
    return absl::OkStatus();
  };
  const char* calls_help = "Calls recorded by the circuit breaker, by outcome.";
  KEEL_RETURN_IF_ERROR(add_counter("keel_circuit_breaker_calls_total", calls_help,
                                   {{"name", n}, {"outcome", "success"}}, &successful_));
  KEEL_RETURN_IF_ERROR(add_counter("keel_circuit_breaker_calls_total", calls_help,
                                   {{"name", n}, {"outcome", "failure"}}, &failed_));
  KEEL_RETURN_IF_ERROR(add_counter("keel_circuit_breaker_calls_total", calls_help,
                                   {{"name", n}, {"outcome", "ignored"}}, &ignored_));
  KEEL_RETURN_IF_ERROR(add_counter("keel_circuit_breaker_slow_calls_total",
                                   "Recorded calls slower than slow_call_duration.", {{"name", n}},
                                   &slow_));
  KEEL_RETURN_IF_ERROR(add_counter("keel_circuit_breaker_not_permitted_total",
                                   "Calls rejected because the breaker did not permit them.",
                                   {{"name", n}}, &not_permitted_));
  KEEL_RETURN_IF_ERROR(add_counter("keel_circuit_breaker_listener_exceptions_total",
                                   "Listener calls that threw (caught and dropped).", {{"name", n}},
                                   &listener_exceptions_));
  for (State s : kAllStates) {
    KEEL_RETURN_IF_ERROR(add_counter(
        "keel_circuit_breaker_transitions_total", "State transitions, by the state entered.",
        {{"name", n}, {"to", CircuitBreakerStateName(s)}}, &transitions_[static_cast<int>(s)]));
    KEEL_ASSIGN_OR_RETURN(
        auto reg,
        metrics.AddGaugeCallback(
            "keel_circuit_breaker_state", "1 for the breaker's current state, 0 for the others.",
            {{"name", n}, {"state", CircuitBreakerStateName(s)}}, [this, s] {
              // Raw read, no time-driven transition: this runs under the
              // registry's lock and must not call listeners.
              return StateOf(word_.load(std::memory_order_relaxed)) == s ? 1.0 : 0.0;
            }));
    registrations_.push_back(std::move(reg));
  }
  return absl::OkStatus();
}

CircuitBreaker::Permit& CircuitBreaker::Permit::operator=(Permit&& other) noexcept {
  if (this != &other) {
    Release();
    breaker_ = std::exchange(other.breaker_, nullptr);
    epoch_ = other.epoch_;
  }
  return *this;
}

void CircuitBreaker::Permit::Record(const absl::Status& outcome, Duration elapsed) {
  CircuitBreaker* b = std::exchange(breaker_, nullptr);
  if (b == nullptr) return;
  // The default classifier is called directly, and OK (an inline check) needs no call at all:
  // Status::code() lives in Abseil's shared library and std::function adds an indirect call.
  const Outcome o = b->default_classifier_
                        ? (outcome.ok() ? Outcome::kSuccess : DefaultClassifier(outcome))
                        : b->options_.classifier(outcome);
  b->OnRecord(epoch_, o, elapsed);
}

void CircuitBreaker::Permit::Release() {
  CircuitBreaker* b = std::exchange(breaker_, nullptr);
  if (b != nullptr) b->OnRelease(epoch_);
}

absl::StatusOr<CircuitBreaker::Permit> CircuitBreaker::TryAcquire() {
  // acquire pairs with the release store in TransitionLocked: if we see OPEN we also see its
  // open_until_ns_. For CLOSED nothing else is read; the epoch is only a tag compared under mu_.
  const uint64_t word = word_.load(std::memory_order_acquire);
  switch (StateOf(word)) {
    case State::kClosed:
    case State::kMetricsOnly:
      return Permit(this, EpochOf(word));
    case State::kDisabled:
      return Permit(nullptr, 0);  // nothing is recorded while disabled
    case State::kForcedOpen:
      not_permitted_.fetch_add(1, std::memory_order_relaxed);
      return absl::UnavailableError(
          internal::StrCat("circuit breaker \"", options_.name, "\": forced open"));
    case State::kOpen: {
      const TimePoint now = clock_.Now();
      if (Nanos(now) < open_until_ns_.load(std::memory_order_relaxed)) {
        not_permitted_.fetch_add(1, std::memory_order_relaxed);
        return OpenError(now);
      }
      return AcquireSlow(word);  // the wait is over: move to HALF_OPEN under the lock
    }
    case State::kHalfOpen:
      return AcquireSlow(word);
  }
  return absl::InternalError("circuit breaker: unknown state");
}

absl::Status CircuitBreaker::OpenError(TimePoint now) const {
  const Duration left = std::max(
      Duration::zero(), Duration(open_until_ns_.load(std::memory_order_relaxed) - Nanos(now)));
  return WithRetryAfter(absl::UnavailableError(internal::StrCat("circuit breaker \"", options_.name,
                                                                "\": open; retry after ",
                                                                internal::FormatDuration(left))),
                        left);
}

absl::StatusOr<CircuitBreaker::Permit> CircuitBreaker::AcquireSlow(uint64_t /*seen*/) {
  const TimePoint now = clock_.Now();
  absl::StatusOr<Permit> result = absl::InternalError("unset");
  {
    internal::SpinLockGuard lock(mu_);
    AdvanceLocked(now);
    const uint64_t word = word_.load(std::memory_order_relaxed);
    switch (StateOf(word)) {
      case State::kClosed:
      case State::kMetricsOnly:
        result = Permit(this, EpochOf(word));
        break;
      case State::kDisabled:
        result = Permit(nullptr, 0);
        break;
      case State::kForcedOpen:
        not_permitted_.fetch_add(1, std::memory_order_relaxed);
        result = absl::UnavailableError(
            internal::StrCat("circuit breaker \"", options_.name, "\": forced open"));
        break;
      case State::kOpen:
        not_permitted_.fetch_add(1, std::memory_order_relaxed);
        result = OpenError(now);
        break;
      case State::kHalfOpen:
        if (probes_issued_ < options_.half_open_permits) {
          ++probes_issued_;
          result = Permit(this, EpochOf(word));
        } else {
          not_permitted_.fetch_add(1, std::memory_order_relaxed);
          result = absl::UnavailableError(
              internal::StrCat("circuit breaker \"", options_.name, "\": half-open and all ",
                               options_.half_open_permits, " probe permits are in use"));
        }
        break;
    }
  }
  DeliverEvents();
  return result;
}

void CircuitBreaker::OnRecord(uint64_t epoch, Outcome outcome, Duration elapsed) {
  if (outcome == Outcome::kIgnored) {
    OnRelease(epoch);
    return;
  }
  const bool failure = outcome == Outcome::kFailure;
  const bool slow = elapsed >= options_.slow_call_duration;
  // Only a time-based window needs to know when the call was recorded.
  const TimePoint now = window_type_time_based_ ? clock_.Now() : TimePoint{};
  bool transitioned = false;
  {
    internal::SpinLockGuard lock(mu_);
    Bump(failure ? failed_ : successful_);
    if (slow) Bump(slow_);
    const uint64_t word = word_.load(std::memory_order_relaxed);
    if (EpochOf(word) != epoch) return;  // a window that no longer exists
    switch (StateOf(word)) {
      case State::kClosed:
      case State::kMetricsOnly:
        window_->Record(failure, slow, now);
        if (StateOf(word) == State::kClosed) EvaluateClosedLocked(now);
        break;
      case State::kHalfOpen:
        ++probes_recorded_;
        probes_failed_ += failure ? 1 : 0;
        probes_slow_ += slow ? 1 : 0;
        EvaluateProbesLocked(now);
        break;
      default:
        break;  // no permits are issued in the other states within one epoch
    }
    transitioned = !events_.empty();
  }
  if (transitioned) DeliverEvents();
}

void CircuitBreaker::OnRelease(uint64_t epoch) {
  ignored_.fetch_add(1, std::memory_order_relaxed);
  // Only a HALF_OPEN probe holds a slot that must be given back; a relaxed peek avoids the lock
  // on the common CLOSED path. It cannot miss a slot: a probe of epoch E was issued after word_
  // was set to E (both under mu_, and the permit reached this thread after that), so coherence
  // guarantees this load returns E or a later word, and a later word means the slot is gone.
  if (StateOf(word_.load(std::memory_order_relaxed)) != State::kHalfOpen) return;
  internal::SpinLockGuard lock(mu_);
  const uint64_t word = word_.load(std::memory_order_relaxed);
  if (EpochOf(word) == epoch && StateOf(word) == State::kHalfOpen) --probes_issued_;
}

void CircuitBreaker::EvaluateClosedLocked(TimePoint now) {
  const int64_t calls = window_->calls();
  if (calls < effective_minimum_calls_) return;
  // Compare counts rather than divided rates so that thresholds like 0.5 of 10 are exact.
  const double c = static_cast<double>(calls);
  if (static_cast<double>(window_->failures()) >= options_.failure_rate_threshold * c ||
      static_cast<double>(window_->slow()) >= options_.slow_call_rate_threshold * c) {
    // `now` is only read for time-based windows; opening needs the real time either way.
    TransitionLocked(State::kOpen, window_type_time_based_ ? now : clock_.Now());
  }
}

void CircuitBreaker::EvaluateProbesLocked(TimePoint now) {
  if (probes_recorded_ < options_.half_open_permits) return;
  const double c = static_cast<double>(probes_recorded_);
  const bool bad = static_cast<double>(probes_failed_) >= options_.failure_rate_threshold * c ||
                   static_cast<double>(probes_slow_) >= options_.slow_call_rate_threshold * c;
  TransitionLocked(bad ? State::kOpen : State::kClosed,
                   window_type_time_based_ ? now : clock_.Now());
}

void CircuitBreaker::AdvanceLocked(TimePoint now) {
  for (;;) {
    const State s = StateOf(word_.load(std::memory_order_relaxed));
    if (s == State::kOpen && Nanos(now) >= open_until_ns_.load(std::memory_order_relaxed)) {
      // The HALF_OPEN phase starts when OPEN ended, not when someone noticed, so a late
      // observation never extends it.
      const TimePoint opened_end(Duration(open_until_ns_.load(std::memory_order_relaxed)));
      TransitionLocked(State::kHalfOpen, opened_end);
      continue;  // the half-open phase may itself have run out already
    }
    if (s == State::kHalfOpen && now >= half_open_until_) {
      // The new OPEN starts now rather than when HALF_OPEN ran out: an observation long after
      // the fact then costs one more full wait instead of replaying missed cycles.
      TransitionLocked(State::kOpen, now);
      return;
    }
    return;
  }
}

void CircuitBreaker::TransitionLocked(State to, TimePoint now) {
  const uint64_t old = word_.load(std::memory_order_relaxed);
  const State from = StateOf(old);
  if (to == State::kOpen) {
    const TimePoint until = SaturatingAdd(now, options_.wait_in_open);
    open_until_ns_.store(Nanos(until), std::memory_order_relaxed);
  }
  if (to == State::kHalfOpen) {
    half_open_until_ = SaturatingAdd(now, options_.max_wait_in_half_open);
    probes_issued_ = probes_recorded_ = probes_failed_ = probes_slow_ = 0;
  }
  window_->Clear();  // every state starts from an empty window (O(window_size), rare)
  // release: a lock-free TryAcquire that sees the new state also sees open_until_ns_.
  word_.store(((EpochOf(old) + 1) << kStateBits) | static_cast<uint64_t>(to),
              std::memory_order_release);
  if (from != to) {
    Bump(transitions_[static_cast<int>(to)]);
    events_.push_back({from, to});
  }
}

void CircuitBreaker::TransitionTo(State to) {
  const TimePoint now = clock_.Now();
  {
    internal::SpinLockGuard lock(mu_);
    TransitionLocked(to, now);
  }
  DeliverEvents();
}

// A breaker is only ever created non-const (Create allocates it), so casting const away to apply
// a due transition is well-defined; the transition is what any caller would observe anyway.
CircuitBreaker::State CircuitBreaker::state() const {
  return const_cast<CircuitBreaker*>(this)->StateImpl();
}

CircuitBreakerStats CircuitBreaker::Stats() const {
  return const_cast<CircuitBreaker*>(this)->StatsImpl();
}

CircuitBreaker::State CircuitBreaker::StateImpl() {
  const State s = StateOf(word_.load(std::memory_order_acquire));
  if (s != State::kOpen && s != State::kHalfOpen) return s;
  const TimePoint now = clock_.Now();
  State result;
  {
    internal::SpinLockGuard lock(mu_);
    AdvanceLocked(now);
    result = StateOf(word_.load(std::memory_order_relaxed));
  }
  DeliverEvents();
  return result;
}

CircuitBreakerStats CircuitBreaker::StatsImpl() {
  const TimePoint now = clock_.Now();
  CircuitBreakerStats st;
  {
    internal::SpinLockGuard lock(mu_);
    AdvanceLocked(now);
    st.state = StateOf(word_.load(std::memory_order_relaxed));
    if (st.state == State::kHalfOpen) {
      st.buffered_calls = probes_recorded_;
      st.failed_calls = probes_failed_;
      st.slow_calls = probes_slow_;
      if (probes_recorded_ >= options_.half_open_permits) {
        st.failure_rate = static_cast<double>(probes_failed_) / probes_recorded_;
        st.slow_call_rate = static_cast<double>(probes_slow_) / probes_recorded_;
      }
    } else {
      window_->Expire(now);
      st.buffered_calls = window_->calls();
      st.failed_calls = window_->failures();
      st.slow_calls = window_->slow();
      if (st.buffered_calls > 0 && st.buffered_calls >= effective_minimum_calls_) {
        st.failure_rate = static_cast<double>(st.failed_calls) / st.buffered_calls;
        st.slow_call_rate = static_cast<double>(st.slow_calls) / st.buffered_calls;
      }
    }
  }
  st.successful_total = successful_.load(std::memory_order_relaxed);
  st.failed_total = failed_.load(std::memory_order_relaxed);
  st.ignored_total = ignored_.load(std::memory_order_relaxed);
  st.slow_total = slow_.load(std::memory_order_relaxed);
  st.not_permitted_total = not_permitted_.load(std::memory_order_relaxed);
  st.listener_exceptions_total = listener_exceptions_.load(std::memory_order_relaxed);
  DeliverEvents();
  return st;
}

void CircuitBreaker::AddListener(Listener listener) {
  internal::SpinLockGuard lock(mu_);
  listeners_.push_back(std::move(listener));
}

void CircuitBreaker::DeliverEvents() {
  mu_.Lock();
  // One deliverer at a time keeps events in order; a listener that triggers another transition
  // (even re-entrantly) only queues it, and this loop delivers it next.
  if (delivering_ || events_.empty()) {
    mu_.Unlock();
    return;
  }
  delivering_ = true;
  while (!events_.empty()) {
    const Event ev = events_.front();
    events_.pop_front();
    std::vector<Listener> listeners = listeners_;  // transitions are rare; copying is fine
    mu_.Unlock();
    for (const Listener& l : listeners) {
      // A listener is user code: one that throws is dropped for this event and counted, so it
      // can neither end the process nor leave delivering_ set (which would silence every later
      // event) nor keep the other listeners from hearing about the transition.
      try {
        l(ev.from, ev.to);
      } catch (...) {
        listener_exceptions_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    mu_.Lock();
  }
  delivering_ = false;
  mu_.Unlock();
}

}  // namespace keel
