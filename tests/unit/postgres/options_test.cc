// postgres::Pool and postgres::Router option validation, error prefixes and router metrics. No
// server: the only connection attempted goes to loopback port 1 and is refused at once.
#include <catch2/catch.hpp>
#include <chrono>
#include <string>

#include "keel/postgres/pool.h"
#include "keel/postgres/router.h"

namespace keel::postgres {
namespace {

using namespace std::chrono_literals;

// A pool whose server would never be reached: nothing below connects.
std::unique_ptr<Pool> Offline(const std::string& name = "pg-unit") {
  return Pool::Create({.conninfo = "host=127.0.0.1 port=1 user=x",
                       .pool = {.name = name, .background_maintenance = false}})
      .value();
}

TEST_CASE("postgres pool names the bad field", "[postgres][unit]") {
  struct Case {
    PoolOptions options;
    std::string message;
  };
  const std::string conninfo = "host=127.0.0.1";
  Case cases[] = {
      {{}, "postgres pool \"postgres\": postgres.conninfo must be set"},
      {{.conninfo = conninfo, .call_timeout = 0s},
       "postgres pool \"postgres\": postgres.call_timeout must be > 0, got 0"},
      {{.conninfo = conninfo, .statement_timeout = -1s},
       "postgres pool \"postgres\": postgres.statement_timeout must be > 0 or unset, got -1s"},
      {{.conninfo = conninfo, .client_connection_check_interval = 0ms},
       "postgres pool \"postgres\": postgres.client_connection_check_interval must be > 0 or "
       "unset, got 0"},
      {{.conninfo = conninfo, .shutdown_timeout = -5ms},
       "postgres pool \"postgres\": postgres.shutdown_timeout must be >= 0, got -5ms"},
  };
  for (Case& c : cases) {
    auto pool = Pool::Create(std::move(c.options));
    CHECK(pool.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(pool.status().message()) == c.message);
  }
}

TEST_CASE("postgres pool errors start with the pool's name, an empty lease is refused",
          "[postgres][unit]") {
  auto pool = Offline();
  auto lease = pool->Acquire(Deadline::After(1s));  // refused at once: port 1
  REQUIRE(!lease.ok());
  CHECK(lease.status().message().find("postgres pool \"pg-unit\": ") == 0);
  Lease empty;
  auto on_empty = pool->Execute(Deadline::After(1s), empty, "SELECT 1");
  CHECK(on_empty.status().code() == absl::StatusCode::kFailedPrecondition);
}

TEST_CASE("router names the bad field", "[postgres][unit]") {
  struct Case {
    RouterOptions options;
    std::string message;
  };
  Case cases[] = {
      {{.name = "db", .failure_cooldown = -1s},
       "postgres router \"db\": router.failure_cooldown must be >= 0, got -1s"},
      {{.name = "db", .lag_check_interval = 0s},
       "postgres router \"db\": router.lag_check_interval must be > 0, got 0"},
      {{.name = "db", .max_replay_lag = -1ms},
       "postgres router \"db\": router.max_replay_lag must be >= 0, got -1ms"},
      {{.name = "db", .read_attempts = 0},
       "postgres router \"db\": router.read_attempts must be >= 1, got 0"},
      {{.name = "db", .replica_deadline_share = 0},
       "postgres router \"db\": router.replica_deadline_share must be in (0, 1], got 0"},
      {{.name = "db", .replica_deadline_share = 1.5},
       "postgres router \"db\": router.replica_deadline_share must be in (0, 1], got 1.5"},
  };
  for (Case& c : cases) {
    auto router = Router::Create(std::move(c.options), Offline(), {});
    CHECK(router.status().code() == absl::StatusCode::kInvalidArgument);
    CHECK(std::string(router.status().message()) == c.message);
  }
  auto no_primary = Router::Create({.name = "db"}, nullptr, {});
  CHECK(std::string(no_primary.status().message()) ==
        "postgres router \"db\": primary is required");
}

TEST_CASE("router exports its stats as counters labelled with its name", "[postgres][unit]") {
  MetricsRegistry metrics;
  auto router = Router::Create({.name = "diary-db"}, Offline(), {}, SteadyClock(), &metrics);
  REQUIRE(router.ok());
  // A read-your-writes read on an unreachable primary: counted, and refused at once.
  auto read = (*router)->RunRead(Deadline::After(1s), Consistency::kReadYourWrites,
                                 [](pqxx::work&) { return 1; });
  CHECK(read.status().code() == absl::StatusCode::kUnavailable);
  CHECK((*router)->Stats().primary_reads_total == 1);
  const std::string text = metrics.RenderPrometheus();
  INFO(text);
  CHECK(text.find("keel_postgres_router_primary_reads_total{name=\"diary-db\"} 1") !=
        std::string::npos);
  CHECK(text.find("keel_postgres_router_replica_timeouts_total{name=\"diary-db\"} 0") !=
        std::string::npos);
}

}  // namespace
}  // namespace keel::postgres
