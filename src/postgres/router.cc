// postgres::Router: reads to healthy replicas (round robin, cooldown after failures, optional
// replay-lag bound), writes and read-your-writes to the primary.
#include "keel/postgres/router.h"

#include <utility>

#include "keel/internal/strings.h"

namespace keel::postgres {
namespace {

// 0 when everything received has been replayed (an idle primary must not look like lag), else
// the age of the last replayed transaction. NULL-safe on a server that is not in recovery.
constexpr char kLagQuery[] =
    "SELECT CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END";

}  // namespace

absl::StatusOr<std::unique_ptr<Router>> Router::Create(RouterOptions options,
                                                       std::unique_ptr<Pool> primary,
                                                       std::vector<std::unique_ptr<Pool>> replicas,
                                                       Clock& clock) {
  using keel::internal::StrCat;
  if (primary == nullptr) {
    return absl::InvalidArgumentError(StrCat("router \"", options.name, "\": primary is required"));
  }
  for (const auto& r : replicas) {
    if (r == nullptr) {
      return absl::InvalidArgumentError(StrCat("router \"", options.name, "\": null replica"));
    }
  }
  if (options.failure_cooldown < Duration::zero()) {
    return absl::InvalidArgumentError("router.failure_cooldown must be >= 0");
  }
  if (options.lag_check_interval <= Duration::zero()) {
    return absl::InvalidArgumentError("router.lag_check_interval must be > 0");
  }
  if (options.max_replay_lag && *options.max_replay_lag < Duration::zero()) {
    return absl::InvalidArgumentError("router.max_replay_lag must be >= 0");
  }
  return std::unique_ptr<Router>(
      new Router(std::move(options), std::move(primary), std::move(replicas), clock));
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

absl::StatusOr<Lease> Router::Write(Deadline deadline) {
  writes_.fetch_add(1, std::memory_order_relaxed);
  return primary_->Acquire(deadline);
}

absl::StatusOr<Lease> Router::Read(Deadline deadline, Consistency consistency) {
  int replica = -1;
  return ReadFrom(deadline, consistency, &replica);
}

absl::StatusOr<Lease> Router::FromPrimary(Deadline deadline) {
  primary_reads_.fetch_add(1, std::memory_order_relaxed);
  return primary_->Acquire(deadline);
}

void Router::MarkFailed(int index) {
  Replica& r = *replicas_[index];
  replica_failures_.fetch_add(1, std::memory_order_relaxed);
  MutexLock lock(r.mu);
  r.failed_until = clock_.Now() + options_.failure_cooldown;
}

absl::StatusOr<Lease> Router::ReadFrom(Deadline deadline, Consistency consistency, int* replica) {
  *replica = -1;
  if (consistency == Consistency::kReadYourWrites || replicas_.empty()) {
    return FromPrimary(deadline);
  }
  const size_t n = replicas_.size();
  // Relaxed: the counter only spreads load; no other memory depends on it.
  const size_t start = next_.fetch_add(1, std::memory_order_relaxed) % n;
  for (size_t i = 0; i < n; ++i) {
    const size_t index = (start + i) % n;
    Replica& r = *replicas_[index];
    bool measure = false;
    {
      MutexLock lock(r.mu);
      const TimePoint now = clock_.Now();
      if (now < r.failed_until) continue;
      if (options_.max_replay_lag) {
        const bool stale =
            !r.lag_checked_at || now - *r.lag_checked_at >= options_.lag_check_interval;
        if (stale && !r.lag_check_in_flight) {
          measure = true;  // this read measures; concurrent ones use the last value
          r.lag_check_in_flight = true;
        } else if (r.lag && *r.lag > *options_.max_replay_lag) {
          continue;
        }
      }
    }
    absl::StatusOr<Lease> lease = r.pool->Acquire(deadline);
    if (!lease.ok()) {
      if (measure) {
        MutexLock lock(r.mu);
        r.lag_check_in_flight = false;
      }
      if (lease.status().code() == absl::StatusCode::kUnavailable) {
        MarkFailed(static_cast<int>(index));
        continue;
      }
      return lease.status();  // out of time or shut down: falling back would not help
    }
    if (measure) {
      absl::StatusOr<double> lag = r.pool->Run(
          deadline, *lease, [](pqxx::work& tx) { return tx.exec1(kLagQuery)[0].as<double>(); });
      {
        MutexLock lock(r.mu);
        r.lag_check_in_flight = false;
        if (lag.ok()) {
          r.lag = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(*lag));
          r.lag_checked_at = clock_.Now();
        }
      }
      if (!lag.ok()) {
        if (lag.status().code() == absl::StatusCode::kUnavailable) {
          MarkFailed(static_cast<int>(index));
          continue;
        }
        return lag.status();
      }
      if (*lag > std::chrono::duration<double>(*options_.max_replay_lag).count()) continue;
    }
    replica_reads_.fetch_add(1, std::memory_order_relaxed);
    *replica = static_cast<int>(index);
    return lease;
  }
  fallbacks_.fetch_add(1, std::memory_order_relaxed);
  return FromPrimary(deadline);
}

RouterStats Router::Stats() const {
  return RouterStats{.replica_reads_total = replica_reads_.load(std::memory_order_relaxed),
                     .primary_reads_total = primary_reads_.load(std::memory_order_relaxed),
                     .fallbacks_total = fallbacks_.load(std::memory_order_relaxed),
                     .replica_failures_total = replica_failures_.load(std::memory_order_relaxed),
                     .writes_total = writes_.load(std::memory_order_relaxed)};
}

}  // namespace keel::postgres
