// postgres::Pool and Run against the shared test server (KEEL_TEST_POSTGRES_URL). Nothing here
// writes outside temporary tables or breaks the server.
#include "keel/postgres/pool.h"

#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>

#include "support/subprocess.h"

namespace keel::postgres {
namespace {

using namespace std::chrono_literals;

std::unique_ptr<Pool> MakePool(PoolOptions o = {}) {
  o.conninfo = test::RequireEnv("KEEL_TEST_POSTGRES_URL");
  o.pool.name = "pg-test";
  o.pool.max_size = 2;
  o.pool.background_maintenance = false;
  auto pool = Pool::Create(std::move(o));
  REQUIRE(pool.ok());
  return std::move(*pool);
}

// Raises `sqlstate` on the server, the way PostgreSQL reports that condition.
absl::Status Raise(Pool& pool, const std::string& sqlstate) {
  return pool.Run(Deadline::After(5s), [&](pqxx::work& tx) {
    tx.exec("DO $$ BEGIN RAISE EXCEPTION 'raised for a test' USING ERRCODE = '" + sqlstate +
            "'; END $$");
  });
}

TEST_CASE("postgres pool runs a transaction and returns its value", "[postgres]") {
  auto pool = MakePool();
  absl::StatusOr<int> two = pool->Run(
      Deadline::After(5s), [](pqxx::work& tx) { return tx.exec1("SELECT 1 + 1")[0].as<int>(); });
  REQUIRE(two.ok());
  CHECK(*two == 2);
  CHECK(pool->Stats().created_total == 1);
}

TEST_CASE("postgres Run ends by its deadline on the client and discards the connection",
          "[postgres]") {
  auto pool = MakePool();
  auto lease = pool->Acquire(Deadline::After(5s));
  REQUIRE(lease.ok());
  const auto start = std::chrono::steady_clock::now();
  absl::Status s = pool->Run(Deadline::After(200ms), *lease,
                             [](pqxx::work& tx) { tx.exec("SELECT pg_sleep(5)"); });
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(s.code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(s.message() ==
        "postgres pool \"pg-test\": no reply within 200ms; the connection is discarded");
  CHECK(took >= 190ms);
  CHECK(took < 250ms);
  CHECK(!*lease);  // its reply is still owed: it cannot be reused
}

TEST_CASE("postgres pool sets the server-side timeouts once per connection", "[postgres]") {
  auto pool = MakePool({.statement_timeout = 1500ms, .client_connection_check_interval = 2s});
  auto settings = pool->Execute(Deadline::After(5s),
                                "SELECT current_setting('statement_timeout'), "
                                "current_setting('client_connection_check_interval')");
  REQUIRE(settings.ok());
  CHECK(settings->Text(0, 0) == "1500ms");
  CHECK(settings->Text(0, 1) == "2s");
  auto unset = MakePool(
      {.statement_timeout = std::nullopt, .client_connection_check_interval = std::nullopt});
  auto server_default = unset->Execute(Deadline::After(5s), "SHOW statement_timeout");
  REQUIRE(server_default.ok());
  CHECK(server_default->Text(0, 0) == "0");
}

TEST_CASE("postgres Run maps SQLSTATEs to status codes with the server's message", "[postgres]") {
  auto pool = MakePool();
  struct Case {
    const char* sqlstate;
    absl::StatusCode code;
  };
  const Case cases[] = {
      {"23505", absl::StatusCode::kAlreadyExists},
      {"40001", absl::StatusCode::kAborted},
      {"40P01", absl::StatusCode::kAborted},
      {"57014", absl::StatusCode::kDeadlineExceeded},
      {"25006", absl::StatusCode::kFailedPrecondition},
      {"42501", absl::StatusCode::kPermissionDenied},
      {"22012", absl::StatusCode::kInvalidArgument},
      {"23503", absl::StatusCode::kInvalidArgument},
      {"XX000", absl::StatusCode::kInternal},
      {"53100", absl::StatusCode::kUnavailable},
  };
  for (const Case& c : cases) {
    INFO("SQLSTATE " << c.sqlstate);
    absl::Status s = Raise(*pool, c.sqlstate);
    CHECK(s.code() == c.code);
    CHECK(s.message().find("postgres pool \"pg-test\": ERROR: raised for a test") == 0);
  }
  CHECK(pool->Stats().destroyed_total == 0);  // none of these broke the connection
}

TEST_CASE("postgres Run reports a real unique violation as ALREADY_EXISTS", "[postgres]") {
  auto pool = MakePool();
  absl::Status s = pool->Run(Deadline::After(5s), [](pqxx::work& tx) {
    tx.exec("CREATE TEMP TABLE t (id int PRIMARY KEY)");
    tx.exec("INSERT INTO t VALUES (1)");
    tx.exec("INSERT INTO t VALUES (1)");
  });
  CHECK(s.code() == absl::StatusCode::kAlreadyExists);
  CHECK(s.message().find("duplicate key value violates unique constraint") !=
        absl::string_view::npos);
}

TEST_CASE("postgres Run maps syntax, conversion and missing-row errors to INVALID_ARGUMENT",
          "[postgres]") {
  auto pool = MakePool();
  auto syntax = pool->Run(Deadline::After(5s), [](pqxx::work& tx) { tx.exec("SELEC 1"); });
  CHECK(syntax.code() == absl::StatusCode::kInvalidArgument);
  CHECK(syntax.message().find("syntax error") != absl::string_view::npos);
  auto conversion = pool->Run(Deadline::After(5s),
                              [](pqxx::work& tx) { return tx.exec1("SELECT 'abc'")[0].as<int>(); });
  CHECK(conversion.status().code() == absl::StatusCode::kInvalidArgument);
  auto no_row = pool->Run(Deadline::After(5s), [](pqxx::work& tx) {
    return tx.exec1("SELECT 1 WHERE false")[0].as<int>();
  });
  CHECK(no_row.status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("postgres Run rolls back when the callback returns an error", "[postgres]") {
  auto pool = MakePool({.pool = {.max_size = 1}});
  auto lease = pool->Acquire(Deadline::After(5s));
  REQUIRE(lease.ok());
  REQUIRE(pool->Run(Deadline::After(5s), *lease,
                    [](pqxx::work& tx) { tx.exec("CREATE TEMP TABLE r (v int)"); })
              .ok());
  absl::Status s = pool->Run(Deadline::After(5s), *lease, [](pqxx::work& tx) {
    tx.exec("INSERT INTO r VALUES (1)");
    return absl::NotFoundError("caller changed its mind");
  });
  CHECK(s.code() == absl::StatusCode::kNotFound);
  auto count = pool->Run(Deadline::After(5s), *lease, [](pqxx::work& tx) {
    return tx.exec1("SELECT count(*) FROM r")[0].as<int>();
  });
  REQUIRE(count.ok());
  CHECK(*count == 0);
  absl::Status thrown = pool->Run(Deadline::After(5s), *lease,
                                  [](pqxx::work&) { throw std::runtime_error("callback bug"); });
  CHECK(thrown.code() == absl::StatusCode::kInternal);
  CHECK(thrown.message() == "postgres pool \"pg-test\": exception: callback bug");
}

TEST_CASE("postgres pool runs on_connect on every new connection", "[postgres]") {
  PoolOptions o;
  o.on_connect = [](pqxx::connection_base& c) {
    c.prepare("add", "SELECT $1::int + $2::int");
    pqxx::nontransaction(c).exec("SET application_name = 'keel-test'");
    return absl::OkStatus();
  };
  auto pool = MakePool(std::move(o));
  auto sum = pool->Run(Deadline::After(5s),
                       [](pqxx::work& tx) { return tx.exec_prepared1("add", 2, 3)[0].as<int>(); });
  REQUIRE(sum.ok());
  CHECK(*sum == 5);
  auto name = pool->Run(Deadline::After(5s), [](pqxx::work& tx) {
    return tx.exec1("SHOW application_name")[0].as<std::string>();
  });
  CHECK(name.value() == "keel-test");
}

TEST_CASE("postgres pool fails creation with UNAVAILABLE when on_connect fails", "[postgres]") {
  PoolOptions o;
  o.on_connect = [](pqxx::connection_base& c) {
    pqxx::nontransaction(c).exec("SELECT * FROM no_such_table");
    return absl::OkStatus();
  };
  auto pool = MakePool(std::move(o));
  auto lease = pool->Acquire(Deadline::After(5s));
  CHECK(lease.status().code() == absl::StatusCode::kUnavailable);
  CHECK(lease.status().message().find("no_such_table") != absl::string_view::npos);
}

TEST_CASE("postgres pool reports a refused connection as UNAVAILABLE at once", "[postgres]") {
  const int port = test::FreeLoopbackPort();
  auto pool = Pool::Create({.conninfo = "host=127.0.0.1 port=" + std::to_string(port) +
                                        " user=postgres dbname=postgres",
                            .pool = {.name = "pg-down", .background_maintenance = false}})
                  .value();
  const auto start = std::chrono::steady_clock::now();
  auto lease = pool->Acquire(Deadline::After(5s));
  CHECK(std::chrono::steady_clock::now() - start < 1s);
  CHECK(lease.status().code() == absl::StatusCode::kUnavailable);
  CHECK(lease.status().message().find("postgres pool \"pg-down\": cannot create a connection:") ==
        0);
  CHECK(lease.status().message().find("refused") != absl::string_view::npos);
}

TEST_CASE("postgres pool validates a connection that sat idle", "[postgres]") {
  ManualClock clock;
  PoolOptions o;
  o.conninfo = test::RequireEnv("KEEL_TEST_POSTGRES_URL");
  o.pool = {.name = "pg-idle", .max_size = 1, .background_maintenance = false};
  auto pool = Pool::Create(std::move(o), clock).value();
  int pid = 0;
  {
    auto lease = pool->Acquire(Deadline::After(5s, clock));
    REQUIRE(lease.ok());
    pid = (*lease)->backendpid();
    // Kill our own backend from another connection while it sits idle in the pool.
    lease->Release();
    pqxx::connection admin(test::RequireEnv("KEEL_TEST_POSTGRES_URL"));
    pqxx::nontransaction(admin).exec("SELECT pg_terminate_backend(" + std::to_string(pid) + ")");
    // pg_terminate_backend only signals: wait until the backend is gone.
    for (int i = 0; i < 500; ++i) {
      pqxx::nontransaction tx(admin);
      if (tx.exec("SELECT 1 FROM pg_stat_activity WHERE pid = " + std::to_string(pid)).empty()) {
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
  }
  clock.Advance(1s);  // past the validation bypass: the next Acquire checks it
  auto lease = pool->Acquire(Deadline::After(5s, clock));
  REQUIRE(lease.ok());
  CHECK((*lease)->backendpid() != pid);
  CHECK(pool->Stats().validation_failures_total == 1);
}

TEST_CASE("postgres pool rejects options without a conninfo", "[postgres]") {
  auto pool = Pool::Create({});
  CHECK(pool.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(pool.status().message() == "postgres pool \"postgres\": postgres.conninfo must be set");
}

TEST_CASE("postgres Execute runs one statement with bound parameters", "[postgres]") {
  auto pool = MakePool();
  auto rows =
      pool->Execute(Deadline::After(5s), "SELECT $1::int + $2::int AS sum, $3::text, $4::text", 40,
                    2, std::string_view("forty-two"), std::nullopt);
  REQUIRE(rows.ok());
  REQUIRE(rows->size() == 1);
  CHECK(rows->column_name(0) == "sum");
  CHECK(rows->Get<int>(0, 0).value() == 42);
  CHECK(rows->Text(0, 1) == "forty-two");
  CHECK(rows->IsNull(0, 2));
  CHECK(rows->Get<int>(0, 2).status().code() == absl::StatusCode::kInvalidArgument);
  auto bad = pool->Execute(Deadline::After(5s), "SELEC 1");
  CHECK(bad.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(bad.status().message().find("postgres pool \"pg-test\": ERROR: syntax error") == 0);
  CHECK(bad.status().message().find("(SQLSTATE 42601)") != absl::string_view::npos);
  CHECK(pool->Stats().destroyed_total == 0);  // a statement error leaves the connection usable
}

TEST_CASE("postgres Execute refuses NUL bytes in text and binds Bytes as bytea", "[postgres]") {
  auto pool = MakePool();
  const std::string with_nul("ab\0cd", 5);
  auto text = pool->Execute(Deadline::After(5s), "SELECT $1::text", with_nul);
  CHECK(text.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(text.status().message().find("text parameter $1 contains a NUL byte at offset 2") !=
        absl::string_view::npos);
  auto sql = pool->Execute(Deadline::After(5s), std::string_view("SELECT 1\0; DROP TABLE x", 24));
  CHECK(sql.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK(sql.status().message().find("SQL text contains a NUL byte at offset 8") !=
        absl::string_view::npos);
  // Binary: all five bytes arrive, the NUL included.
  auto bytes = pool->Execute(Deadline::After(5s),
                             "SELECT length($1::bytea), encode($1::bytea, 'hex')", Bytes{with_nul});
  REQUIRE(bytes.ok());
  CHECK(bytes->Get<int>(0, 0).value() == 5);
  CHECK(bytes->Text(0, 1) == "6162006364");
}

TEST_CASE("postgres Execute ends by its deadline on the client", "[postgres]") {
  auto pool = MakePool();
  const auto start = std::chrono::steady_clock::now();
  auto slow = pool->Execute(Deadline::After(150ms), "SELECT pg_sleep(5)");
  const auto took = std::chrono::steady_clock::now() - start;
  CHECK(slow.status().code() == absl::StatusCode::kDeadlineExceeded);
  CHECK(slow.status().message().find("postgres pool \"pg-test\": no reply within") == 0);
  CHECK(took < 200ms);
  CHECK(pool->Stats().destroyed_total == 1);  // discarded: its reply is still owed
  CHECK(pool->Execute(Deadline::After(5s), "SELECT 1").ok());
}

TEST_CASE("postgres pool errors never contain the password", "[postgres]") {
  const std::string secret = "s3cr3t-pw";
  SECTION("a malformed URL (libpq's own message quotes it)") {
    auto pool = Pool::Create({.conninfo = "postgresql://app:" + secret + "@[::1]x/db",
                              .pool = {.name = "pg-bad-url", .background_maintenance = false}})
                    .value();
    auto lease = pool->Acquire(Deadline::After(2s));
    INFO(lease.status().message());
    CHECK(lease.status().code() == absl::StatusCode::kUnavailable);
    CHECK(lease.status().message().find("unexpected character \"x\" at position") !=
          absl::string_view::npos);
    CHECK(lease.status().message().find("\"postgresql://app:***@[::1]x/db\"") !=
          absl::string_view::npos);
    CHECK(lease.status().message().find(secret) == absl::string_view::npos);
  }
  SECTION("a malformed key=value conninfo") {
    auto pool = Pool::Create({.conninfo = "host=127.0.0.1 password=" + secret + " port='x",
                              .pool = {.name = "pg-bad-kv", .background_maintenance = false}})
                    .value();
    auto lease = pool->Acquire(Deadline::After(2s));
    INFO(lease.status().message());
    CHECK(lease.status().code() == absl::StatusCode::kUnavailable);
    CHECK(lease.status().message().find(secret) == absl::string_view::npos);
  }
  SECTION("a password libpq misreads and quotes bare") {
    for (const std::string& conninfo :
         {"postgresql://app:" + secret +
              "/x@127.0.0.1/db",  // read as host "app", port "s3cr3t-pw/x"
          "postgresql://127.0.0.1/db?password=" + secret + "%zz"}) {  // a bad percent escape
      auto pool = Pool::Create({.conninfo = conninfo,
                                .pool = {.name = "pg-misread", .background_maintenance = false}})
                      .value();
      auto lease = pool->Acquire(Deadline::After(2s));
      INFO(conninfo << " -> " << lease.status().message());
      CHECK(lease.status().code() == absl::StatusCode::kUnavailable);
      CHECK(lease.status().message().find("s3cr3t") == absl::string_view::npos);
    }
  }
  SECTION("a refused connection") {
    const int port = test::FreeLoopbackPort();
    auto pool = Pool::Create({.conninfo = "postgresql://app:" + secret +
                                          "@127.0.0.1:" + std::to_string(port) + "/db",
                              .pool = {.name = "pg-refused", .background_maintenance = false}})
                    .value();
    auto lease = pool->Acquire(Deadline::After(2s));
    INFO(lease.status().message());
    CHECK(lease.status().code() == absl::StatusCode::kUnavailable);
    CHECK(lease.status().message().find("refused") != absl::string_view::npos);
    CHECK(lease.status().message().find(secret) == absl::string_view::npos);
  }
  SECTION("a failed on_connect that quotes the conninfo") {
    PoolOptions o;
    o.on_connect = [&](pqxx::connection_base&) {
      return absl::InternalError("cannot use postgresql://app:" + secret + "@db/x");
    };
    auto pool = MakePool(std::move(o));
    auto lease = pool->Acquire(Deadline::After(5s));
    INFO(lease.status().message());
    CHECK(lease.status().code() == absl::StatusCode::kUnavailable);
    CHECK(lease.status().message().find("postgresql://app:***@db/x") != absl::string_view::npos);
  }
}

}  // namespace
}  // namespace keel::postgres
