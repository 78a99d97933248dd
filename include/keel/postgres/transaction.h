// keel/postgres/transaction.h: a transaction of k statements in k + 1 round trips, on libpq
// directly, every round trip ending by the caller's deadline.
//
// Defines `keel::postgres::Transaction` (what Pool::Transact hands its callback),
// `keel::postgres::TransactionOptions` and `keel::postgres::IsolationLevel`.
//
// Round trips: BEGIN travels with the first statement (libpq pipeline mode: both in one write,
// one Sync), each later statement costs one round trip, and COMMIT one more. A callback that runs
// no statement costs none. libpqxx's pqxx::work (Pool::Run) sends BEGIN on its own: k + 2.
//
// Thread safety: a Transaction belongs to the thread running the callback, and lives only for
// the callback's duration.
//
//   absl::Status moved = pool->Transact(deadline, [&](keel::postgres::Transaction& tx) {
//     absl::StatusOr<keel::postgres::Rows> from = tx.Execute(
//         "UPDATE acct SET cents = cents - $1 WHERE id = $2 AND cents >= $1", n, a);
//     if (!from.ok()) return from.status();            // rolled back
//     if (from->affected_rows() != 1) return absl::FailedPreconditionError("insufficient funds");
//     return tx.Execute("UPDATE acct SET cents = cents + $1 WHERE id = $2", n, b).status();
//   });                                                 // committed when both succeeded
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/deadline.h"
#include "keel/postgres/connection.h"

namespace keel::postgres {

enum class IsolationLevel {
  kDefault,  // the session's default_transaction_isolation (PostgreSQL's default: read committed)
  kReadCommitted,
  kRepeatableRead,
  kSerializable,
};

struct TransactionOptions {
  // Sent with BEGIN (`BEGIN ISOLATION LEVEL SERIALIZABLE`). Default: the session's.
  IsolationLevel isolation = IsolationLevel::kDefault;
  // `BEGIN ... READ ONLY`: writes fail with FAILED_PRECONDITION (25006). Default: false.
  bool read_only = false;
};

class Pool;

class Transaction {
 public:
  Transaction(const Transaction&) = delete;
  Transaction& operator=(const Transaction&) = delete;

  // Runs one statement of the transaction (exactly one: the extended protocol allows no
  // `a; b` lists) in one round trip, by the transaction's deadline; `params` bind $1, $2, ... as
  // in Pool::Execute. The first call also sends BEGIN, in the same round trip.
  // Errors: as Pool::Execute. After a statement failed, PostgreSQL ignores everything until the
  // transaction ends: later calls return FAILED_PRECONDITION without sending anything, and the
  // transaction is rolled back whatever the callback returns. A call cut by the deadline
  // (DEADLINE_EXCEEDED) or a lost connection (UNAVAILABLE) breaks the connection: the server
  // rolls the transaction back when it sees the connection close.
  template <typename... Params>
  absl::StatusOr<Rows> Execute(std::string_view sql, const Params&... params) {
    std::vector<internal::Param> bound;
    bound.reserve(sizeof...(Params));
    (internal::AddParam(bound, params), ...);
    return ExecuteParams(sql, bound);
  }

  // The deadline every statement, and COMMIT, must end by.
  const Deadline& deadline() const { return deadline_; }

 private:
  friend class Pool;
  Transaction(pg_conn* conn, std::string_view component, const Deadline& deadline,
              const TransactionOptions& options)
      : conn_(conn), component_(component), deadline_(deadline), options_(options) {}

  absl::StatusOr<Rows> ExecuteParams(std::string_view sql,
                                     const std::vector<internal::Param>& params);
  // Ends the transaction: COMMIT when `commit` and no statement failed, otherwise ROLLBACK (only
  // when BEGIN was sent and the connection is intact). Returns OK unless a commit was asked for
  // and did not happen: the failed statement's error again, the COMMIT's error, ABORTED when the
  // server rolled back instead, UNKNOWN when COMMIT's reply was lost (deadline, connection).
  absl::Status Finish(bool commit);
  // True when the connection cannot be reused (a cut call, a lost connection).
  bool broken() const { return broken_; }
  std::string BeginSql() const;

  pg_conn* conn_;
  std::string_view component_;
  Deadline deadline_;
  TransactionOptions options_;
  bool begun_ = false;   // BEGIN was sent
  bool broken_ = false;  // the connection must be discarded
  absl::Status failed_;  // the first statement error: the server aborted the transaction
};

}  // namespace keel::postgres
