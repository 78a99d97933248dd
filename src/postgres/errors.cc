// Mapping of libpqxx exceptions and PostgreSQL SQLSTATEs to keel's status codes (the table is in
// keel/postgres/pool.h).
#include <algorithm>
#include <chrono>
#include <exception>
#include <string>

#include "keel/internal/redact.h"
#include "keel/internal/strings.h"
#include "keel/postgres/pool.h"
#include "libpq_io.h"

namespace keel::postgres::internal {

using keel::internal::StrCat;

std::string CleanLibpqMessage(std::string_view what) {
  std::string s = keel::internal::RedactCredentials(what);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  std::replace(s.begin(), s.end(), '\n', ' ');
  for (std::string::size_type at; (at = s.find("  ")) != std::string::npos;) s.erase(at, 1);
  return s;
}

namespace {

absl::Status Make(absl::StatusCode code, std::string_view component, std::string_view what,
                  std::string_view sqlstate = "") {
  std::string msg = StrCat(component, ": ", CleanLibpqMessage(what));
  if (!sqlstate.empty())
    absl::StrAppend(&msg, " (SQLSTATE ", keel::internal::ToAbsl(sqlstate), ")");
  return absl::Status(code, msg);
}

bool StartsWith(std::string_view s, std::string_view prefix) {
  return s.substr(0, prefix.size()) == prefix;
}

absl::StatusCode CodeForSqlState(std::string_view state, bool* broken) {
  if (StartsWith(state, "08") || state == "57P01" || state == "57P02" || state == "57P03") {
    *broken = true;  // connection exception, admin or crash shutdown: the session is gone
    return absl::StatusCode::kUnavailable;
  }
  if (state == "57014") return absl::StatusCode::kDeadlineExceeded;
  if (state == "23505") return absl::StatusCode::kAlreadyExists;
  if (state == "40003") return absl::StatusCode::kUnknown;
  if (StartsWith(state, "40")) return absl::StatusCode::kAborted;
  if (state == "25006") return absl::StatusCode::kFailedPrecondition;
  if (state == "42501") return absl::StatusCode::kPermissionDenied;
  if (StartsWith(state, "53")) return absl::StatusCode::kUnavailable;  // resources, connections
  if (StartsWith(state, "22") || StartsWith(state, "23") || StartsWith(state, "42")) {
    return absl::StatusCode::kInvalidArgument;
  }
  return absl::StatusCode::kInternal;
}

// libpqxx 6.4 leaves sqlstate() empty on some of the subclasses it throws (e.g.
// insufficient_privilege); the class itself says which condition it was.
std::string SqlState(const pqxx::sql_error& e) {
  if (!e.sqlstate().empty()) return e.sqlstate();
  if (dynamic_cast<const pqxx::unique_violation*>(&e)) return "23505";
  if (dynamic_cast<const pqxx::foreign_key_violation*>(&e)) return "23503";
  if (dynamic_cast<const pqxx::not_null_violation*>(&e)) return "23502";
  if (dynamic_cast<const pqxx::check_violation*>(&e)) return "23514";
  if (dynamic_cast<const pqxx::integrity_constraint_violation*>(&e)) return "23000";
  if (dynamic_cast<const pqxx::insufficient_privilege*>(&e)) return "42501";
  if (dynamic_cast<const pqxx::undefined_table*>(&e)) return "42P01";
  if (dynamic_cast<const pqxx::undefined_column*>(&e)) return "42703";
  if (dynamic_cast<const pqxx::undefined_function*>(&e)) return "42883";
  if (dynamic_cast<const pqxx::syntax_error*>(&e)) return "42601";
  if (dynamic_cast<const pqxx::data_exception*>(&e)) return "22000";
  if (dynamic_cast<const pqxx::insufficient_resources*>(&e)) return "53000";
  return "";
}

}  // namespace

absl::Status StatusFromCurrentException(std::string_view component, bool* broken) {
  try {
    throw;
  } catch (const pqxx::broken_connection& e) {
    *broken = true;
    return Make(absl::StatusCode::kUnavailable, component, e.what());
  } catch (const pqxx::sql_error& e) {
    const std::string state = SqlState(e);
    const absl::StatusCode code = CodeForSqlState(state, broken);
    return Make(code, component, e.what(), state);
  } catch (const pqxx::in_doubt_error& e) {
    *broken = true;
    return Make(absl::StatusCode::kUnknown, component,
                StrCat("commit outcome unknown: ", e.what()));
  } catch (const pqxx::statement_completion_unknown& e) {
    *broken = true;
    return Make(absl::StatusCode::kUnknown, component, e.what(), "40003");
  } catch (const pqxx::serialization_failure& e) {
    return Make(absl::StatusCode::kAborted, component, e.what(), "40001");
  } catch (const pqxx::deadlock_detected& e) {
    return Make(absl::StatusCode::kAborted, component, e.what(), "40P01");
  } catch (const pqxx::transaction_rollback& e) {
    return Make(absl::StatusCode::kAborted, component, e.what());
  } catch (const pqxx::usage_error& e) {
    return Make(absl::StatusCode::kFailedPrecondition, component, e.what());
  } catch (const pqxx::argument_error& e) {
    return Make(absl::StatusCode::kInvalidArgument, component, e.what());
  } catch (const pqxx::conversion_error& e) {
    return Make(absl::StatusCode::kInvalidArgument, component, e.what());
  } catch (const pqxx::range_error& e) {
    return Make(absl::StatusCode::kInvalidArgument, component, e.what());
  } catch (const pqxx::failure& e) {
    return Make(absl::StatusCode::kInternal, component, e.what());
  } catch (const std::exception& e) {
    return Make(absl::StatusCode::kInternal, component, StrCat("exception: ", e.what()));
  } catch (...) {
    return Make(absl::StatusCode::kInternal, component, "unknown exception");
  }
}

absl::Status StatusFromResult(std::string_view component, const PGresult* result, PGconn* conn,
                              bool* broken) {
  const char* state = PQresultErrorField(result, PG_DIAG_SQLSTATE);
  const std::string sqlstate = state != nullptr ? state : "";
  const char* text = PQresultErrorMessage(result);
  absl::StatusCode code =
      sqlstate.empty() ? absl::StatusCode::kInternal : CodeForSqlState(sqlstate, broken);
  if (PQstatus(conn) != CONNECTION_OK) {  // whatever the result said, the session is gone
    *broken = true;
    code = absl::StatusCode::kUnavailable;
  }
  return Make(code, component, text != nullptr && *text != '\0' ? text : PQerrorMessage(conn),
              sqlstate);
}

absl::Status ExpiredError(std::string_view component) {
  return absl::DeadlineExceededError(StrCat(component, ": deadline expired before the query"));
}

absl::Status EmptyLeaseError(std::string_view component) {
  return absl::FailedPreconditionError(StrCat(component, ": Run() on an empty lease"));
}

}  // namespace keel::postgres::internal
