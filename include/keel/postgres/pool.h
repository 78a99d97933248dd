// keel/postgres/pool.h: a PostgreSQL connection pool whose every round trip ends by the caller's
// deadline, Run() (a libpqxx transaction, exceptions turned into absl::Status) and Execute() (one
// statement in one round trip, on libpq directly).
//
// Defines `keel::postgres::PoolOptions`, `keel::postgres::Pool` (a keel::Pool of
// keel::postgres::Connection, a libpqxx connection opened without blocking past the deadline),
// `keel::postgres::Lease` and `keel::postgres::RunResultT`.
//
// Thread safety: Pool is thread-safe. A Lease (and the Connection in it) is used by one thread at
// a time.
//
//   keel::MetricsRegistry metrics;
//   auto pool = keel::postgres::Pool::Create({
//       .conninfo = "postgresql://app@db:5432/diary",
//       .on_connect = [](pqxx::connection_base& c) {
//         c.prepare("get", "SELECT body FROM diary WHERE id = $1");
//         return absl::OkStatus();
//       },
//       .pool = {.name = "pg-primary", .max_size = 10}}, keel::SteadyClock(), &metrics).value();
//   keel::Deadline deadline = keel::Deadline::After(200ms);
//   absl::StatusOr<keel::postgres::Rows> one = pool->Execute(deadline, "SELECT $1::int", 1);
//   absl::StatusOr<std::string> body = pool->Run(deadline, [&](pqxx::work& tx) {
//     return tx.exec_prepared1("get", id)[0].as<std::string>();
//   });
//
// Deadlines are kept on the client: connecting polls libpq's socket until the deadline
// (PQconnectStart/PQconnectPoll); validation and Execute send with PQsendQueryParams and poll;
// Run's libpqxx statements are cut by the pool's watchdog, which shuts the socket down when the
// deadline passes. Either way the call returns DEADLINE_EXCEEDED within a few ms of its deadline,
// whatever the server does (paused, never answering), and the connection is discarded (its
// reply is still owed). The server-side statement_timeout, set once per connection, is a second
// line of defence.
//
// Errors from Run and Execute, with the server's message and SQLSTATE, starting with
// `postgres pool "<name>": `:
//   the deadline passed while waiting for the server     DEADLINE_EXCEEDED, connection discarded
//   broken connection, SQLSTATE class 08, 57P01-57P03  UNAVAILABLE, and the lease is invalidated
//   57014 query_canceled (statement timeout)            DEADLINE_EXCEEDED
//   23505 unique_violation                              ALREADY_EXISTS
//   40001 serialization_failure, 40P01 deadlock, 40xxx  ABORTED (retryable)
//   25006 read_only_sql_transaction (a write on a replica)  FAILED_PRECONDITION
//   42501 insufficient_privilege                        PERMISSION_DENIED
//   classes 22 (data), 23 (integrity), 42 (syntax, undefined table/column), libpqxx argument,
//   conversion and range errors (e.g. exec1 got no row), a NUL byte in Execute's SQL or text
//   parameters                                          INVALID_ARGUMENT
//   commit outcome unknown (in_doubt_error, 40003, or the deadline passed during COMMIT)
//                                                       UNKNOWN: neither retry blindly nor assume
//                                                       it failed; the lease is invalidated
//   anything else (including exceptions the callback throws)  INTERNAL
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/async/future.h"
#include "keel/async/io_loop.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/internal/status_of.h"
#include "keel/metrics.h"
#include "keel/pool/pool.h"
#include "keel/postgres/connection.h"
#include "keel/postgres/internal/watchdog.h"
#include "keel/postgres/transaction.h"
#include "keel/sync.h"

namespace keel::postgres {

using Lease = keel::Lease<Connection>;

struct PoolOptions {
  // A libpq connection string, as a URL (`postgresql://user:pw@host:5432/db?sslmode=disable`) or
  // as key=value pairs (`host=db port=5432 dbname=app`). Connecting is bounded by the deadline
  // of whoever connects (a caller's Acquire, or the maintainer's pool.acquire_timeout), so
  // connect_timeout is not needed. Host names are resolved by libpq without a timeout (see
  // docs/postgres.md): give an address (`hostaddr=`) or rely on a local resolver. Required.
  std::string conninfo = {};

  // Runs once on every new connection, before it is pooled: prepare statements, SET
  // application_name, search_path, ... Bounded by the connect deadline like a Run. An error or
  // exception discards the connection (the creation fails with UNAVAILABLE carrying its
  // message). Optional.
  std::function<absl::Status(pqxx::connection_base&)> on_connect = nullptr;

  // The query that validates a connection idle longer than pool.validation_bypass, and keepalives;
  // one round trip, bounded by pool.validation_timeout. Default: "SELECT 1". An empty string turns
  // validation off.
  std::string validation_query = "SELECT 1";

  // What a Run or Execute given Deadline::Infinite() is bounded by (keel never waits forever on a
  // server). Default: 30 s. Callers normally pass their own tighter deadline.
  Duration call_timeout = std::chrono::seconds(30);

  // The server-side statement_timeout, set once on every new connection (in the same round trip
  // as client_connection_check_interval): a second line of defence that frees the server from a
  // statement whose caller gave up. Set it at or above the longest deadline callers use.
  // std::nullopt leaves the server's setting alone. Default: 30 s.
  std::optional<Duration> statement_timeout = std::chrono::seconds(30);

  // PostgreSQL 14+'s client_connection_check_interval, set on every new connection: how often a
  // backend running a long statement checks that its client is still there, so a statement whose
  // connection keel discarded at the deadline is abandoned by the server too. std::nullopt leaves
  // it alone (required for servers before 14). Default: 1 s.
  std::optional<Duration> client_connection_check_interval = std::chrono::seconds(1);

  // How long Shutdown() lets calls in flight (Run, Execute) finish before cutting their
  // connections. Connects and validations in flight are abandoned at once. Default: 1 s.
  Duration shutdown_timeout = std::chrono::seconds(1);

  // The async calls (AsyncExecute, AsyncPipeline) run on connections of their own, opened on
  // first use (with the session settings and on_connect above), each carrying many callers'
  // statements back to back in libpq pipeline mode, driven by an I/O loop: the pool's own
  // thread, or `io_loop` shared with other clients.
  struct Async {
    // Connections the async calls share. One is usually enough: a pipelined connection keeps
    // the server's backend busy without waiting for round trips. Default: 1.
    int connections = 1;
    // Async calls queued or waiting for results, over all those connections; one more is refused
    // with RESOURCE_EXHAUSTED (with a retry-after hint). Default: 1024.
    int max_in_flight = 1024;
    // How long a connection may keep owing the results of calls that timed out (read and dropped
    // when they come, so a paused server costs no reconnect) before it is closed. Default: 10 s.
    Duration late_timeout = std::chrono::seconds(10);
    // The I/O loop the async calls run on (keel/async/io_loop.h), for instance one shared with
    // Redis clients (redis::Options::io_loop) so both run on one thread; completions and
    // coroutines resumed by the async calls then run there too. The pool keeps it alive and, on
    // Shutdown, fences its callbacks off it without stopping it. If the loop is stopped under the
    // pool, async calls fail naming the loop. Default: none (the pool starts a loop of its own on
    // the first async call, stopped by Shutdown).
    std::shared_ptr<IoLoop> io_loop;
  };
  Async async = {};

  // The generic pool's options (size, timeouts, lifetime, leak detection). `pool.name` names this
  // pool in errors and in the `name` label of metrics: name primary and replica pools apart.
  // Default: {.name = "postgres"}; a `.pool = {...}` written without `.name` gets
  // keel::PoolOptions' "pool".
  keel::PoolOptions pool = {.name = "postgres"};
};

// Result type of Run: absl::Status for callbacks returning void or absl::Status, absl::StatusOr<U>
// for those returning U or absl::StatusOr<U>.
template <typename R>
struct RunResult {
  using type = absl::StatusOr<R>;
};
template <>
struct RunResult<void> {
  using type = absl::Status;
};
template <>
struct RunResult<absl::Status> {
  using type = absl::Status;
};
template <typename U>
struct RunResult<absl::StatusOr<U>> {
  using type = absl::StatusOr<U>;
};
template <typename Fn>
using RunResultT = typename RunResult<std::decay_t<std::invoke_result_t<Fn&, pqxx::work&>>>::type;
// Result type of Transact, by the same rules.
template <typename Fn>
using TransactResultT =
    typename RunResult<std::decay_t<std::invoke_result_t<Fn&, Transaction&>>>::type;

// The async engine's counters (Pool::AsyncStats).
struct AsyncStats {
  uint64_t submitted_total = 0;
  uint64_t completed_total = 0;
  uint64_t timed_out_total = 0;             // completed DEADLINE_EXCEEDED
  uint64_t late_results_dropped_total = 0;  // results of timed-out calls read and dropped
  uint64_t rejected_full_total = 0;         // RESOURCE_EXHAUSTED: max_in_flight reached
  uint64_t connects_total = 0;
  uint64_t connect_failures_total = 0;
  uint64_t in_flight = 0;  // queued or sent, not completed
};

namespace internal {
class AsyncEngine;
// The Status for the exception being handled (call only inside a catch block); sets `*broken`
// when the connection can no longer be used. `component` prefixes the message.
absl::Status StatusFromCurrentException(std::string_view component, bool* broken);
absl::Status ExpiredError(std::string_view component);
// What is left of `d`, rounded up to a millisecond: how a cut call's message states its budget.
inline Duration RoundedBudget(const Deadline& d) {
  return std::chrono::ceil<std::chrono::milliseconds>(d.Remaining());
}
absl::Status EmptyLeaseError(std::string_view component);
// After a Run: DEADLINE_EXCEEDED (UNKNOWN when COMMIT was cut) in place of `status` when the
// watchdog cut the call, with `*broken` set; OK to keep the call's own result.
absl::Status Settle(Watch& watch, std::string_view component, Duration budget,
                    const absl::Status& status, bool* broken);

// `fn` in one libpqxx transaction, committed unless it returned a non-OK status.
template <typename Fn>
RunResultT<Fn> RunTransaction(Connection& conn, Fn& fn, std::string_view component, bool* broken) {
  using R = std::decay_t<std::invoke_result_t<Fn&, pqxx::work&>>;
  try {
    pqxx::work tx(conn);
    if constexpr (std::is_void_v<R>) {
      fn(tx);
      tx.commit();
      return absl::OkStatus();
    } else {
      R result = fn(tx);
      if constexpr (std::is_same_v<R, absl::Status>) {
        if (!result.ok()) return result;                         // ~work rolls back
      } else if constexpr (std::is_same_v<RunResultT<Fn>, R>) {  // absl::StatusOr<U>
        if (!result.ok()) return result;
      }
      tx.commit();
      return result;
    }
  } catch (...) {
    absl::Status status = StatusFromCurrentException(component, broken);
    if (!*broken && !conn.is_open()) {  // whatever the exception said, the session is gone
      *broken = true;
      status = absl::UnavailableError(status.message());
    }
    return status;
  }
}
}  // namespace internal

class Pool {
 public:
  // Validates the options (INVALID_ARGUMENT naming the field) and creates the pool; no connection
  // is made here (see keel::Pool::Create). With `metrics`, the generic pool's series are
  // registered with name=<pool.name> (see docs/pool.md). `clock` and `metrics` must outlive the
  // Pool.
  static absl::StatusOr<std::unique_ptr<Pool>> Create(PoolOptions options,
                                                      Clock& clock = SteadyClock(),
                                                      MetricsRegistry* metrics = nullptr);
  ~Pool();  // Shutdown()
  Pool(const Pool&) = delete;
  Pool& operator=(const Pool&) = delete;

  // Leases a connection, connecting when needed, by `deadline` (Infinite(): pool.acquire_timeout).
  // Errors as keel::Pool::Acquire, starting with `postgres pool "<name>": `.
  absl::StatusOr<Lease> Acquire(const Deadline& deadline = Deadline::Infinite());

  // Acquire, then Run on the lease, all by `deadline` (Infinite(): call_timeout).
  template <typename Fn>
  RunResultT<Fn> Run(const Deadline& deadline, Fn&& fn) {
    const Deadline bounded = Bound(deadline);
    absl::StatusOr<Lease> lease = Acquire(bounded);
    if (!lease.ok()) return lease.status();
    return Run(bounded, *lease, fn);
  }

  // Runs `fn(pqxx::work&)` in one transaction on the leased connection and commits it, all by
  // `deadline` (Infinite(): call_timeout): the watchdog cuts the connection when it passes
  // (DEADLINE_EXCEEDED; UNKNOWN if that happened during COMMIT). `fn` may return void, a value,
  // absl::Status or absl::StatusOr: a non-OK status from `fn` rolls the transaction back and is
  // returned as is. Every exception is caught and mapped (see the banner); when the connection
  // broke, `lease` is invalidated and becomes empty. Costs k + 2 round trips for k statements
  // (libpqxx sends BEGIN and COMMIT on their own): Transact costs k + 1, Execute one.
  // REQUIRES: `lease` came from this pool and has no transaction open.
  template <typename Fn>
  RunResultT<Fn> Run(const Deadline& deadline, Lease& lease, Fn&& fn) {
    if (!lease) return internal::EmptyLeaseError(component_);
    const Deadline bounded = Bound(deadline);
    if (bounded.Expired()) return internal::ExpiredError(component_);
    bool broken = false;
    const Duration budget = internal::RoundedBudget(bounded);
    internal::Watch watch(*watchdog_, lease->sock(), bounded);
    RunResultT<Fn> result = internal::RunTransaction(*lease, fn, component_, &broken);
    absl::Status cut =
        internal::Settle(watch, component_, budget, keel::internal::StatusOf(result), &broken);
    if (broken) lease.Invalidate();
    if (!cut.ok()) return cut;
    return result;
  }

  // Runs `fn(keel::postgres::Transaction&)` in one transaction and commits it, in k + 1 round
  // trips for k statements (see keel/postgres/transaction.h), all by `deadline` (Infinite():
  // call_timeout), acquiring a connection first. `fn` may return what Run's may; a non-OK status
  // from `fn`, an exception (INTERNAL) or a failed statement rolls the transaction back.
  // Errors: as Run: a statement's error (the banner's table), UNKNOWN when COMMIT's reply was
  // lost, ABORTED when the server rolled back at COMMIT (40001 and the like: retryable);
  // DEADLINE_EXCEEDED when the deadline cut the transaction before COMMIT was sent (the
  // connection is discarded, so the server rolls it back).
  template <typename Fn>
  TransactResultT<Fn> Transact(const Deadline& deadline, Fn&& fn) {
    return Transact(deadline, TransactionOptions{}, fn);
  }
  template <typename Fn>
  TransactResultT<Fn> Transact(const Deadline& deadline, const TransactionOptions& options,
                               Fn&& fn) {
    const Deadline bounded = Bound(deadline);
    absl::StatusOr<Lease> lease = Acquire(bounded);
    if (!lease.ok()) return lease.status();
    return Transact(bounded, *lease, options, fn);
  }
  // Transact on a connection the caller holds; when the connection broke, `lease` is
  // invalidated. REQUIRES: `lease` came from this pool and has no transaction open.
  template <typename Fn>
  TransactResultT<Fn> Transact(const Deadline& deadline, Lease& lease, Fn&& fn) {
    return Transact(deadline, lease, TransactionOptions{}, fn);
  }
  template <typename Fn>
  TransactResultT<Fn> Transact(const Deadline& deadline, Lease& lease,
                               const TransactionOptions& options, Fn&& fn) {
    using R = std::decay_t<std::invoke_result_t<Fn&, Transaction&>>;
    if (!lease) return internal::EmptyLeaseError(component_);
    const Deadline bounded = Bound(deadline);
    if (bounded.Expired()) return internal::ExpiredError(component_);
    const Duration budget = internal::RoundedBudget(bounded);
    // The watch only matters at Shutdown (its cap); every wait ends by the deadline itself.
    internal::Watch watch(*watchdog_, lease->sock(), bounded);
    Transaction tx(lease->raw(), component_, bounded, options);
    std::optional<TransactResultT<Fn>> result;
    try {
      if constexpr (std::is_void_v<R>) {
        fn(tx);
        result.emplace(absl::OkStatus());
      } else {
        result.emplace(fn(tx));
      }
    } catch (...) {
      bool ignored = false;
      result.emplace(internal::StatusFromCurrentException(component_, &ignored));
    }
    absl::Status end = tx.Finish(keel::internal::StatusOf(*result).ok());
    bool broken = tx.broken();
    absl::Status cut = internal::Settle(
        watch, component_, budget, end.ok() ? keel::internal::StatusOf(*result) : end, &broken);
    if (broken) lease.Invalidate();
    if (!cut.ok()) return cut;
    if (!end.ok()) return end;
    return *std::move(result);
  }

  // Runs one statement in autocommit, in one round trip (PQsendQueryParams on libpq, bounded by
  // polling the socket until `deadline`; Infinite(): call_timeout), and returns its rows.
  // `params` bind $1, $2, ...: strings (text), arithmetic values (their text form),
  // std::optional / std::nullopt / nullptr (NULL) and Bytes (bytea, binary). Errors as Run;
  // INVALID_ARGUMENT, before anything is sent, when `sql` or a text parameter contains a NUL byte
  // (libpq would cut it there).
  template <typename... Params>
  absl::StatusOr<Rows> Execute(const Deadline& deadline, std::string_view sql,
                               const Params&... params) {
    std::vector<internal::Param> bound;
    bound.reserve(sizeof...(Params));
    (internal::AddParam(bound, params), ...);
    return ExecuteParams(deadline, nullptr, sql, bound);
  }
  // Execute on a connection the caller holds. REQUIRES: `lease` came from this pool and has no
  // transaction open.
  template <typename... Params>
  absl::StatusOr<Rows> Execute(const Deadline& deadline, Lease& lease, std::string_view sql,
                               const Params&... params) {
    std::vector<internal::Param> bound;
    bound.reserve(sizeof...(Params));
    (internal::AddParam(bound, params), ...);
    return ExecuteParams(deadline, &lease, sql, bound);
  }

  // Runs one statement without a thread waiting for it: returns at once, and the future completes
  // on the pool's I/O loop thread (never block in a callback or coroutine resumed there: see
  // keel/async/future.h). The statement runs in autocommit on one of the async connections
  // (options.async), pipelined behind other callers' statements. By `deadline` (Infinite():
  // call_timeout) the future completes with DEADLINE_EXCEEDED and the late result is dropped
  // when it comes, the connection kept. Errors as Execute, plus RESOURCE_EXHAUSTED (too many
  // async calls in flight), UNAVAILABLE (the connection failed or cannot be opened: the
  // statement may have run), CANCELLED (Shutdown). Parameters are copied.
  template <typename... Params>
  Future<Rows> AsyncExecute(const Deadline& deadline, std::string_view sql,
                            const Params&... params) {
    std::vector<Statement> one;
    one.emplace_back(std::string(sql), params...);
    return AsyncOne(deadline, std::move(one));
  }
  // Sends `statements` as one batch in one round trip (pipeline mode, one Sync) and completes
  // with one result per statement, in order. Each runs in autocommit unless the batch holds its
  // own BEGIN ... COMMIT; after a failed statement the server skips the rest of the batch (their
  // entries are ABORTED). The outer status fails as AsyncExecute's does.
  Future<std::vector<absl::StatusOr<Rows>>> AsyncPipeline(const Deadline& deadline,
                                                          std::vector<Statement> statements);
  // The async engine's counters (zero until the first async call).
  AsyncStats GetAsyncStats() const;

  PoolStats Stats() const { return pool_->Stats(); }
  void RunMaintenance() { pool_->RunMaintenance(); }
  // Abandons connects and validations in flight at once, gives calls in flight until
  // shutdown_timeout before cutting their connections, then shuts the generic pool down (waiters
  // get CANCELLED, later Acquires FAILED_PRECONDITION). Returns within a few ms whatever the
  // server does. Idempotent.
  void Shutdown();
  const std::string& name() const { return options_.pool.name; }
  // `postgres pool "<name>"`: how errors from this pool start.
  const std::string& component() const { return component_; }
  const PoolOptions& options() const { return options_; }
  // The generic pool underneath (TryAcquire, options).
  keel::Pool<Connection>& pool() { return *pool_; }

 private:
  Pool(PoolOptions options, std::unique_ptr<internal::Watchdog> watchdog);
  Deadline Bound(const Deadline& d) const {
    return d.IsInfinite() ? Deadline::After(options_.call_timeout) : d;
  }
  absl::StatusOr<Rows> ExecuteParams(const Deadline& deadline, Lease* lease, std::string_view sql,
                                     const std::vector<internal::Param>& params);
  Future<Rows> AsyncOne(const Deadline& deadline, std::vector<Statement> one);
  internal::AsyncEngine* Engine();

  PoolOptions options_;
  std::string component_;  // `postgres pool "<name>"`
  std::unique_ptr<internal::Watchdog> watchdog_;
  std::unique_ptr<keel::Pool<Connection>> pool_;
  mutable Mutex engine_mu_;
  std::unique_ptr<internal::AsyncEngine> engine_ ABSL_GUARDED_BY(engine_mu_);
  bool shut_down_ ABSL_GUARDED_BY(engine_mu_) = false;
};

namespace internal {
// Opens a connection by `deadline` (CANCELLED once `abort_fd` is readable), sets the session
// timeouts of `options` and runs its on_connect under `watchdog`. UNAVAILABLE on failure, with
// libpq's redacted message; DEADLINE_EXCEEDED when the deadline passed.
absl::StatusOr<std::unique_ptr<Connection>> Connect(const PoolOptions& options,
                                                    const Deadline& deadline, Watchdog& watchdog);
}  // namespace internal

}  // namespace keel::postgres
