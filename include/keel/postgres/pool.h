// keel/postgres/pool.h: a PostgreSQL connection pool over libpqxx, and Run(), which turns
// libpqxx's exceptions into absl::Status and a Deadline into the statement timeout.
//
// Defines `keel::postgres::PoolOptions`, `keel::postgres::Pool` (a keel::Pool<pqxx::connection>
// with a libpq connection string, an on_connect hook and a cheap validation query),
// `keel::postgres::Lease` and the `keel::postgres::Run` helpers.
//
// Thread safety: Pool is thread-safe. A Lease (and the pqxx::connection in it) is used by one
// thread at a time.
//
//   auto pool = keel::postgres::Pool::Create({
//       .conninfo = "postgresql://app@db:5432/diary",
//       .on_connect = [](pqxx::connection& c) {
//         c.prepare("get", "SELECT body FROM diary WHERE id = $1");
//         return absl::OkStatus();
//       },
//       .pool = {.name = "pg-primary", .max_size = 10}}).value();
//   keel::Deadline deadline = keel::Deadline::After(200ms);
//   absl::StatusOr<std::string> body = pool->Run(deadline, [&](pqxx::work& tx) {
//     return tx.exec_prepared1("get", id)[0].as<std::string>();
//   });
//   // DEADLINE_EXCEEDED if the statement outlived the deadline (the server cancelled it),
//   // UNAVAILABLE if the connection broke (it is discarded), ALREADY_EXISTS on a duplicate key,
//   // ABORTED on a serialization failure or deadlock (retry the transaction), ...
//
// Errors from Run, always with the server's message and SQLSTATE:
//   broken connection, SQLSTATE class 08, 57P01-57P03  UNAVAILABLE, and the lease is invalidated
//   57014 query_canceled (statement timeout)            DEADLINE_EXCEEDED
//   23505 unique_violation                              ALREADY_EXISTS
//   40001 serialization_failure, 40P01 deadlock, 40xxx  ABORTED (retryable)
//   25006 read_only_sql_transaction (a write on a replica)  FAILED_PRECONDITION
//   42501 insufficient_privilege                        PERMISSION_DENIED
//   classes 22 (data), 23 (integrity), 42 (syntax, undefined table/column), libpqxx argument,
//   conversion and range errors (e.g. exec1 got no row)  INVALID_ARGUMENT
//   commit outcome unknown (in_doubt_error, 40003)      UNKNOWN: neither retry blindly nor assume
//                                                       it failed; the lease is invalidated
//   anything else (including exceptions the callback throws)  INTERNAL
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/clock.h"
#include "keel/deadline.h"
#include "keel/metrics.h"
#include "keel/pool/pool.h"

namespace keel::postgres {

using Lease = keel::Lease<pqxx::connection>;

struct PoolOptions {
  // A libpq connection string, as a URL (`postgresql://user:pw@host:5432/db?sslmode=disable`) or
  // as key=value pairs (`host=db port=5432 dbname=app`). connect_timeout is added by the pool from
  // each creation's deadline; do not set it here. Required.
  std::string conninfo = {};

  // Runs once on every new connection, before it is pooled: prepare statements, SET
  // application_name, search_path, ... An error or exception discards the connection (the
  // creation fails with UNAVAILABLE carrying its message). Optional.
  std::function<absl::Status(pqxx::connection&)> on_connect = nullptr;

  // The query that validates a connection idle longer than pool.validation_bypass, and keepalives.
  // Default: "SELECT 1". An empty string turns validation off.
  std::string validation_query = "SELECT 1";

  // The generic pool's options (size, timeouts, lifetime, leak detection). `pool.name` names this
  // pool in errors and metrics: name primary and replica pools apart. Default: {.name =
  // "postgres"}; a `.pool = {...}` written without `.name` gets keel::PoolOptions' "pool".
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

namespace internal {
// The Status for the exception being handled (call only inside a catch block); sets `*broken`
// when the connection can no longer be used. `component` prefixes the message.
absl::Status StatusFromCurrentException(std::string_view component, bool* broken);
// `SET LOCAL statement_timeout = <ms>` for what is left of `deadline` (rounded up, at least 1).
std::string StatementTimeoutSql(const Deadline& deadline);
absl::Status ExpiredError(std::string_view component);
absl::Status EmptyLeaseError(std::string_view component);
}  // namespace internal

// Runs `fn(pqxx::work&)` in one transaction on the leased connection and commits it. The
// transaction's statement_timeout is what is left of `deadline`, so the server cancels work that
// outlives it (DEADLINE_EXCEEDED); an infinite deadline leaves the session's setting alone. `fn`
// may return void, a value, absl::Status or absl::StatusOr: a non-OK status from `fn` rolls the
// transaction back and is returned as is. Every exception is caught and mapped (see the banner);
// when the connection broke, `lease` is invalidated and becomes empty.
// REQUIRES: `lease` holds a connection with no transaction open on it.
// `component` names the caller in error messages (the pool name by default via Pool::Run).
template <typename Fn>
RunResultT<Fn> Run(Lease& lease, const Deadline& deadline, Fn&& fn,
                   std::string_view component = "postgres") {
  using R = std::decay_t<std::invoke_result_t<Fn&, pqxx::work&>>;
  if (!lease) return internal::EmptyLeaseError(component);
  if (deadline.Expired()) return internal::ExpiredError(component);
  try {
    pqxx::work tx(*lease);
    if (!deadline.IsInfinite()) tx.exec(internal::StatementTimeoutSql(deadline));
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
    bool broken = false;
    absl::Status status = internal::StatusFromCurrentException(component, &broken);
    if (!broken && !lease->is_open()) {  // whatever the exception said, the session is gone
      broken = true;
      status = absl::UnavailableError(status.message());
    }
    if (broken) lease.Invalidate();
    return status;
  }
}

class Pool {
 public:
  // Validates the options (INVALID_ARGUMENT naming the field) and creates the pool; no connection
  // is made here (see keel::Pool::Create). `clock` and `metrics` must outlive the Pool.
  static absl::StatusOr<std::unique_ptr<Pool>> Create(PoolOptions options,
                                                      Clock& clock = SteadyClock(),
                                                      MetricsRegistry* metrics = nullptr);

  // Leases a connection; errors as keel::Pool::Acquire.
  absl::StatusOr<Lease> Acquire(Deadline deadline = Deadline::Infinite()) {
    return pool_->Acquire(deadline);
  }

  // Acquire, then keel::postgres::Run with this pool's name in error messages. The deadline
  // bounds both the wait for a connection and the statement timeout.
  template <typename Fn>
  RunResultT<Fn> Run(const Deadline& deadline, Fn&& fn) {
    absl::StatusOr<Lease> lease = Acquire(deadline);
    if (!lease.ok()) return lease.status();
    return postgres::Run(*lease, deadline, std::forward<Fn>(fn), component_);
  }

  PoolStats Stats() const { return pool_->Stats(); }
  void RunMaintenance() { pool_->RunMaintenance(); }
  void Shutdown() { pool_->Shutdown(); }
  const std::string& name() const { return options_.pool.name; }
  // `postgres "<name>"`: how errors from this pool start.
  const std::string& component() const { return component_; }
  // The generic pool underneath (TryAcquire, options).
  keel::Pool<pqxx::connection>& pool() { return *pool_; }

 private:
  Pool(PoolOptions options, std::unique_ptr<keel::Pool<pqxx::connection>> pool);

  PoolOptions options_;
  std::string component_;  // `postgres "<name>"`
  std::unique_ptr<keel::Pool<pqxx::connection>> pool_;
};

namespace internal {
// Opens a connection with connect_timeout taken from `deadline` (whole seconds, at least 2:
// libpq's granularity), then runs `on_connect`. UNAVAILABLE on failure, with libpq's message.
absl::StatusOr<std::unique_ptr<pqxx::connection>> Connect(
    const std::string& conninfo, const Deadline& deadline,
    const std::function<absl::Status(pqxx::connection&)>& on_connect);
// `conninfo` with connect_timeout=`seconds` added (URL or key=value form).
std::string WithConnectTimeout(const std::string& conninfo, int seconds);
}  // namespace internal

}  // namespace keel::postgres
