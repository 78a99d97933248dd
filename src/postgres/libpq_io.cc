// Bounded libpq I/O (see libpq_io.h).
#include "libpq_io.h"

#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>

#include "keel/internal/redact.h"
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

std::string LibpqMessage(PGconn* conn) {
  return CleanLibpqMessage(conn != nullptr ? PQerrorMessage(conn) : "out of memory");
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

absl::StatusOr<Rows> ExecBounded(PGconn* conn, std::string_view component, std::string_view sql,
                                 const std::vector<Param>& params, const Deadline& deadline,
                                 int abort_fd, bool* broken) {
  if (conn == nullptr || PQstatus(conn) != CONNECTION_OK) {
    *broken = true;
    return absl::UnavailableError(StrCat(component, ": connection closed"));
  }
  // libpq takes NUL-terminated strings: a NUL inside would silently cut the text.
  if (sql.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        StrCat(component, ": SQL text contains a NUL byte at offset ", sql.find('\0')));
  }
  std::vector<const char*> values(params.size());
  std::vector<int> lengths(params.size());
  std::vector<int> formats(params.size());
  for (size_t i = 0; i < params.size(); ++i) {
    const Param& p = params[i];
    if (p.null) continue;
    if (p.binary) {
      values[i] = p.bytes.data();
      lengths[i] = static_cast<int>(p.bytes.size());
      formats[i] = 1;
    } else {
      if (p.text.find('\0') != std::string::npos) {
        return absl::InvalidArgumentError(
            StrCat(component, ": text parameter $", i + 1, " contains a NUL byte at offset ",
                   p.text.find('\0'), "; bind binary data as keel::postgres::Bytes (bytea)"));
      }
      values[i] = p.text.c_str();
    }
  }
  const std::string text(sql);
  // Non-blocking while keel waits, so that even sending cannot block past the deadline; libpqxx
  // expects blocking mode, restored before returning.
  PQsetnonblocking(conn, 1);
  struct RestoreBlocking {
    PGconn* c;
    ~RestoreBlocking() { PQsetnonblocking(c, 0); }
  } restore{conn};
  const int sent =
      params.empty()
          ? PQsendQuery(conn, text.c_str())
          : PQsendQueryParams(conn, text.c_str(), static_cast<int>(params.size()), nullptr,
                              values.data(), lengths.data(), formats.data(), /*resultFormat=*/0);
  if (!sent) {
    *broken = PQstatus(conn) != CONNECTION_OK;
    return absl::UnavailableError(StrCat(component, ": ", LibpqMessage(conn)));
  }
  auto wait = [&](short events) -> absl::Status {
    switch (PollFor(PQsocket(conn), events, deadline, abort_fd)) {
      case Wait::kTimeout:
        *broken = true;
        return TimedOut(component, "no reply");
      case Wait::kAborted:
        *broken = true;
        return absl::CancelledError(StrCat(component, ": abandoned: the pool is shutting down"));
      case Wait::kReady:
        return absl::OkStatus();
    }
    return absl::OkStatus();
  };
  for (int flushed; (flushed = PQflush(conn)) != 0;) {
    if (flushed < 0) {
      *broken = true;
      return absl::UnavailableError(StrCat(component, ": ", LibpqMessage(conn)));
    }
    if (absl::Status s = wait(POLLIN | POLLOUT); !s.ok()) return s;
    if (!PQconsumeInput(conn)) {
      *broken = true;
      return absl::UnavailableError(StrCat(component, ": ", LibpqMessage(conn)));
    }
  }
  // Every result is read, so the connection is idle again afterwards; the first error wins.
  absl::Status error;
  Rows last;
  for (;;) {
    while (PQisBusy(conn)) {
      if (absl::Status s = wait(POLLIN); !s.ok()) return s;
      if (!PQconsumeInput(conn)) {
        *broken = true;
        return absl::UnavailableError(StrCat(component, ": ", LibpqMessage(conn)));
      }
    }
    PGresult* r = PQgetResult(conn);
    if (r == nullptr) break;
    const ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY) {
      last = Rows(r);
    } else {
      if (error.ok()) error = StatusFromResult(component, r, conn, broken);
      PQclear(r);
    }
  }
  if (!error.ok()) return error;
  return last;
}

}  // namespace keel::postgres::internal
