// postgres::Pool: keel::Pool<Connection> whose connects, validations and calls all end by their
// deadline (libpq polled directly, libpqxx calls cut by the watchdog).
#include "keel/postgres/pool.h"

#include <poll.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <utility>

#include "async_engine.h"
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
  if (options.async.connections < 1 || options.async.max_in_flight < 1) {
    return absl::InvalidArgumentError(StrCat(
        "postgres pool \"", name, "\": postgres.async.",
        options.async.connections < 1 ? "connections" : "max_in_flight", " must be >= 1, got ",
        options.async.connections < 1 ? options.async.connections : options.async.max_in_flight));
  }
  if (options.async.late_timeout <= Duration::zero()) {
    return absl::InvalidArgumentError(
        StrCat("postgres pool \"", name, "\": postgres.async.late_timeout must be > 0, got ",
               keel::internal::FormatDuration(options.async.late_timeout)));
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

internal::AsyncEngine* Pool::Engine() {
  MutexLock lock(engine_mu_);
  if (shut_down_) return nullptr;
  if (engine_ == nullptr) {
    const PoolOptions* opts = &options_;
    internal::Watchdog* dog = watchdog_.get();
    engine_ = std::make_unique<internal::AsyncEngine>(
        internal::AsyncEngine::Settings{
            .component = component_,
            .connections = options_.async.connections,
            .max_in_flight = options_.async.max_in_flight,
            .connect_timeout = std::min(options_.pool.acquire_timeout, options_.call_timeout),
            .late_timeout = options_.async.late_timeout,
            .io_loop = options_.async.io_loop,
            .loop_name = options_.pool.name,
        },
        [opts, dog](Deadline d) { return internal::Connect(*opts, d, *dog); });
  }
  return engine_.get();
}

Future<std::vector<absl::StatusOr<Rows>>> Pool::AsyncPipeline(const Deadline& deadline,
                                                              std::vector<Statement> statements) {
  internal::AsyncEngine* engine = Engine();
  if (engine == nullptr) {
    return Future<std::vector<absl::StatusOr<Rows>>>::Ready(
        absl::FailedPreconditionError(keel::internal::StrCat(component_, ": shut down")));
  }
  return engine->Submit(Bound(deadline), std::move(statements));
}

Future<Rows> Pool::AsyncOne(const Deadline& deadline, std::vector<Statement> one) {
  Promise<Rows> promise;
  Future<Rows> rows = promise.future();
  AsyncPipeline(deadline, std::move(one))
      .Then([promise = std::move(promise)](
                absl::StatusOr<std::vector<absl::StatusOr<Rows>>> batch) mutable {
        if (!batch.ok()) return promise.Set(std::move(batch).status());
        promise.Set(std::move(batch->front()));
      });
  return rows;
}

AsyncStats Pool::GetAsyncStats() const {
  MutexLock lock(engine_mu_);
  return engine_ != nullptr ? engine_->Stats() : AsyncStats{};
}

void Pool::Shutdown() {
  std::unique_ptr<internal::AsyncEngine> engine;
  {
    MutexLock lock(engine_mu_);
    shut_down_ = true;
    engine = std::move(engine_);
  }
  if (pool_ == nullptr) return;
  // First: connects and validations in flight (the pool's and the async engine's) poll the abort
  // descriptor, so they end now.
  watchdog_->Abort();
  if (engine != nullptr) engine->Shutdown();  // async calls complete CANCELLED
  // The maintainer stops at once for the same reason. Calls in flight on leases get
  // shutdown_timeout, then the watchdog cuts them.
  watchdog_->CapAt(std::chrono::steady_clock::now() + options_.shutdown_timeout);
  pool_->Shutdown();
}

}  // namespace keel::postgres
