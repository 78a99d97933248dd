// Bounded libpq I/O (see libpq_io.h).
#include "libpq_io.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

#include "keel/internal/redact.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"

namespace keel::postgres::internal {
namespace {

using keel::internal::StrCat;

enum class Wait { kReady, kTimeout, kAborted };

// Waits for `events` on `fd`, the deadline, or `abort_fd` readable. Interrupted polls resume with
// what is left of the deadline.
Wait PollFor(int fd, short events, const Deadline& deadline, int abort_fd) {
  for (;;) {
    int timeout_ms = -1;
    if (!deadline.IsInfinite()) {
      const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline.Remaining());
      if (left.count() <= 0) return Wait::kTimeout;
      timeout_ms = static_cast<int>(std::min<int64_t>(left.count(), 1 << 30));
    }
    pollfd fds[2] = {{.fd = fd, .events = events, .revents = 0},
                     {.fd = abort_fd, .events = POLLIN, .revents = 0}};
    const int n = ::poll(fds, abort_fd >= 0 ? 2 : 1, timeout_ms);
    if (n < 0 && errno == EINTR) continue;
    if (abort_fd >= 0 && fds[1].revents != 0) return Wait::kAborted;
    // Errors and hang-ups count as ready: the next libpq call reports them.
    if (n != 0) return Wait::kReady;
    if (deadline.Expired()) return Wait::kTimeout;
  }
}

// libpq's message about connecting with `conninfo`. A parser that misreads a password quotes it
// bare ("invalid integer value "hunter22" for connection option "port"", "invalid
// percent-encoded token: "s3cr%zzet""), where no pattern finds it: every password keel finds in
// `conninfo` is removed from the message wherever it stands.
std::string ConnectMessage(PGconn* conn, const std::string& conninfo) {
  return keel::internal::RedactCredentials(LibpqMessage(conn), conninfo);
}

absl::Status TimedOut(std::string_view component, std::string_view what) {
  return absl::DeadlineExceededError(
      StrCat(component, ": ", what, " by the deadline; the connection is discarded"));
}

}  // namespace

absl::StatusOr<PgConnPtr> ConnectBounded(const std::string& conninfo, const Deadline& deadline,
                                         int abort_fd) {
  PgConnPtr conn(PQconnectStart(conninfo.c_str()));
  if (conn == nullptr || PQstatus(conn.get()) == CONNECTION_BAD) {
    return absl::UnavailableError(ConnectMessage(conn.get(), conninfo));
  }
  PostgresPollingStatusType state = PGRES_POLLING_WRITING;
  for (;;) {
    if (state == PGRES_POLLING_OK) return conn;
    if (state == PGRES_POLLING_FAILED) {
      return absl::UnavailableError(ConnectMessage(conn.get(), conninfo));
    }
    // The socket may change between polls (libpq moves on to the next host or address).
    const short events = state == PGRES_POLLING_READING ? POLLIN : POLLOUT;
    switch (PollFor(PQsocket(conn.get()), events, deadline, abort_fd)) {
      case Wait::kTimeout:
        return absl::DeadlineExceededError("no connection established by the deadline");
      case Wait::kAborted:
        return absl::CancelledError("connect abandoned: the pool is shutting down");
      case Wait::kReady:
        break;
    }
    state = PQconnectPoll(conn.get());
  }
}

std::string LibpqMessage(PGconn* conn) {
  return CleanLibpqMessage(conn != nullptr ? PQerrorMessage(conn) : "out of memory");
}

// A NUL byte inside the SQL or a text parameter would silently cut the text libpq sends.
absl::Status CheckNoNul(std::string_view component, const StatementRef& st) {
  if (st.sql.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        StrCat(component, ": SQL text contains a NUL byte at offset ", st.sql.find('\0')));
  }
  for (size_t i = 0; i < st.params.size(); ++i) {
    const Param& p = st.params[i];
    if (!p.null && !p.binary && p.text.find('\0') != std::string::npos) {
      return absl::InvalidArgumentError(
          StrCat(component, ": text parameter $", i + 1, " contains a NUL byte at offset ",
                 p.text.find('\0'), "; bind binary data as keel::postgres::Bytes (bytea)"));
    }
  }
  return absl::OkStatus();
}

// Queues one statement in libpq's output buffer (nothing is flushed yet in non-blocking mode).
// The extended protocol (PQsendQueryParams) unless `simple`, which allows several statements in
// one string and is not allowed in pipeline mode.
bool SendOne(PGconn* conn, const StatementRef& st, bool simple) {
  const std::string text(st.sql);
  if (simple) return PQsendQuery(conn, text.c_str()) != 0;
  const size_t n = st.params.size();
  std::vector<const char*> values(n);
  std::vector<int> lengths(n);
  std::vector<int> formats(n);
  for (size_t i = 0; i < n; ++i) {
    const Param& p = st.params[i];
    if (p.null) continue;
    if (p.binary) {
      const std::string_view bytes = p.owned ? std::string_view(p.text) : p.bytes;
      values[i] = bytes.data();
      lengths[i] = static_cast<int>(bytes.size());
      formats[i] = 1;
    } else {
      values[i] = p.text.c_str();
    }
  }
  return PQsendQueryParams(conn, text.c_str(), static_cast<int>(n), nullptr, values.data(),
                           lengths.data(), formats.data(), /*resultFormat=*/0) != 0;
}

namespace {

// The bounded conversation on one connection: flushing what libpq queued and reading results,
// every wait ending by the deadline (or the abort descriptor), with `*broken` set when the
// connection can no longer be used.
class Exchange {
 public:
  Exchange(PGconn* conn, std::string_view component, const Deadline& deadline, int abort_fd,
           bool* broken)
      : conn_(conn),
        component_(component),
        deadline_(deadline),
        abort_fd_(abort_fd),
        broken_(broken) {}

  absl::Status Lost() {
    *broken_ = true;
    return absl::UnavailableError(StrCat(component_, ": ", LibpqMessage(conn_)));
  }
  // Writes everything libpq holds for the server.
  absl::Status Flush() {
    for (int flushed; (flushed = PQflush(conn_)) != 0;) {
      if (flushed < 0) return Lost();
      KEEL_RETURN_IF_ERROR(Await(POLLIN | POLLOUT));
      if (!PQconsumeInput(conn_)) return Lost();
    }
    return absl::OkStatus();
  }
  // PQgetResult once it will not block.
  absl::StatusOr<PGresult*> Next() {
    while (PQisBusy(conn_)) {
      KEEL_RETURN_IF_ERROR(Await(POLLIN));
      if (!PQconsumeInput(conn_)) return Lost();
    }
    return PQgetResult(conn_);
  }
  // The statement's outcome from its result `r` (taken over); the first error of a statement
  // goes to `*error` unless one is there already.
  void Take(PGresult* r, Rows* rows, absl::Status* error) {
    const ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY) {
      *rows = Rows(r);
      return;
    }
    if (error->ok()) {
      *error = st == PGRES_PIPELINE_ABORTED
                   ? absl::AbortedError(StrCat(component_,
                                               ": not run: an earlier statement of the "
                                               "pipeline failed"))
                   : StatusFromResult(component_, r, conn_, broken_);
    }
    PQclear(r);
  }

 private:
  absl::Status Await(short events) {
    switch (PollFor(PQsocket(conn_), events, deadline_, abort_fd_)) {
      case Wait::kTimeout:
        *broken_ = true;
        return TimedOut(component_, "no reply");
      case Wait::kAborted:
        *broken_ = true;
        return absl::CancelledError(StrCat(component_, ": abandoned: the pool is shutting down"));
      case Wait::kReady:
        return absl::OkStatus();
    }
    return absl::OkStatus();
  }

  PGconn* conn_;
  std::string_view component_;
  const Deadline& deadline_;
  int abort_fd_;
  bool* broken_;
};

absl::Status CheckOpen(PGconn* conn, std::string_view component, bool* broken) {
  if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
    *broken = true;
    return absl::UnavailableError(StrCat(component, ": connection closed"));
  }
  return absl::OkStatus();
}

// Non-blocking while keel waits, so that even sending cannot block past the deadline; libpqxx
// expects blocking mode, restored on destruction.
struct NonBlocking {
  explicit NonBlocking(PGconn* c) : conn(c) { PQsetnonblocking(conn, 1); }
  ~NonBlocking() { PQsetnonblocking(conn, 0); }
  PGconn* conn;
};

}  // namespace

absl::StatusOr<Rows> ExecBounded(PGconn* conn, std::string_view component, std::string_view sql,
                                 const std::vector<Param>& params, const Deadline& deadline,
                                 int abort_fd, bool* broken) {
  KEEL_RETURN_IF_ERROR(CheckOpen(conn, component, broken));
  const StatementRef st{sql, params};
  KEEL_RETURN_IF_ERROR(CheckNoNul(component, st));
  NonBlocking nb(conn);
  Exchange x(conn, component, deadline, abort_fd, broken);
  if (!SendOne(conn, st, /*simple=*/params.empty())) {
    if (PQstatus(conn) != CONNECTION_OK) return x.Lost();
    return absl::UnavailableError(StrCat(component, ": ", LibpqMessage(conn)));
  }
  KEEL_RETURN_IF_ERROR(x.Flush());
  // Every result is read, so the connection is idle again afterwards; the first error wins.
  absl::Status error;
  Rows last;
  for (;;) {
    KEEL_ASSIGN_OR_RETURN(PGresult * r, x.Next());
    if (r == nullptr) break;
    x.Take(r, &last, &error);
  }
  if (!error.ok()) return error;
  return last;
}

absl::StatusOr<std::vector<absl::StatusOr<Rows>>> ExecPipeline(
    PGconn* conn, std::string_view component, std::span<const StatementRef> statements,
    const Deadline& deadline, int abort_fd, bool* broken) {
  KEEL_RETURN_IF_ERROR(CheckOpen(conn, component, broken));
  for (const StatementRef& st : statements) KEEL_RETURN_IF_ERROR(CheckNoNul(component, st));
  std::vector<absl::StatusOr<Rows>> out;
  if (statements.empty()) return out;
  NonBlocking nb(conn);
  Exchange x(conn, component, deadline, abort_fd, broken);
  if (!PQenterPipelineMode(conn)) {
    return absl::InternalError(
        StrCat(component, ": cannot enter pipeline mode: ", LibpqMessage(conn)));
  }
  // Leaves pipeline mode on every path that keeps the connection (PQexitPipelineMode fails, and
  // does nothing, while results are still owed: such a connection is broken anyway).
  struct Exit {
    PGconn* c;
    ~Exit() { PQexitPipelineMode(c); }
  } exit{conn};
  for (const StatementRef& st : statements) {
    if (!SendOne(conn, st, /*simple=*/false)) return x.Lost();
  }
  if (!PQpipelineSync(conn)) return x.Lost();
  KEEL_RETURN_IF_ERROR(x.Flush());
  out.reserve(statements.size());
  // Per statement: its result, then nullptr; after the last, the PGRES_PIPELINE_SYNC result.
  for (size_t i = 0; i < statements.size(); ++i) {
    Rows rows;
    absl::Status error;
    for (;;) {
      KEEL_ASSIGN_OR_RETURN(PGresult * r, x.Next());
      if (r == nullptr) break;
      x.Take(r, &rows, &error);
    }
    if (error.ok()) {
      out.emplace_back(std::move(rows));
    } else {
      out.emplace_back(std::move(error));
    }
  }
  KEEL_ASSIGN_OR_RETURN(PGresult * sync, x.Next());
  const bool synced = sync != nullptr && PQresultStatus(sync) == PGRES_PIPELINE_SYNC;
  PQclear(sync);
  if (!synced) {
    *broken = true;
    return absl::InternalError(StrCat(component, ": pipeline out of step with the server"));
  }
  return out;
}

}  // namespace keel::postgres::internal
