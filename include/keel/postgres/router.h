// keel/postgres/router.h: routes reads to healthy streaming replicas and writes to the primary.
//
// Defines `keel::postgres::Consistency`, `keel::postgres::RouterOptions`,
// `keel::postgres::RouterStats` and `keel::postgres::Router`, which owns one primary Pool and zero
// or more replica Pools. Reads go round robin over the replicas, skipping one that failed within
// `failure_cooldown` and, with `max_replay_lag`, one that lags further behind; when none
// qualifies they fall back to the primary. Read-your-writes reads always go to the primary.
//
// Thread safety: Router is thread-safe.
//
//   auto router = keel::postgres::Router::Create(
//       {.name = "diary-db", .max_replay_lag = 5s},
//       keel::postgres::Pool::Create({.conninfo = primary_url, .pool = {.name =
//       "pg-primary"}}).value(), MakeReplicaPools()).value();
//   absl::Status w = router->RunWrite(deadline, [&](pqxx::work& tx) { tx.exec("INSERT ..."); });
//   absl::StatusOr<int> n = router->RunRead(deadline, keel::postgres::Consistency::kEventual,
//       [](pqxx::work& tx) { return tx.exec1("SELECT count(*) FROM diary")[0].as<int>(); });
//
// Failure detection: a replica is marked failed when leasing from it fails with UNAVAILABLE (it
// refused or dropped connections) and, through RunRead, when the read itself fails with
// UNAVAILABLE; RunRead then retries the read once elsewhere, so read callbacks must be safe to run
// twice (a read-only transaction is). Replay lag is measured on demand: the first read that finds
// a replica's measurement older than `lag_check_interval` runs one query on the lease it got
// (`now() - pg_last_xact_replay_timestamp()`, or 0 when everything received has been replayed).
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
#include "keel/postgres/pool.h"
#include "keel/sync.h"

namespace keel::postgres {

enum class Consistency {
  kEventual,        // a healthy replica (within max_replay_lag when set), else the primary
  kReadYourWrites,  // the primary: sees every write the caller committed
};

struct RouterOptions {
  // Names the router in errors. Default: "router".
  std::string name = "router";
  // A replica that failed is skipped this long before it is tried again. Default: 5 s.
  Duration failure_cooldown = std::chrono::seconds(5);
  // When set, replicas whose replay lag exceeds it are skipped. Default: no bound.
  std::optional<Duration> max_replay_lag = std::nullopt;
  // How old a replica's lag measurement may be before a read measures it again. Default: 1 s.
  Duration lag_check_interval = std::chrono::seconds(1);
};

struct RouterStats {
  uint64_t replica_reads_total = 0;  // reads served by a replica
  uint64_t primary_reads_total = 0;  // reads served by the primary (asked for, or fallback)
  uint64_t fallbacks_total = 0;      // eventual reads that found no healthy replica
  uint64_t replica_failures_total = 0;
  uint64_t writes_total = 0;
};

class Router {
 public:
  // Errors: INVALID_ARGUMENT for a missing primary, a null replica or bad durations.
  static absl::StatusOr<std::unique_ptr<Router>> Create(RouterOptions options,
                                                        std::unique_ptr<Pool> primary,
                                                        std::vector<std::unique_ptr<Pool>> replicas,
                                                        Clock& clock = SteadyClock());

  // A primary connection. Errors as Pool::Acquire.
  absl::StatusOr<Lease> Write(Deadline deadline);
  // A connection for reading (see the banner for the choice). Errors as Pool::Acquire on the
  // primary when every replica was skipped or failed.
  absl::StatusOr<Lease> Read(Deadline deadline, Consistency consistency = Consistency::kEventual);

  // Run() on a Write() lease.
  template <typename Fn>
  RunResultT<Fn> RunWrite(Deadline deadline, Fn&& fn) {
    absl::StatusOr<Lease> lease = Write(deadline);
    if (!lease.ok()) return lease.status();
    return primary_->Run(deadline, *lease, fn);
  }

  // Run() on a Read() lease; when a replica fails the read with UNAVAILABLE it is marked failed
  // and the read runs once more on the next choice. `fn` may therefore run twice.
  template <typename Fn>
  RunResultT<Fn> RunRead(Deadline deadline, Consistency consistency, Fn&& fn) {
    for (int attempt = 0;; ++attempt) {
      int replica = -1;
      absl::StatusOr<Lease> lease = ReadFrom(deadline, consistency, &replica);
      if (!lease.ok()) return lease.status();
      Pool& pool = replica < 0 ? *primary_ : *replicas_[replica]->pool;
      RunResultT<Fn> result = pool.Run(deadline, *lease, fn);
      if (replica >= 0 &&
          keel::internal::StatusOf(result).code() == absl::StatusCode::kUnavailable) {
        MarkFailed(replica);
        if (attempt == 0) continue;
      }
      return result;
    }
  }

  RouterStats Stats() const;
  Pool& primary() { return *primary_; }
  size_t replica_count() const { return replicas_.size(); }
  Pool& replica(size_t i) { return *replicas_[i]->pool; }

 private:
  struct Replica {
    std::unique_ptr<Pool> pool;
    TimePoint failed_until ABSL_GUARDED_BY(mu) = TimePoint::min();
    std::optional<Duration> lag ABSL_GUARDED_BY(mu);
    std::optional<TimePoint> lag_checked_at ABSL_GUARDED_BY(mu);
    bool lag_check_in_flight ABSL_GUARDED_BY(mu) = false;
    mutable Mutex mu;
  };

  Router(RouterOptions options, std::unique_ptr<Pool> primary,
         std::vector<std::unique_ptr<Pool>> replicas, Clock& clock);
  absl::StatusOr<Lease> ReadFrom(Deadline deadline, Consistency consistency, int* replica);
  absl::StatusOr<Lease> FromPrimary(Deadline deadline);
  void MarkFailed(int replica);

  const RouterOptions options_;
  Clock& clock_;
  std::unique_ptr<Pool> primary_;
  std::vector<std::unique_ptr<Replica>> replicas_;
  std::atomic<uint64_t> next_{0};
  std::atomic<uint64_t> replica_reads_{0};
  std::atomic<uint64_t> primary_reads_{0};
  std::atomic<uint64_t> fallbacks_{0};
  std::atomic<uint64_t> replica_failures_{0};
  std::atomic<uint64_t> writes_{0};
};

}  // namespace keel::postgres
