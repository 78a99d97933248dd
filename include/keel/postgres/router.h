// keel/postgres/router.h: routes reads to healthy, current streaming replicas and writes to the
// primary.
//
// Defines `keel::postgres::Consistency`, `keel::postgres::RouterOptions`,
// `keel::postgres::RouterStats`, `keel::postgres::RoutedLease` and `keel::postgres::Router`, which
// owns one primary Pool and zero or more replica Pools.
//
// Thread safety: Router is thread-safe.
//
//   keel::MetricsRegistry metrics;
//   auto router = keel::postgres::Router::Create(
//       {.name = "diary-db", .max_replay_lag = 5s},
//       keel::postgres::Pool::Create({.conninfo = primary_url, .pool = {.name = "pg-primary"}})
//           .value(),
//       MakeReplicaPools(), keel::SteadyClock(), &metrics).value();
//   absl::Status w = router->RunWrite(deadline, [&](pqxx::work& tx) { tx.exec("INSERT ..."); });
//   absl::StatusOr<int> n = router->RunRead(deadline, keel::postgres::Consistency::kEventual,
//       [](pqxx::work& tx) { return tx.exec1("SELECT count(*) FROM diary")[0].as<int>(); });
//
// Choosing a node. Eventual reads go round robin over the replicas, skipping one that failed
// within `failure_cooldown` and, with `max_replay_lag`, one that may lag further behind; when none
// qualifies they go to the primary. Read-your-writes reads and writes go to the primary.
//
// Attempts. A read tries at most `read_attempts` nodes (default 2: a replica, then another
// replica or the primary). A replica attempt gets `replica_deadline_share` of what is left of the
// deadline (default half), so a hung replica leaves the rest for the next node. A replica that
// refuses, breaks (UNAVAILABLE) or times out (DEADLINE_EXCEEDED, or UNKNOWN when cut during
// COMMIT: a hot standby refuses writes, so nothing can have committed) is marked failed for
// `failure_cooldown`, and the read moves on within the same call. A read callback may therefore
// run more than once (a read-only transaction is safe to rerun). Inside a keel::Retry of N
// attempts, one request makes up to N x read_attempts node attempts: set read_attempts = 1 to
// leave every retry to the Retry (and its budget).
//
// Replay lag (only with max_replay_lag). The first read that finds a replica's measurement older
// than `lag_check_interval` measures it: one statement on the primary (its WAL position and
// clock) and one on the replica (has it replayed that position? the commit time of its last
// replayed transaction). A replica that has replayed the primary's position has no lag; otherwise
// its lag is the primary's clock minus that commit time (both from the primary's clock, so no
// clock skew enters). A replica cut off from its primary therefore ages as soon as the primary
// writes, even though its own received and replayed positions agree. While a measurement is in
// flight, other reads use the last one only while it plus the time since it was taken is within
// the bound (lag grows at most as fast as time), and skip the replica otherwise; a replica never
// measured is not read from until it is. So the bound holds from the first read. Caveat: a replica
// that is behind is charged from its last replayed commit, so after a quiet period on the primary
// its lag is over-estimated (it is skipped sooner, never later). If the primary cannot be asked,
// the replica's own clock stands in (then clock skew between the machines enters).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/internal/status_of.h"
#include "keel/metrics.h"
#include "keel/postgres/pool.h"
#include "keel/sync.h"

namespace keel::postgres {

enum class Consistency {
  kEventual,        // a healthy replica (within max_replay_lag when set), else the primary
  kReadYourWrites,  // the primary: sees every write the caller committed
};

struct RouterOptions {
  // Names the router in errors (`postgres router "<name>": ...`) and in the `name` label of its
  // metrics. Default: "router".
  std::string name = "router";
  // A replica that failed or timed out is skipped this long before it is tried again.
  // Default: 5 s.
  Duration failure_cooldown = std::chrono::seconds(5);
  // When set, replicas whose replay lag may exceed it are skipped (see the banner).
  // Default: no bound.
  std::optional<Duration> max_replay_lag = std::nullopt;
  // How old a replica's lag measurement may be before a read measures it again. Default: 1 s.
  Duration lag_check_interval = std::chrono::seconds(1);
  // The most nodes one read tries (>= 1). 1: no fallback inside the call (use keel::Retry).
  // Default: 2.
  int read_attempts = 2;
  // The share of what is left of the deadline that one replica attempt may use, in (0, 1].
  // Default: 0.5, which leaves half for the primary when a replica hangs.
  double replica_deadline_share = 0.5;
};

// Counters since Create.
struct RouterStats {
  uint64_t replica_reads_total = 0;     // reads sent to a replica
  uint64_t primary_reads_total = 0;     // reads sent to the primary (asked for, or fallback)
  uint64_t fallbacks_total = 0;         // eventual reads that found no usable replica
  uint64_t read_retries_total = 0;      // further node attempts within one read
  uint64_t replica_failures_total = 0;  // replicas marked failed (refused, broke or timed out)
  uint64_t replica_timeouts_total = 0;  // of which timed out
  uint64_t lag_checks_total = 0;        // replay lag measurements
  uint64_t lag_skips_total = 0;         // replicas skipped for lagging (or not yet measured)
  uint64_t writes_total = 0;
};

// A lease and the pool it came from: run on it with `pool->Run(deadline, lease, fn)`,
// `pool->Transact(deadline, lease, fn)` or `pool->Execute(deadline, lease, sql, ...)` so calls
// stay bounded.
struct RoutedLease {
  Pool* pool = nullptr;
  Lease lease;
  int replica = -1;  // the replica's index, -1 for the primary
};

class Router {
 public:
  // Errors: INVALID_ARGUMENT for a missing primary, a null replica or bad options (naming the
  // field); a metric registration error. `clock` (cooldowns, lag ages) and `metrics` must outlive
  // the Router. Registers, with `metrics`, the counters keel_postgres_router_<stat> for each
  // RouterStats field, labelled name=<name>.
  static absl::StatusOr<std::unique_ptr<Router>> Create(RouterOptions options,
                                                        std::unique_ptr<Pool> primary,
                                                        std::vector<std::unique_ptr<Pool>> replicas,
                                                        Clock& clock = SteadyClock(),
                                                        MetricsRegistry* metrics = nullptr);

  // A primary connection. Errors as Pool::Acquire.
  absl::StatusOr<RoutedLease> Write(const Deadline& deadline);
  // A connection for reading, chosen and bounded as for RunRead (a replica's lease is acquired
  // with its share of the deadline). Errors as Pool::Acquire on the last node tried.
  absl::StatusOr<RoutedLease> Read(const Deadline& deadline,
                                   Consistency consistency = Consistency::kEventual);

  // Pool::Run on the primary.
  template <typename Fn>
  RunResultT<Fn> RunWrite(const Deadline& deadline, Fn&& fn) {
    writes_.fetch_add(1, std::memory_order_relaxed);
    return primary_->Run(deadline, fn);
  }
  // Pool::Transact on the primary (k + 1 round trips for k statements).
  template <typename Fn>
  TransactResultT<Fn> TransactWrite(const Deadline& deadline, const TransactionOptions& options,
                                    Fn&& fn) {
    writes_.fetch_add(1, std::memory_order_relaxed);
    return primary_->Transact(deadline, options, fn);
  }
  template <typename Fn>
  TransactResultT<Fn> TransactWrite(const Deadline& deadline, Fn&& fn) {
    return TransactWrite(deadline, TransactionOptions{}, fn);
  }

  // Pool::Run on the node chosen for reading; see the banner for attempts and deadlines. `fn`
  // may run more than once (at most read_attempts times).
  template <typename Fn>
  RunResultT<Fn> RunRead(const Deadline& deadline, Consistency consistency, Fn&& fn) {
    Attempts attempts;
    for (;;) {
      absl::StatusOr<Target> target = Choose(deadline, consistency, attempts);
      if (!target.ok()) return target.status();
      RunResultT<Fn> result = target->pool->Run(target->deadline, target->lease, fn);
      if (!Retry(*target, keel::internal::StatusOf(result), deadline, attempts)) return result;
    }
  }

  RouterStats Stats() const;
  Pool& primary() { return *primary_; }
  size_t replica_count() const { return replicas_.size(); }
  Pool& replica(size_t i) { return *replicas_[i]->pool; }
  const std::string& name() const { return options_.name; }

 private:
  struct Replica {
    std::unique_ptr<Pool> pool;
    TimePoint failed_until ABSL_GUARDED_BY(mu) = TimePoint::min();
    std::optional<Duration> lag ABSL_GUARDED_BY(mu);
    std::optional<TimePoint> lag_checked_at ABSL_GUARDED_BY(mu);
    bool lag_check_in_flight ABSL_GUARDED_BY(mu) = false;
    mutable Mutex mu;
  };
  // What one read has used so far.
  struct Attempts {
    int used = 0;
    std::vector<int> tried;  // replicas
  };
  struct Target {
    Pool* pool = nullptr;
    Lease lease;
    Deadline deadline = Deadline::Infinite();
    int replica = -1;
  };

  Router(RouterOptions options, std::unique_ptr<Pool> primary,
         std::vector<std::unique_ptr<Pool>> replicas, Clock& clock);
  // The next node for a read and a lease on it, marking replicas that fail on the way.
  absl::StatusOr<Target> Choose(const Deadline& deadline, Consistency consistency,
                                Attempts& attempts);
  absl::StatusOr<Target> FromPrimary(const Deadline& deadline, Attempts& attempts);
  // After a read on `target` ended with `status`: whether to try another node.
  bool Retry(const Target& target, const absl::Status& status, const Deadline& deadline,
             Attempts& attempts);
  // Whether replica `r` may serve a read now; sets `*measure` when this read must measure it.
  bool Usable(Replica& r, bool* measure);
  // Whether the last measurement of `r` is within max_replay_lag.
  bool WithinBound(Replica& r);
  // Measures replica `index`'s replay lag on `lease` and records it.
  absl::Status MeasureLag(int index, Lease& lease, const Deadline& deadline);
  void MarkFailed(int replica, bool timed_out);
  Deadline ReplicaDeadline(const Deadline& deadline, const Pool& replica) const;

  const RouterOptions options_;
  Clock& clock_;
  std::unique_ptr<Pool> primary_;
  std::vector<std::unique_ptr<Replica>> replicas_;
  std::atomic<uint64_t> next_{0};
  std::atomic<uint64_t> replica_reads_{0};
  std::atomic<uint64_t> primary_reads_{0};
  std::atomic<uint64_t> fallbacks_{0};
  std::atomic<uint64_t> read_retries_{0};
  std::atomic<uint64_t> replica_failures_{0};
  std::atomic<uint64_t> replica_timeouts_{0};
  std::atomic<uint64_t> lag_checks_{0};
  std::atomic<uint64_t> lag_skips_{0};
  std::atomic<uint64_t> writes_{0};
  std::vector<MetricsRegistry::Registration> registrations_;
};

}  // namespace keel::postgres
