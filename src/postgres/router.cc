// postgres::Router: reads to healthy, current replicas (round robin, a share of the deadline per
// replica attempt, cooldown after failures and timeouts, replay lag against the primary's
// position and clock), writes and read-your-writes to the primary.
#include "keel/postgres/router.h"

#include <algorithm>
#include <utility>

#include "keel/internal/format.h"
#include "keel/internal/strings.h"

namespace keel::postgres {
namespace {

using keel::internal::FormatDuration;
using keel::internal::StrCat;

// The primary's WAL position and clock, in one statement.
constexpr char kPrimaryPosition[] =
    "SELECT pg_current_wal_lsn()::text, extract(epoch from clock_timestamp())::float8";
// Whether the replica has replayed position $1 (NULL when the primary could not be asked), the
// primary's commit time of the last transaction it replayed, and the replica's clock.
constexpr char kReplicaPosition[] =
    "SELECT coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false), "
    "extract(epoch from pg_last_xact_replay_timestamp())::float8, "
    "extract(epoch from clock_timestamp())::float8";

bool IsNodeFailure(absl::StatusCode code) {
  return code == absl::StatusCode::kUnavailable || code == absl::StatusCode::kDeadlineExceeded;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Router>> Router::Create(RouterOptions options,
                                                       std::unique_ptr<Pool> primary,
                                                       std::vector<std::unique_ptr<Pool>> replicas,
                                                       Clock& clock, MetricsRegistry* metrics) {
  const std::string who = StrCat("postgres router \"", options.name, "\": ");
  if (primary == nullptr) return absl::InvalidArgumentError(StrCat(who, "primary is required"));
  for (const auto& r : replicas) {
    if (r == nullptr) return absl::InvalidArgumentError(StrCat(who, "null replica"));
  }
  if (options.failure_cooldown < Duration::zero()) {
    return absl::InvalidArgumentError(StrCat(who, "router.failure_cooldown must be >= 0, got ",
                                             FormatDuration(options.failure_cooldown)));
  }
  if (options.lag_check_interval <= Duration::zero()) {
    return absl::InvalidArgumentError(StrCat(who, "router.lag_check_interval must be > 0, got ",
                                             FormatDuration(options.lag_check_interval)));
  }
  if (options.max_replay_lag && *options.max_replay_lag < Duration::zero()) {
    return absl::InvalidArgumentError(StrCat(who, "router.max_replay_lag must be >= 0, got ",
                                             FormatDuration(*options.max_replay_lag)));
  }
  if (options.read_attempts < 1) {
    return absl::InvalidArgumentError(
        StrCat(who, "router.read_attempts must be >= 1, got ", options.read_attempts));
  }
  if (!(options.replica_deadline_share > 0 && options.replica_deadline_share <= 1)) {
    return absl::InvalidArgumentError(
        StrCat(who, "router.replica_deadline_share must be in (0, 1], got ",
               options.replica_deadline_share));
  }
  std::unique_ptr<Router> router(
      new Router(std::move(options), std::move(primary), std::move(replicas), clock));
  if (metrics != nullptr) {
    const Labels labels = {{"name", router->options_.name}};
    const Router* r = router.get();
    const std::pair<const char*, uint64_t RouterStats::*> series[] = {
        {"replica_reads_total", &RouterStats::replica_reads_total},
        {"primary_reads_total", &RouterStats::primary_reads_total},
        {"fallbacks_total", &RouterStats::fallbacks_total},
        {"read_retries_total", &RouterStats::read_retries_total},
        {"replica_failures_total", &RouterStats::replica_failures_total},
        {"replica_timeouts_total", &RouterStats::replica_timeouts_total},
        {"lag_checks_total", &RouterStats::lag_checks_total},
        {"lag_skips_total", &RouterStats::lag_skips_total},
        {"writes_total", &RouterStats::writes_total},
    };
    for (const auto& [stat, field] : series) {
      auto reg = metrics->AddCounterCallback(
          StrCat("keel_postgres_router_", stat),
          StrCat("postgres::Router ", stat, " (see RouterStats)."), labels,
          [r, field = field] { return static_cast<double>(r->Stats().*field); });
      if (!reg.ok()) return reg.status();
      router->registrations_.push_back(std::move(*reg));
    }
  }
  return router;
}

Router::Router(RouterOptions options, std::unique_ptr<Pool> primary,
               std::vector<std::unique_ptr<Pool>> replicas, Clock& clock)
    : options_(std::move(options)), clock_(clock), primary_(std::move(primary)) {
  for (auto& pool : replicas) {
    auto r = std::make_unique<Replica>();
    r->pool = std::move(pool);
    replicas_.push_back(std::move(r));
  }
}

absl::StatusOr<RoutedLease> Router::Write(const Deadline& deadline) {
  writes_.fetch_add(1, std::memory_order_relaxed);
  absl::StatusOr<Lease> lease = primary_->Acquire(deadline);
  if (!lease.ok()) return lease.status();
  return RoutedLease{.pool = primary_.get(), .lease = std::move(*lease), .replica = -1};
}

absl::StatusOr<RoutedLease> Router::Read(const Deadline& deadline, Consistency consistency) {
  Attempts attempts;
  absl::StatusOr<Target> target = Choose(deadline, consistency, attempts);
  if (!target.ok()) return target.status();
  return RoutedLease{
      .pool = target->pool, .lease = std::move(target->lease), .replica = target->replica};
}

Deadline Router::ReplicaDeadline(const Deadline& deadline, const Pool& replica) const {
  const Deadline overall =
      deadline.IsInfinite() ? Deadline::After(replica.options().call_timeout) : deadline;
  const auto share = std::chrono::duration_cast<Duration>(
      std::chrono::duration<double, std::nano>(overall.Remaining().count()) *
      options_.replica_deadline_share);
  return Deadline::Min(overall, Deadline::After(share, overall.clock()));
}

void Router::MarkFailed(int index, bool timed_out) {
  Replica& r = *replicas_[index];
  replica_failures_.fetch_add(1, std::memory_order_relaxed);
  if (timed_out) replica_timeouts_.fetch_add(1, std::memory_order_relaxed);
  MutexLock lock(r.mu);
  r.failed_until = clock_.Now() + options_.failure_cooldown;
}

bool Router::Usable(Replica& r, bool* measure) {
  *measure = false;
  MutexLock lock(r.mu);
  const TimePoint now = clock_.Now();
  if (now < r.failed_until) return false;
  if (!options_.max_replay_lag) return true;
  const Duration bound = *options_.max_replay_lag;
  // Lag grows at most as fast as time: the last measurement plus its age bounds the lag now.
  const bool vouched =
      r.lag && r.lag_checked_at && *r.lag <= bound && now - *r.lag_checked_at <= bound - *r.lag;
  const bool due = !r.lag_checked_at || now - *r.lag_checked_at >= options_.lag_check_interval;
  if (vouched && !due) return true;
  if (!r.lag_check_in_flight) {
    r.lag_check_in_flight = true;  // this read measures; concurrent ones see it in flight
    *measure = true;
    return true;
  }
  if (vouched) return true;  // due, someone is measuring, and the last value still holds
  lag_skips_.fetch_add(1, std::memory_order_relaxed);
  return false;
}

bool Router::WithinBound(Replica& r) {
  MutexLock lock(r.mu);
  return r.lag && *r.lag <= *options_.max_replay_lag;
}

absl::Status Router::MeasureLag(int index, Lease& lease, const Deadline& deadline) {
  Replica& r = *replicas_[index];
  lag_checks_.fetch_add(1, std::memory_order_relaxed);
  // The primary's position first (given at most half the time, so a hung primary leaves the
  // replica's statement its share); then the replica's, compared with it.
  const Deadline half =
      Deadline::Min(deadline, Deadline::After(deadline.Remaining() / 2, deadline.clock()));
  absl::StatusOr<Rows> primary = primary_->Execute(half, kPrimaryPosition);
  std::optional<std::string> position;
  std::optional<double> primary_now;
  if (primary.ok() && primary->size() == 1) {
    position = std::string(primary->Text(0, 0));
    if (absl::StatusOr<double> t = primary->Get<double>(0, 1); t.ok()) primary_now = *t;
  }
  absl::StatusOr<Rows> replica = r.pool->Execute(deadline, lease, kReplicaPosition, position);
  std::optional<Duration> lag;
  if (replica.ok() && replica->size() == 1) {
    if (replica->Text(0, 0) == "t") {
      lag = Duration::zero();
    } else if (replica->IsNull(0, 1)) {
      lag = Duration::max();  // nothing replayed yet: no bound can be vouched for
    } else {
      const double replayed = replica->Get<double>(0, 1).value_or(0);
      const double now = primary_now ? *primary_now : replica->Get<double>(0, 2).value_or(0);
      lag = std::chrono::duration_cast<Duration>(
          std::chrono::duration<double>(std::max(0.0, now - replayed)));
    }
  }
  MutexLock lock(r.mu);
  r.lag_check_in_flight = false;
  if (!replica.ok()) return replica.status();
  r.lag = lag;
  r.lag_checked_at = clock_.Now();
  return absl::OkStatus();
}

absl::StatusOr<Router::Target> Router::FromPrimary(const Deadline& deadline, Attempts& attempts) {
  if (attempts.used++ > 0) read_retries_.fetch_add(1, std::memory_order_relaxed);
  primary_reads_.fetch_add(1, std::memory_order_relaxed);
  absl::StatusOr<Lease> lease = primary_->Acquire(deadline);
  if (!lease.ok()) return lease.status();
  return Target{.pool = primary_.get(), .lease = std::move(*lease), .deadline = deadline};
}

absl::StatusOr<Router::Target> Router::Choose(const Deadline& deadline, Consistency consistency,
                                              Attempts& attempts) {
  if (deadline.Expired()) {
    return absl::DeadlineExceededError(
        StrCat("postgres router \"", options_.name, "\": deadline expired before the read"));
  }
  if (consistency == Consistency::kReadYourWrites || replicas_.empty()) {
    return FromPrimary(deadline, attempts);
  }
  const size_t n = replicas_.size();
  // Relaxed: the counter only spreads load; no other memory depends on it.
  const size_t start = next_.fetch_add(1, std::memory_order_relaxed) % n;
  for (size_t i = 0; i < n; ++i) {
    const int index = static_cast<int>((start + i) % n);
    if (std::find(attempts.tried.begin(), attempts.tried.end(), index) != attempts.tried.end()) {
      continue;
    }
    Replica& r = *replicas_[index];
    bool measure = false;
    if (!Usable(r, &measure)) continue;
    attempts.tried.push_back(index);
    if (attempts.used++ > 0) read_retries_.fetch_add(1, std::memory_order_relaxed);
    const Deadline attempt = ReplicaDeadline(deadline, *r.pool);
    absl::StatusOr<Lease> lease = r.pool->Acquire(attempt);
    absl::Status failure = lease.status();
    if (lease.ok() && measure) failure = MeasureLag(index, *lease, attempt);
    if (!lease.ok() && measure) {
      MutexLock lock(r.mu);
      r.lag_check_in_flight = false;
    }
    if (!failure.ok()) {
      if (!IsNodeFailure(failure.code())) return failure;  // shut down, bad input: not the node
      MarkFailed(index, failure.code() == absl::StatusCode::kDeadlineExceeded);
      if (attempts.used >= options_.read_attempts || deadline.Expired()) return failure;
      continue;
    }
    if (measure && !WithinBound(r)) {  // measured: too far behind
      lag_skips_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    replica_reads_.fetch_add(1, std::memory_order_relaxed);
    return Target{
        .pool = r.pool.get(), .lease = std::move(*lease), .deadline = attempt, .replica = index};
  }
  fallbacks_.fetch_add(1, std::memory_order_relaxed);
  return FromPrimary(deadline, attempts);
}

bool Router::Retry(const Target& target, const absl::Status& status, const Deadline& deadline,
                   Attempts& attempts) {
  // A replica is a hot standby: it refuses writes, so a read cut during COMMIT (UNKNOWN) cannot
  // have changed anything and is a node failure like any other.
  if (target.replica < 0 ||
      !(IsNodeFailure(status.code()) || status.code() == absl::StatusCode::kUnknown)) {
    return false;
  }
  MarkFailed(target.replica, status.code() == absl::StatusCode::kDeadlineExceeded);
  return attempts.used < options_.read_attempts && !deadline.Expired();
}

RouterStats Router::Stats() const {
  auto get = [](const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); };
  return RouterStats{.replica_reads_total = get(replica_reads_),
                     .primary_reads_total = get(primary_reads_),
                     .fallbacks_total = get(fallbacks_),
                     .read_retries_total = get(read_retries_),
                     .replica_failures_total = get(replica_failures_),
                     .replica_timeouts_total = get(replica_timeouts_),
                     .lag_checks_total = get(lag_checks_),
                     .lag_skips_total = get(lag_skips_),
                     .writes_total = get(writes_)};
}

}  // namespace keel::postgres
