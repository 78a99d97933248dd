// postgres::Pool: keel::Pool<Connection> whose connects, validations and calls all end by their
// deadline (libpq polled directly, libpqxx calls cut by the watchdog).
#include "keel/postgres/pool.h"

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <utility>

#include "keel/internal/format.h"
#include "keel/internal/redact.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"
#include "libpq_io.h"

namespace keel::postgres {
namespace internal {
namespace {

using keel::internal::FormatDuration;
using keel::internal::StrCat;

// `SET statement_timeout = ..; SET client_connection_check_interval = ..` for the options, or ""
// when neither is set. One simple query: one round trip for both.
std::string SessionSql(const PoolOptions& o) {
  auto ms = [](Duration d) {
    // INT_MAX ms is PostgreSQL's limit for both settings.
    return std::clamp<int64_t>(std::chrono::ceil<std::chrono::milliseconds>(d).count(), 1,
                               2147483647);
  };
  std::string sql;
  if (o.statement_timeout)
    absl::StrAppend(&sql, "SET statement_timeout = ", ms(*o.statement_timeout));
  if (o.client_connection_check_interval) {
    absl::StrAppend(&sql, sql.empty() ? "" : "; ", "SET client_connection_check_interval = ",
                    ms(*o.client_connection_check_interval));
  }
  return sql;
}

}  // namespace

absl::Status Settle(Watch& watch, std::string_view component, Duration budget,
                    const absl::Status& status, bool* broken) {
  if (!watch.Disarm()) return absl::OkStatus();
  *broken = true;                            // the socket is shut down
  if (status.ok()) return absl::OkStatus();  // it finished just before the cut
  if (status.code() == absl::StatusCode::kUnknown) {
    return absl::UnknownError(StrCat(component, ": the deadline (", FormatDuration(budget),
                                     ") passed during COMMIT; commit outcome unknown"));
  }
  if (watch.by_shutdown()) {
    return absl::CancelledError(
        StrCat(component, ": cut by Shutdown (shutdown_timeout passed); the connection is closed"));
  }
  return absl::DeadlineExceededError(StrCat(component, ": no reply within ", FormatDuration(budget),
                                            "; the connection is discarded"));
}

absl::StatusOr<std::unique_ptr<Connection>> Connect(const PoolOptions& options,
                                                    const Deadline& deadline, Watchdog& watchdog) {
  if (deadline.Expired()) return absl::DeadlineExceededError("deadline expired before connecting");
  KEEL_ASSIGN_OR_RETURN(PgConnPtr raw,
                        ConnectBounded(options.conninfo, deadline, watchdog.abort_fd()));
  if (const std::string sql = SessionSql(options); !sql.empty()) {
    bool broken = false;
    absl::StatusOr<Rows> set =
        ExecBounded(raw.get(), "session setup", sql, {}, deadline, watchdog.abort_fd(), &broken);
    if (!set.ok()) return absl::Status(set.status().code(), set.status().message());
  }
  std::unique_ptr<Connection> conn;
  try {
    conn = Connection::Adopt(raw.release());
  } catch (...) {
    bool broken = false;
    return absl::UnavailableError(StatusFromCurrentException("connect", &broken).message());
  }
  if (options.on_connect) {
    Watch watch(watchdog, conn->sock(), deadline);
    absl::Status s;
    try {
      s = options.on_connect(*conn);
    } catch (...) {
      bool broken = false;
      s = StatusFromCurrentException("on_connect", &broken);
    }
    if (watch.Disarm()) {
      return absl::DeadlineExceededError("on_connect did not finish by the deadline");
    }
    if (!s.ok()) {
      return absl::UnavailableError(
          StrCat("on_connect failed: ",
                 keel::internal::RedactCredentials(keel::internal::FromAbsl(s.message()))));
    }
  }
  return conn;
}

}  // namespace internal

namespace {

// The generic pool's errors start with `pool "<name>": `; a postgres pool's say what it is.
absl::Status Rename(const absl::Status& s, const std::string& name, const std::string& component) {
  const std::string generic = keel::internal::StrCat("pool \"", name, "\": ");
  absl::string_view m = s.message();
  if (m.substr(0, generic.size()) == generic) m.remove_prefix(generic.size());
  absl::Status out(s.code(), keel::internal::StrCat(component, ": ", keel::internal::FromAbsl(m)));
  s.ForEachPayload(
      [&](absl::string_view url, const absl::Cord& payload) { out.SetPayload(url, payload); });
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Pool>> Pool::Create(PoolOptions options, Clock& clock,
                                                   MetricsRegistry* metrics) {
  using keel::internal::StrCat;
  const std::string& name = options.pool.name;
  if (options.conninfo.empty()) {
    return absl::InvalidArgumentError(
        StrCat("postgres pool \"", name, "\": postgres.conninfo must be set"));
  }
  if (options.call_timeout <= Duration::zero()) {
    return absl::InvalidArgumentError(StrCat("postgres pool \"", name,
                                             "\": postgres.call_timeout must be > 0, got ",
                                             keel::internal::FormatDuration(options.call_timeout)));
  }
  if (options.shutdown_timeout < Duration::zero()) {
    return absl::InvalidArgumentError(
        StrCat("postgres pool \"", name, "\": postgres.shutdown_timeout must be >= 0, got ",
               keel::internal::FormatDuration(options.shutdown_timeout)));
  }
  for (auto [field, value] :
       {std::pair{"statement_timeout", options.statement_timeout},
        std::pair{"client_connection_check_interval", options.client_connection_check_interval}}) {
    if (value && *value <= Duration::zero()) {
      return absl::InvalidArgumentError(StrCat("postgres pool \"", name, "\": postgres.", field,
                                               " must be > 0 or unset, got ",
                                               keel::internal::FormatDuration(*value)));
    }
  }
  auto watchdog = std::make_unique<internal::Watchdog>();
  internal::Watchdog* dog = watchdog.get();
  std::unique_ptr<Pool> pool(new Pool(std::move(options), std::move(watchdog)));
  const PoolOptions* opts = &pool->options_;  // stable: the Pool is heap-allocated
  PoolHooks<Connection> hooks;
  hooks.create = [opts, dog](Deadline d) { return internal::Connect(*opts, d, *dog); };
  // An idle connection has nothing to read. If its socket is readable, the server closed it or
  // sent a FATAL error (pg_terminate_backend, a restart): discard it without a round trip, even
  // inside the validation bypass window. (A connection that LISTENs may see a false positive and
  // is merely replaced.)
  hooks.is_broken = [](const Connection& c) {
    if (!c.is_open()) return true;
    pollfd p{.fd = c.sock(), .events = POLLIN, .revents = 0};
    if (p.fd < 0) return true;
    return ::poll(&p, 1, 0) != 0;
  };
  if (!pool->options_.validation_query.empty()) {
    // One round trip on libpq, polled until the deadline (pool.validation_timeout, capped by the
    // caller's), and abandoned at once by Shutdown.
    hooks.validate = [opts, dog](Connection& c, Deadline d) -> absl::Status {
      bool broken = false;
      absl::StatusOr<Rows> r = internal::ExecBounded(c.raw(), "validate", opts->validation_query,
                                                     {}, d, dog->abort_fd(), &broken);
      return r.status();
    };
  }
  KEEL_ASSIGN_OR_RETURN(pool->pool_, keel::Pool<Connection>::Create(
                                         pool->options_.pool, std::move(hooks), clock, metrics));
  return pool;
}

Pool::Pool(PoolOptions options, std::unique_ptr<internal::Watchdog> watchdog)
    : options_(std::move(options)),
      component_(keel::internal::StrCat("postgres pool \"", options_.pool.name, "\"")),
      watchdog_(std::move(watchdog)) {}

Pool::~Pool() { Shutdown(); }

absl::StatusOr<Lease> Pool::Acquire(const Deadline& deadline) {
  absl::StatusOr<Lease> lease = pool_->Acquire(deadline);
  if (!lease.ok()) return Rename(lease.status(), options_.pool.name, component_);
  return lease;
}

absl::StatusOr<Rows> Pool::ExecuteParams(const Deadline& deadline, Lease* held,
                                         std::string_view sql,
                                         const std::vector<internal::Param>& params) {
  const Deadline bounded = Bound(deadline);
  Lease own;
  if (held == nullptr) {
    KEEL_ASSIGN_OR_RETURN(own, Acquire(bounded));
    held = &own;
  }
  Lease& lease = *held;
  if (!lease) return internal::EmptyLeaseError(component_);
  if (bounded.Expired()) return internal::ExpiredError(component_);
  const Duration budget = internal::RoundedBudget(bounded);
  bool broken = false;
  // The watch only matters at Shutdown (its cap); the poll itself ends by the deadline.
  internal::Watch watch(*watchdog_, lease->sock(), bounded);
  absl::StatusOr<Rows> rows = internal::ExecBounded(lease->raw(), component_, sql, params, bounded,
                                                    /*abort_fd=*/-1, &broken);
  absl::Status cut = internal::Settle(watch, component_, budget, rows.status(), &broken);
  if (!rows.ok() && rows.status().code() == absl::StatusCode::kDeadlineExceeded && cut.ok()) {
    cut = absl::DeadlineExceededError(keel::internal::StrCat(component_, ": no reply within ",
                                                             keel::internal::FormatDuration(budget),
                                                             "; the connection is discarded"));
  }
  if (broken) lease.Invalidate();
  if (!cut.ok()) return cut;
  return rows;
}

void Pool::Shutdown() {
  if (pool_ == nullptr) return;
  // Connects and validations poll the abort descriptor: they end now, so the maintainer stops at
  // once. Calls in flight on leases get shutdown_timeout, then the watchdog cuts them.
  watchdog_->Abort();
  watchdog_->CapAt(std::chrono::steady_clock::now() + options_.shutdown_timeout);
  pool_->Shutdown();
}

}  // namespace keel::postgres
