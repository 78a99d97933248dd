// postgres::Fencing: one conditional upsert per guarded write (see fencing.h).
#include "keel/postgres/fencing.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "keel/internal/strings.h"
#include "keel/internal/validate.h"

namespace keel::postgres {
namespace {

using keel::internal::StrCat;

// One unquoted identifier part: [A-Za-z_][A-Za-z0-9_]{0,62}.
bool IsIdentifier(std::string_view part) {
  if (part.empty() || part.size() > 63) return false;
  if (absl::ascii_isdigit(static_cast<unsigned char>(part.front()))) return false;
  for (char c : part) {
    if (!absl::ascii_isalnum(static_cast<unsigned char>(c)) && c != '_') return false;
  }
  return true;
}

bool IsTableName(std::string_view name) {
  const size_t dot = name.find('.');
  if (dot == std::string_view::npos) return IsIdentifier(name);
  return IsIdentifier(name.substr(0, dot)) && IsIdentifier(name.substr(dot + 1));
}

}  // namespace

absl::StatusOr<Fencing> Fencing::Create(FencingOptions options) {
  if (!IsTableName(options.table)) {
    return keel::internal::InvalidOption("fencing", "table",
                                         "an unquoted identifier, optionally schema-qualified",
                                         StrCat("\"", options.table, "\""));
  }
  return Fencing(std::move(options.table));
}

Fencing::Fencing(std::string table)
    : table_(std::move(table)),
      prefix_(StrCat("postgres fencing \"", table_, "\": ")),
      check_sql_(StrCat("INSERT INTO ", table_,
                        " (resource, token) VALUES ($1, $2) ON CONFLICT (resource) DO UPDATE SET "
                        "token = EXCLUDED.token WHERE ",
                        table_, ".token <= EXCLUDED.token")) {}

absl::Status Fencing::CreateTable(Pool& pool, const Deadline& deadline) const {
  return pool
      .Execute(deadline, StrCat("CREATE TABLE IF NOT EXISTS ", table_,
                                " (resource text PRIMARY KEY, token bigint NOT NULL)"))
      .status();
}

absl::Status Fencing::Check(Transaction& tx, std::string_view resource, int64_t token) const {
  if (resource.empty() || resource.find('\0') != std::string_view::npos) {
    return absl::InvalidArgumentError(
        StrCat(prefix_, "resource must be non-empty and hold no NUL byte"));
  }
  if (token < 1) {
    return absl::InvalidArgumentError(StrCat(prefix_, "token must be >= 1, got ", token));
  }
  absl::StatusOr<Rows> rows = tx.Execute(check_sql_, resource, token);
  if (!rows.ok()) return rows.status();
  if (rows->affected_rows() == 1) return absl::OkStatus();
  return absl::AbortedError(StrCat(prefix_, "token ", token, " for resource \"", resource,
                                   "\" is older than the last one recorded: a newer lock holder "
                                   "has written (this holder's lease was lost)"));
}

}  // namespace keel::postgres
