// libpq with every wait bounded: connecting (PQconnectStart/PQconnectPoll) and keel's own
// statements (PQsendQueryParams, then poll() on the socket), each until a deadline or until the
// pool's abort descriptor becomes readable. Private to src/postgres.
#pragma once

#include <libpq-fe.h>

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/deadline.h"
#include "keel/postgres/connection.h"

namespace keel::postgres::internal {

struct PgConnDeleter {
  void operator()(PGconn* c) const { PQfinish(c); }
};
using PgConnPtr = std::unique_ptr<PGconn, PgConnDeleter>;

// Opens a connection, waiting at most until `deadline`. DEADLINE_EXCEEDED when it ran out,
// CANCELLED when `abort_fd` became readable, UNAVAILABLE with libpq's (redacted) message when the
// server refused or the conninfo is malformed.
absl::StatusOr<PgConnPtr> ConnectBounded(const std::string& conninfo, const Deadline& deadline,
                                         int abort_fd);

// Runs one statement (`params` bound as $1..$n; none: the simple query protocol, so `sql` may hold
// several statements) and returns its last result, waiting at most until `deadline`.
// DEADLINE_EXCEEDED / CANCELLED as above, with `*broken` set (the reply is still owed: the
// connection cannot be reused); UNAVAILABLE with `*broken` when the connection failed; a
// statement error mapped as in pool.h. INVALID_ARGUMENT, before anything is sent, for a NUL byte
// in `sql` or a text parameter. Messages start with `component`.
absl::StatusOr<Rows> ExecBounded(PGconn* conn, std::string_view component, std::string_view sql,
                                 const std::vector<Param>& params, const Deadline& deadline,
                                 int abort_fd, bool* broken);

// One statement of a pipeline: `sql` with `params` bound as $1..$n.
struct StatementRef {
  std::string_view sql;
  const std::vector<Param>& params;
};

// INVALID_ARGUMENT when `st` holds a NUL byte in its SQL or a text parameter (libpq would cut the
// text there).
absl::Status CheckNoNul(std::string_view component, const StatementRef& st);
// Queues `st` in libpq's output buffer (PQsendQueryParams, or PQsendQuery when `simple`); false
// when libpq refused (see PQerrorMessage).
bool SendOne(PGconn* conn, const StatementRef& st, bool simple);
// libpq's last error on `conn`, cleaned and redacted.
std::string LibpqMessage(PGconn* conn);

// Sends `statements` in one round trip in libpq's pipeline mode (the extended protocol, one Sync
// after the last; so each `sql` holds exactly one statement) and returns each one's result in
// order. A failed statement makes the server skip the rest until the Sync: their entries are
// ABORTED. The outer status fails as ExecBounded's does (DEADLINE_EXCEEDED, CANCELLED,
// UNAVAILABLE, INVALID_ARGUMENT for a NUL byte before anything is sent). REQUIRES: no
// transaction or pipeline left open by libpqxx on `conn`.
absl::StatusOr<std::vector<absl::StatusOr<Rows>>> ExecPipeline(
    PGconn* conn, std::string_view component, std::span<const StatementRef> statements,
    const Deadline& deadline, int abort_fd, bool* broken);

// A libpq message on one line, without trailing newlines or doubled spaces, and redacted (libpq
// quotes a malformed conninfo whole, password included).
std::string CleanLibpqMessage(std::string_view what);

// The status for a failed PGresult (SQLSTATE mapping of pool.h); sets `*broken` when the session
// is gone.
absl::Status StatusFromResult(std::string_view component, const PGresult* result, PGconn* conn,
                              bool* broken);

}  // namespace keel::postgres::internal
