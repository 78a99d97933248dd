// keel::postgres::Connection (a libpqxx connection over a libpq handle keel opened) and Rows.
#include "keel/postgres/connection.h"

#include <libpq-fe.h>

#include <cstdlib>

#include "keel/internal/strings.h"

namespace keel::postgres {
namespace internal {

AdoptedHandle::handle AdoptedHandle::do_startconnect(handle orig) {
  if (orig == nullptr) {
    orig = adopt_;
    adopt_ = nullptr;
  }
  current_ = orig;
  return orig;
}

AdoptedHandle::handle AdoptedHandle::do_completeconnect(handle orig) {
  current_ = orig;
  return orig;
}

AdoptedHandle::handle AdoptedHandle::do_dropconnect(handle orig) noexcept {
  current_ = pqxx::connectionpolicy::do_dropconnect(orig);
  return current_;
}

AdoptedHandle::handle AdoptedHandle::do_disconnect(handle orig) noexcept {
  current_ = pqxx::connectionpolicy::do_disconnect(orig);
  return current_;
}

}  // namespace internal

Connection::Connection(pg_conn* conn) : pqxx::connection_base(policy_), policy_(conn) {
  init();  // activates the adopted handle (no I/O: it is already connected)
  // Only now: libpqxx counts the first activation as a reactivation. libpqxx 6 silently reconnects
  // a broken connection on next use, losing session state (prepared statements, SETs) behind the
  // pool's back; here it could not even reconnect (the policy has no conninfo). The pool replaces
  // broken connections itself, so reactivation is off.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
  inhibit_reactivation(true);
#pragma GCC diagnostic pop
}

Connection::~Connection() { close(); }

std::unique_ptr<Connection> Connection::Adopt(pg_conn* conn) {
  return std::unique_ptr<Connection>(new Connection(conn));
}

Rows::Rows(pg_result* result) : result_(result) {}

void Rows::Clear::operator()(pg_result* r) const { PQclear(r); }

int Rows::size() const { return result_ ? PQntuples(result_.get()) : 0; }
int Rows::columns() const { return result_ ? PQnfields(result_.get()) : 0; }

int64_t Rows::affected_rows() const {
  if (!result_) return 0;
  const char* n = PQcmdTuples(result_.get());
  return n != nullptr && *n != '\0' ? std::strtoll(n, nullptr, 10) : 0;
}

std::string_view Rows::command_tag() const {
  if (!result_) return "";
  const char* tag = PQcmdStatus(result_.get());
  return tag != nullptr ? tag : "";
}

std::string_view Rows::column_name(int col) const {
  const char* name = PQfname(result_.get(), col);
  return name != nullptr ? name : "";
}

bool Rows::IsNull(int row, int col) const { return PQgetisnull(result_.get(), row, col) == 1; }

std::string_view Rows::Text(int row, int col) const {
  return std::string_view(PQgetvalue(result_.get(), row, col),
                          static_cast<size_t>(PQgetlength(result_.get(), row, col)));
}

absl::Status Rows::NullError(int row, int col) const {
  return absl::InvalidArgumentError(
      keel::internal::StrCat("row ", row, " column \"", column_name(col), "\" is NULL"));
}

absl::Status Rows::ConversionError(int row, int col, std::string_view what) const {
  return absl::InvalidArgumentError(keel::internal::StrCat(
      "row ", row, " column \"", column_name(col), "\" does not convert: ", what));
}

}  // namespace keel::postgres
