// postgres::Transaction: BEGIN pipelined with the first statement, one round trip per statement,
// COMMIT (see keel/postgres/transaction.h).
#include "keel/postgres/transaction.h"

#include <array>
#include <utility>

#include "keel/internal/strings.h"
#include "libpq_io.h"

namespace keel::postgres {

using keel::internal::StrCat;

std::string Transaction::BeginSql() const {
  std::string sql = "BEGIN";
  switch (options_.isolation) {
    case IsolationLevel::kDefault:
      break;
    case IsolationLevel::kReadCommitted:
      sql += " ISOLATION LEVEL READ COMMITTED";
      break;
    case IsolationLevel::kRepeatableRead:
      sql += " ISOLATION LEVEL REPEATABLE READ";
      break;
    case IsolationLevel::kSerializable:
      sql += " ISOLATION LEVEL SERIALIZABLE";
      break;
  }
  if (options_.read_only) sql += " READ ONLY";
  return sql;
}

absl::StatusOr<Rows> Transaction::ExecuteParams(std::string_view sql,
                                                const std::vector<internal::Param>& params) {
  if (broken_) {
    return absl::FailedPreconditionError(
        StrCat(component_, ": the transaction's connection was lost or cut; nothing was sent"));
  }
  if (!failed_.ok()) {
    return absl::FailedPreconditionError(
        StrCat(component_, ": the transaction is aborted by an earlier error (",
               keel::internal::FromAbsl(failed_.message()), "); nothing was sent"));
  }
  static const std::vector<internal::Param> kNone;
  const std::string begin = begun_ ? std::string() : BeginSql();
  const std::array<internal::StatementRef, 2> both = {internal::StatementRef{begin, kNone},
                                                      internal::StatementRef{sql, params}};
  // Without BEGIN, a pipeline of one: the same single round trip, and the same protocol (one
  // statement per call) as the first.
  const std::span<const internal::StatementRef> send =
      begun_ ? std::span<const internal::StatementRef>(both).subspan(1)
             : std::span<const internal::StatementRef>(both);
  absl::StatusOr<std::vector<absl::StatusOr<Rows>>> results =
      internal::ExecPipeline(conn_, component_, send, deadline_, /*abort_fd=*/-1, &broken_);
  if (!results.ok()) {
    // A NUL byte is refused before anything is sent: the transaction goes on untouched.
    if (results.status().code() == absl::StatusCode::kInvalidArgument && !broken_) {
      return results.status();
    }
    begun_ = true;
    failed_ = results.status();
    return results.status();
  }
  begun_ = true;
  for (absl::StatusOr<Rows>& r : *results) {
    if (!r.ok()) {
      failed_ = r.status();
      return r.status();
    }
  }
  return std::move(results->back());
}

absl::Status Transaction::Finish(bool commit) {
  if (!begun_) return absl::OkStatus();
  if (broken_) return commit ? failed_ : absl::OkStatus();
  static const std::vector<internal::Param> kNone;
  const bool committing = commit && failed_.ok();
  if (committing && deadline_.Expired()) {
    // Not sent: closing the connection makes the server roll the transaction back.
    broken_ = true;
    return absl::DeadlineExceededError(
        StrCat(component_, ": the deadline passed before COMMIT; the transaction is rolled back"));
  }
  const internal::StatementRef end{committing ? "COMMIT" : "ROLLBACK", kNone};
  absl::StatusOr<std::vector<absl::StatusOr<Rows>>> results = internal::ExecPipeline(
      conn_, component_, std::span<const internal::StatementRef>(&end, 1), deadline_,
      /*abort_fd=*/-1, &broken_);
  if (!committing) {
    // A failed ROLLBACK leaves the session unknown: broken_ is set for the lost connection; a
    // server error on ROLLBACK (never expected) discards the connection too.
    if (!results.ok() || !results->front().ok()) broken_ = true;
    return commit ? failed_ : absl::OkStatus();
  }
  if (!results.ok()) {
    const absl::StatusCode code = results.status().code();
    if (code == absl::StatusCode::kDeadlineExceeded || code == absl::StatusCode::kUnavailable ||
        code == absl::StatusCode::kCancelled) {
      broken_ = true;
      return absl::UnknownError(StrCat(component_, ": COMMIT sent but its reply was lost (",
                                       keel::internal::FromAbsl(results.status().message()),
                                       "); commit outcome unknown"));
    }
    return results.status();
  }
  absl::StatusOr<Rows>& reply = results->front();
  if (!reply.ok()) return reply.status();  // e.g. 40001 at commit: ABORTED, retryable
  if (reply->command_tag() == "ROLLBACK") {
    return absl::AbortedError(StrCat(component_, ": the server rolled the transaction back"));
  }
  return absl::OkStatus();
}

}  // namespace keel::postgres
