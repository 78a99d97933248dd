// The state behind a LockGuard, its watchdog and its release (see lease.h for the invariants).
#include "lease.h"

#include <algorithm>
#include <utility>

#include "absl/random/random.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::redis {
namespace internal {

using keel::internal::StrCat;

Duration DriftAllowance(Duration ttl) { return ttl / 100 + std::chrono::milliseconds(2); }

Duration LeaseValidity(Duration ttl, Duration elapsed) {
  const Duration left = ttl - elapsed - DriftAllowance(ttl);
  return left > Duration::zero() ? left : Duration::zero();
}

size_t Quorum(size_t nodes) { return nodes / 2 + 1; }

bool RedlockHolds(size_t granted, size_t nodes, Duration ttl, Duration elapsed) {
  return granted >= Quorum(nodes) && LeaseValidity(ttl, elapsed) > Duration::zero();
}

std::string NewLockToken() {
  // absl::BitGen is seeded from the OS's entropy: tokens of different processes never collide
  // (2^-64 per pair at 2^32 tokens), and a holder cannot guess another's. One per thread: a
  // BitGen is not thread-safe, and seeding one per call would cost more than the rest of it.
  thread_local absl::BitGen gen;
  return absl::StrFormat("%016x%016x", absl::Uniform<uint64_t>(gen), absl::Uniform<uint64_t>(gen));
}

absl::StatusOr<Backoff> ValidateLockOptions(const keel::internal::OptionsOf& of,
                                            std::string_view name, Duration ttl,
                                            Duration acquire_timeout, Duration release_timeout,
                                            const Backoff::Options& retry, const Timer* timer,
                                            const Clock& clock) {
  if (name.empty() || name.size() > 128) {
    return keel::internal::InvalidOption(of, "name", "1 to 128 bytes",
                                         StrCat(name.size(), " bytes"));
  }
  if (ttl < std::chrono::milliseconds(10) || ttl > std::chrono::hours(24 * 365)) {
    return keel::internal::InvalidOption(of, "ttl", "in [10ms, 365 days]", ttl);
  }
  if (ttl % std::chrono::milliseconds(1) != Duration::zero()) {
    return keel::internal::InvalidOption(of, "ttl", "a whole number of milliseconds", ttl);
  }
  KEEL_RETURN_IF_ERROR(keel::internal::RequirePositive(of, "acquire_timeout", acquire_timeout));
  KEEL_RETURN_IF_ERROR(keel::internal::RequirePositive(of, "release_timeout", release_timeout));
  if (timer != nullptr && &timer->clock() != &clock) {
    return keel::internal::InvalidOption(of, "timer", "a Timer on the lock's clock",
                                         "a Timer on another clock");
  }
  absl::StatusOr<Backoff> backoff = Backoff::Create(retry, "retry");
  if (!backoff.ok()) return of.Nest(backoff.status());
  return *backoff;
}

int64_t TtlMillis(Duration ttl) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(ttl).count();
}

LockStats LockCounters::Snapshot() const {
  auto get = [](const std::atomic<uint64_t>& c) { return c.load(std::memory_order_relaxed); };
  return LockStats{
      .acquired_total = get(acquired),
      .contended_total = get(contended),
      .errors_total = get(errors),
      .released_total = get(released),
      .release_aborted_total = get(release_aborted),
      .extended_total = get(extended),
      .extend_failures_total = get(extend_failures),
      .lost_total = get(lost),
      .on_lost_exceptions_total = get(on_lost_exceptions),
  };
}

absl::Status LockCounters::Register(MetricsRegistry& metrics, std::string_view name,
                                    std::string_view backend,
                                    std::vector<MetricsRegistry::Registration>& out) const {
  const Labels labels = {{"name", std::string(name)}, {"backend", std::string(backend)}};
  struct Series {
    const char* name;
    const char* help;
    const std::atomic<uint64_t>* counter;
  };
  for (const Series& s : {
           Series{"keel_lock_acquired_total", "Lock guards handed out.", &acquired},
           Series{"keel_lock_contended_total", "Acquire attempts that found the lock held.",
                  &contended},
           Series{"keel_lock_errors_total", "Acquire attempts that failed.", &errors},
           Series{"keel_lock_released_total", "Lock guards released.", &released},
           Series{"keel_lock_release_aborted_total",
                  "Releases that found the lease gone (it had run out).", &release_aborted},
           Series{"keel_lock_extended_total", "Lease extensions that succeeded.", &extended},
           Series{"keel_lock_extend_failures_total", "Lease extensions that failed.",
                  &extend_failures},
           Series{"keel_lock_lost_total", "Guards whose lease the watchdog found lost.", &lost},
           Series{"keel_lock_on_lost_exceptions_total",
                  "Exceptions thrown by on_lost callbacks (caught and dropped).",
                  &on_lost_exceptions},
       }) {
    const std::atomic<uint64_t>* c = s.counter;
    KEEL_ASSIGN_OR_RETURN(MetricsRegistry::Registration r,
                          metrics.AddCounterCallback(s.name, s.help, labels, [c] {
                            return static_cast<double>(c->load(std::memory_order_relaxed));
                          }));
    out.push_back(std::move(r));
  }
  return absl::OkStatus();
}

LeaseBackend::LeaseBackend(Config config, Clock& clock, Timer* timer)
    : name_(std::move(config.name)),
      prefix_(StrCat(config.type, " \"", name_, "\": ")),
      ttl_(config.ttl),
      release_timeout_(config.release_timeout),
      acquire_timeout_(config.acquire_timeout),
      backoff_(config.backoff),
      on_lost_(std::move(config.on_lost)),
      watchdog_(config.watchdog),
      clock_(clock),
      timer_(config.watchdog ? timer : nullptr) {}

absl::Status LeaseBackend::Init(MetricsRegistry* metrics, std::string_view metrics_backend) {
  if (watchdog_ && timer_ == nullptr) {
    KEEL_ASSIGN_OR_RETURN(own_timer_,
                          Timer::Create({.name = prefix_.substr(0, prefix_.size() - 2)}, clock_));
    timer_ = own_timer_.get();
  }
  if (metrics == nullptr) return absl::OkStatus();
  return counters_.Register(*metrics, name_, metrics_backend, registrations_);
}

LockGuard LeaseBackend::MakeGuard(std::string token, std::optional<int64_t> fencing,
                                  TimePoint started) {
  counters_.acquired.fetch_add(1, std::memory_order_relaxed);
  auto lease = std::make_shared<Lease>(*this, std::move(token), fencing, started);
  if (timer_ != nullptr) {
    MutexLock lock(lease->mu);
    lease->ScheduleTick(started + ttl_ / 3);
  }
  CancellationToken cancellation = lease->cancel.token();
  return LockGuard(std::move(lease), fencing, std::move(cancellation));
}

absl::StatusOr<LockGuard> LeaseBackend::Acquire(Deadline deadline, const Backoff& backoff,
                                                absl::BitGenRef random) {
  if (deadline.IsInfinite()) deadline = Deadline::After(acquire_timeout_, clock_);
  BackoffSequence delays = backoff.Start();
  bool held = false;  // some attempt found the lock held
  absl::Status last;  // the last attempt's error, if it failed
  int attempts = 0;
  while (true) {
    ++attempts;
    absl::StatusOr<std::optional<LockGuard>> got = TryAcquire(deadline);
    if (got.ok() && got->has_value()) return std::move(**got);
    if (got.ok()) {
      held = true;
      last = absl::OkStatus();
    } else {
      last = std::move(got).status();
    }
    const TimePoint now = deadline.clock().Now();
    if (now >= deadline.time()) break;
    clock_.SleepUntil(std::min(deadline.time(), now + delays.Next(random)));
    if (deadline.Expired()) break;
  }
  std::string why = held ? "held by someone else" : "";
  if (!last.ok()) absl::StrAppend(&why, held ? "; " : "", "last error: ", last.message());
  return absl::DeadlineExceededError(StrCat(prefix_, "not acquired within the deadline after ",
                                            attempts, " attempts (", why, ")"));
}

void Lease::ScheduleTick(TimePoint at) {
  // A weak reference: a guard dropped without Release (impossible: the destructor releases) or
  // a timer entry that outlives Cancel never keeps the lease alive.
  timer_id = backend.timer_->Schedule(at, [weak = weak_from_this()] {
    if (std::shared_ptr<Lease> lease = weak.lock()) lease->Tick();
  });
}

void Lease::Tick() {
  TimePoint sent;
  Deadline deadline = Deadline::Infinite();
  {
    MutexLock lock(mu);
    timer_id = 0;
    if (state != State::kHeld) return;  // released meanwhile: never extended again
    busy = true;
    sent = backend.clock().Now();
    // An attempt may take as long as the lease stays valid: a slow answer that extends it is as
    // good as a fast one (the next tick then comes at once), and one after that is useless.
    deadline =
        Deadline::At(valid_from + backend.ttl() - DriftAllowance(backend.ttl()), backend.clock());
  }
  // Outside the lock: the future may complete here and now (a refusal), calling Extended.
  backend.AsyncExtend(deadline, token).Then([self = shared_from_this(), sent](absl::Status s) {
    self->Extended(sent, std::move(s));
  });
}

void Lease::Extended(TimePoint sent, absl::Status status) {
  {
    MutexLock lock(mu);
    if (state != State::kHeld) {  // released while the extension was in flight
      busy = false;
      cv.SignalAll();
      return;
    }
    const Duration ttl = backend.ttl();
    if (status.ok()) {
      backend.counters().extended.fetch_add(1, std::memory_order_relaxed);
      valid_from = std::max(valid_from, sent);
      first_failure = absl::OkStatus();
      ScheduleTick(sent + ttl / 3);
      busy = false;
      cv.SignalAll();
      return;
    }
    backend.counters().extend_failures.fetch_add(1, std::memory_order_relaxed);
    if (first_failure.ok()) first_failure = status;
    if (!absl::IsAborted(status)) {
      // Redis failed or was slow: try again soon, while the lease may still be ours.
      const TimePoint retry_at =
          backend.clock().Now() + std::max<Duration>(ttl / 10, std::chrono::milliseconds(1));
      if (retry_at < valid_from + ttl - DriftAllowance(ttl)) {
        ScheduleTick(retry_at);
        busy = false;
        cv.SignalAll();
        return;
      }
    }
    state = State::kLost;  // still busy: Release waits until on_lost has run
    // Ran out while extensions kept failing: say why they failed, not that the last was cut
    // short by the lease's end.
    if (absl::IsDeadlineExceeded(status) && !first_failure.ok()) status = std::move(first_failure);
  }
  ReportLost(std::move(status));
  {
    MutexLock lock(mu);
    busy = false;
  }
  cv.SignalAll();
}

void Lease::ReportLost(absl::Status reason) {
  backend.counters().lost.fetch_add(1, std::memory_order_relaxed);
  cancel.Cancel();
  if (!backend.on_lost_) return;
  try {
    backend.on_lost_(LockLost{.name = backend.name(), .fencing_token = fencing, .reason = reason});
  } catch (...) {  // counted and dropped: user code cannot wedge the watchdog
    backend.counters().on_lost_exceptions.fetch_add(1, std::memory_order_relaxed);
  }
}

Duration Lease::Validity() const {
  MutexLock lock(mu);
  if (state != State::kHeld) return Duration::zero();
  return LeaseValidity(backend.ttl(), backend.clock().Now() - valid_from);
}

absl::Status Lease::Extend(Deadline deadline) {
  TimePoint sent;
  {
    MutexLock lock(mu);
    if (state == State::kReleased) {
      return absl::FailedPreconditionError(StrCat(backend.prefix(), "the guard was released"));
    }
    if (state == State::kLost) {
      return absl::AbortedError(StrCat(backend.prefix(), "the lease was lost"));
    }
    sent = backend.clock().Now();
  }
  absl::Status status = backend.Extend(deadline, token);
  bool lost = false;
  {
    MutexLock lock(mu);
    if (status.ok()) {
      backend.counters().extended.fetch_add(1, std::memory_order_relaxed);
      if (state == State::kHeld) valid_from = std::max(valid_from, sent);
    } else {
      backend.counters().extend_failures.fetch_add(1, std::memory_order_relaxed);
      if (absl::IsAborted(status) && state == State::kHeld && !busy) {
        state = State::kLost;
        busy = true;
        lost = true;
      }
    }
  }
  if (lost) {
    ReportLost(status);
    {
      MutexLock lock(mu);
      busy = false;
    }
    cv.SignalAll();
  }
  return status;
}

absl::Status Lease::Release(Deadline deadline) {
  if (deadline.IsInfinite()) deadline = Deadline::After(backend.release_timeout_, backend.clock());
  {
    MutexLock lock(mu);
    if (state == State::kReleased) {
      return absl::FailedPreconditionError(StrCat(backend.prefix(), "already released"));
    }
    state = State::kReleased;
    if (timer_id != 0) {
      backend.timer_->Cancel(timer_id);  // false when it is running: Tick sees kReleased
      timer_id = 0;
    }
    // An extension in flight is answered before the release is sent (see lease.h). Bounded by
    // the deadline: a release that cannot wait goes out anyway, and the compare-and-pexpire of
    // a late extension then finds the token gone.
    deadline.clock().WaitUntil(mu, cv, deadline.time(), [&] {
      mu.AssertHeld();
      return !busy;
    });
  }
  backend.counters().released.fetch_add(1, std::memory_order_relaxed);
  absl::Status status = backend.Release(deadline, token);
  if (absl::IsAborted(status)) {
    backend.counters().release_aborted.fetch_add(1, std::memory_order_relaxed);
  }
  return status;
}

}  // namespace internal

LockGuard::LockGuard(std::shared_ptr<internal::Lease> lease, std::optional<int64_t> fencing_token,
                     CancellationToken cancellation)
    : lease_(std::move(lease)),
      fencing_token_(fencing_token),
      cancellation_(std::move(cancellation)) {}

LockGuard::LockGuard(LockGuard&& other) noexcept
    : lease_(std::move(other.lease_)),
      fencing_token_(other.fencing_token_),
      cancellation_(std::move(other.cancellation_)) {}

LockGuard& LockGuard::operator=(LockGuard&& other) noexcept {
  if (this != &other) {
    (void)Release();
    lease_ = std::move(other.lease_);
    fencing_token_ = other.fencing_token_;
    cancellation_ = std::move(other.cancellation_);
  }
  return *this;
}

LockGuard::~LockGuard() { (void)Release(); }

Duration LockGuard::Validity() const {
  return lease_ == nullptr ? Duration::zero() : lease_->Validity();
}

bool LockGuard::lost() const {
  if (lease_ == nullptr) return false;
  MutexLock lock(lease_->mu);
  return lease_->state == internal::Lease::State::kLost;
}

absl::Status LockGuard::Extend(Deadline deadline) {
  if (lease_ == nullptr) return absl::FailedPreconditionError("lock guard: not held");
  return lease_->Extend(deadline);
}

absl::Status LockGuard::Release(Deadline deadline) {
  if (lease_ == nullptr) return absl::FailedPreconditionError("lock guard: not held");
  std::shared_ptr<internal::Lease> lease = std::move(lease_);
  lease_ = nullptr;
  return lease->Release(deadline);
}

namespace internal {

LockBase::LockBase(std::unique_ptr<LeaseBackend> backend) : backend_(std::move(backend)) {}

// The guard taken by lock() (Lockable, a base class) goes while the backend it points to exists.
LockBase::~LockBase() { unlock(); }

absl::StatusOr<std::optional<LockGuard>> LockBase::TryAcquire(Deadline deadline) {
  return backend_->TryAcquire(deadline);
}

absl::StatusOr<LockGuard> LockBase::Acquire(Deadline deadline) {
  absl::BitGen random;  // per call: a BitGen is not thread-safe, and seeding one is cheap
  return backend_->Acquire(deadline, backend_->backoff(), random);
}

absl::StatusOr<LockGuard> LockBase::Acquire(Deadline deadline, const Backoff& backoff,
                                            absl::BitGenRef random) {
  return backend_->Acquire(deadline, backoff, random);
}

LockStats LockBase::Stats() const { return backend_->counters().Snapshot(); }
Clock& LockBase::clock() const { return backend_->clock(); }

}  // namespace internal
}  // namespace keel::redis
