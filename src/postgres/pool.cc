// postgres::Pool: keel::Pool<pqxx::connection> with libpq connection strings, connect timeouts
// from deadlines, an on_connect hook and validation by a cheap query.
#include "keel/postgres/pool.h"

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <utility>

#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"

namespace keel::postgres {
namespace internal {

using keel::internal::StrCat;

std::string WithConnectTimeout(const std::string& conninfo, int seconds) {
  const bool url = conninfo.rfind("postgresql://", 0) == 0 || conninfo.rfind("postgres://", 0) == 0;
  if (url) {
    const char sep = conninfo.find('?') == std::string::npos ? '?' : '&';
    return StrCat(conninfo, std::string(1, sep), "connect_timeout=", seconds);
  }
  return StrCat(conninfo, conninfo.empty() ? "" : " ", "connect_timeout=", seconds);
}

absl::StatusOr<std::unique_ptr<pqxx::connection>> Connect(
    const std::string& conninfo, const Deadline& deadline,
    const std::function<absl::Status(pqxx::connection&)>& on_connect) {
  if (deadline.Expired()) return absl::DeadlineExceededError("deadline expired before connecting");
  // libpq counts connect_timeout in whole seconds and treats anything below 2 as 2, so a short
  // deadline can be overrun by up to 2 s against an unresponsive host (a refused connection fails
  // at once). 0 would mean "forever": an infinite deadline simply leaves it out.
  std::string info = conninfo;
  if (!deadline.IsInfinite()) {
    const auto secs = std::chrono::ceil<std::chrono::seconds>(deadline.Remaining()).count();
    info = WithConnectTimeout(conninfo, static_cast<int>(std::clamp<int64_t>(secs, 2, 1 << 30)));
  }
  try {
    auto conn = std::make_unique<pqxx::connection>(info);
    // libpqxx 6 silently reconnects a broken connection on next use, losing session state
    // (prepared statements, SETs) behind the pool's back. The pool replaces broken connections
    // itself, through on_connect, so reactivation is turned off.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
    conn->inhibit_reactivation(true);
#pragma GCC diagnostic pop
    if (on_connect) {
      absl::Status s = on_connect(*conn);
      if (!s.ok()) return absl::UnavailableError(StrCat("on_connect failed: ", s.message()));
    }
    return conn;
  } catch (...) {
    bool broken = false;
    absl::Status s = StatusFromCurrentException("connect", &broken);
    return absl::UnavailableError(s.message());
  }
}

}  // namespace internal

absl::StatusOr<std::unique_ptr<Pool>> Pool::Create(PoolOptions options, Clock& clock,
                                                   MetricsRegistry* metrics) {
  if (options.conninfo.empty()) {
    return absl::InvalidArgumentError(
        keel::internal::StrCat("postgres.conninfo must be set (pool \"", options.pool.name, "\")"));
  }
  PoolHooks<pqxx::connection> hooks;
  hooks.create = [conninfo = options.conninfo, on_connect = options.on_connect](Deadline d) {
    return internal::Connect(conninfo, d, on_connect);
  };
  // An idle connection has nothing to read. If its socket is readable, the server closed it or
  // sent a FATAL error (pg_terminate_backend, a restart): discard it without a round trip, even
  // inside the validation bypass window. (A connection that LISTENs may see a false positive and
  // is merely replaced.)
  hooks.is_broken = [](const pqxx::connection& c) {
    if (!c.is_open()) return true;
    pollfd p{.fd = c.sock(), .events = POLLIN, .revents = 0};
    if (p.fd < 0) return true;
    return ::poll(&p, 1, 0) != 0;
  };
  if (!options.validation_query.empty()) {
    // One round trip, no transaction: the deadline is not turned into a statement timeout here
    // (that would take a SET and a reset, tripling the cost of every check).
    hooks.validate = [query = options.validation_query](pqxx::connection& c, Deadline) {
      if (!c.is_open()) return absl::UnavailableError("connection closed");
      try {
        pqxx::nontransaction tx(c);
        tx.exec(query);
        return absl::OkStatus();
      } catch (...) {
        bool broken = false;
        return internal::StatusFromCurrentException("validate", &broken);
      }
    };
  }
  KEEL_ASSIGN_OR_RETURN(auto generic, keel::Pool<pqxx::connection>::Create(
                                          options.pool, std::move(hooks), clock, metrics));
  return std::unique_ptr<Pool>(new Pool(std::move(options), std::move(generic)));
}

Pool::Pool(PoolOptions options, std::unique_ptr<keel::Pool<pqxx::connection>> pool)
    : options_(std::move(options)),
      component_(keel::internal::StrCat("postgres \"", options_.pool.name, "\"")),
      pool_(std::move(pool)) {}

}  // namespace keel::postgres
