// keel/postgres/connection.h: the connection a postgres::Pool hands out, the parameters of
// keel's single-statement path and its result.
//
// Defines `keel::postgres::Connection` (a libpqxx connection, `pqxx::connection_base`, opened by
// keel without blocking past a deadline), `keel::postgres::Bytes` (a parameter bound as bytea,
// binary) and `keel::postgres::Rows` (the result of Pool::Execute).
//
// Thread safety: a Connection is used by one thread at a time (as every libpqxx connection);
// Rows is an immutable value, safe to read from several threads.
//
//   absl::StatusOr<keel::postgres::Rows> rows = pool->Execute(
//       deadline, "SELECT id, body FROM diary WHERE owner = $1 AND day = $2", owner, day);
//   if (!rows.ok()) return rows.status();
//   for (int r = 0; r < rows->size(); ++r) {
//     absl::StatusOr<int64_t> id = rows->Get<int64_t>(r, 0);
//     std::string_view body = rows->Text(r, 1);
//   }
//   // A blob with NUL bytes goes as bytea; a text parameter with a NUL is INVALID_ARGUMENT.
//   pool->Execute(deadline, "INSERT INTO blobs VALUES ($1)", keel::postgres::Bytes{blob});
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <string_view>
#include <type_traits>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "keel/internal/strings.h"

extern "C" {
struct pg_conn;
struct pg_result;
}

namespace keel::postgres {

namespace internal {
// Hands libpqxx a libpq connection that keel has already opened (libpqxx 6's connection
// policies: https://libpqxx.readthedocs.io, "connectionpolicy"), and keeps track of the handle
// so keel can run its own statements on it with a bounded wait.
class AdoptedHandle final : public pqxx::connectionpolicy {
 public:
  explicit AdoptedHandle(pg_conn* conn) : pqxx::connectionpolicy(std::string()), adopt_(conn) {}
  handle do_startconnect(handle orig) override;
  handle do_completeconnect(handle orig) override;
  handle do_dropconnect(handle orig) noexcept override;
  handle do_disconnect(handle orig) noexcept override;
  pg_conn* current() const { return current_; }

 private:
  pg_conn* adopt_;  // given to libpqxx once; a reconnect finds nullptr and fails
  pg_conn* current_ = nullptr;
};
}  // namespace internal

// A libpqxx connection whose socket keel opened with PQconnectStart/PQconnectPoll, so connecting
// ends by the deadline. Use it as any `pqxx::connection_base`: `pqxx::work tx(conn)`,
// `conn.prepare(...)`. libpqxx's silent reconnection is off: a broken connection stays broken and
// the pool replaces it.
class Connection final : public pqxx::connection_base {
 public:
  ~Connection();
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;

  // The libpq handle while the connection is open, else nullptr. keel runs its own statements on
  // it (validation, Execute); callers should use libpqxx.
  pg_conn* raw() const { return policy_.current(); }

  // Takes ownership of an open libpq connection (keel's connect path; not for users).
  static std::unique_ptr<Connection> Adopt(pg_conn* conn);

 private:
  explicit Connection(pg_conn* conn);
  internal::AdoptedHandle policy_;
};

// A parameter bound as `bytea` in binary format: its bytes go to the server as they are, NUL
// bytes included. The bytes must outlive the call.
struct Bytes {
  std::string_view data;
};

// The rows of a statement run by Pool::Execute, in text format. Move-only; cheap to move.
class Rows {
 public:
  Rows() = default;
  explicit Rows(pg_result* result);  // takes ownership
  Rows(Rows&&) noexcept = default;
  Rows& operator=(Rows&&) noexcept = default;

  int size() const;     // rows
  int columns() const;  // columns
  bool empty() const { return size() == 0; }
  // Rows inserted, updated or deleted by the statement (0 for other statements).
  int64_t affected_rows() const;
  // The server's command tag ("SELECT 1", "INSERT 0 3", "COMMIT", "ROLLBACK"); "" when empty.
  std::string_view command_tag() const;
  // The name of column `col`. REQUIRES: 0 <= col < columns().
  std::string_view column_name(int col) const;

  // REQUIRES (these three): 0 <= row < size(), 0 <= col < columns().
  bool IsNull(int row, int col) const;
  // The value as the server sent it in text format ("" for NULL).
  std::string_view Text(int row, int col) const;
  // The value converted with libpqxx's string conversion (pqxx::from_string). INVALID_ARGUMENT
  // when it is NULL or does not convert (naming the row and column).
  template <typename T>
  absl::StatusOr<T> Get(int row, int col) const {
    if (IsNull(row, col)) return NullError(row, col);
    try {
      T value;
      pqxx::from_string(std::string(Text(row, col)), value);
      return value;
    } catch (const std::exception& e) {
      return ConversionError(row, col, e.what());
    }
  }

 private:
  absl::Status NullError(int row, int col) const;
  absl::Status ConversionError(int row, int col, std::string_view what) const;
  struct Clear {
    void operator()(pg_result* r) const;
  };
  std::unique_ptr<pg_result, Clear> result_;
};

namespace internal {

// One bound parameter: text (libpq's default format) or binary bytea; NULL when `null`.
struct Param {
  std::string text;
  std::string_view bytes;  // binary only: points into the caller's Bytes, unless `owned`
  bool null = false;
  bool binary = false;
  bool owned = false;  // binary bytes copied into `text` (Statement)
};

inline void AddParam(std::vector<Param>& out, std::string_view s) {
  out.push_back(Param{.text = std::string(s)});
}
inline void AddParam(std::vector<Param>& out, const char* s) {
  out.push_back(Param{.text = std::string(s)});
}
inline void AddParam(std::vector<Param>& out, const std::string& s) {
  out.push_back(Param{.text = s});
}
inline void AddParam(std::vector<Param>& out, Bytes b) {
  out.push_back(Param{.bytes = b.data, .binary = true});
}
inline void AddParam(std::vector<Param>& out, std::nullopt_t) {
  out.push_back(Param{.null = true});
}
inline void AddParam(std::vector<Param>& out, std::nullptr_t) {
  out.push_back(Param{.null = true});
}
template <typename T>
void AddParam(std::vector<Param>& out, const std::optional<T>& v) {
  if (v) {
    AddParam(out, *v);
  } else {
    out.push_back(Param{.null = true});
  }
}
template <typename T, typename = std::enable_if_t<std::is_arithmetic_v<T>>>
void AddParam(std::vector<Param>& out, T v) {
  out.push_back(Param{.text = pqxx::to_string(v)});
}

}  // namespace internal

// One statement and its bound parameters, owned: what Pool::AsyncPipeline sends. Parameters
// take the same types as Pool::Execute; Bytes are copied, so nothing needs to outlive the call.
//
//   std::vector<keel::postgres::Statement> batch;
//   batch.emplace_back("INSERT INTO events VALUES ($1, $2)", id, body);
//   batch.emplace_back("SELECT count(*) FROM events");
struct Statement {
  template <typename... Params>
  explicit Statement(std::string sql_text, const Params&... bound) : sql(std::move(sql_text)) {
    params.reserve(sizeof...(Params));
    (internal::AddParam(params, bound), ...);
    for (internal::Param& p : params) {
      if (p.binary) {
        p.text = std::string(p.bytes);
        p.bytes = {};
        p.owned = true;
      }
    }
  }
  std::string sql;
  std::vector<internal::Param> params;
};

}  // namespace keel::postgres
