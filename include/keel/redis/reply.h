// keel/redis/reply.h: a Redis reply as a typed value, and how server errors become a Status.
//
// Defines `keel::redis::Reply` (nil, integer, bulk string, array, status, error) and
// `keel::redis::ServerError` (the raw server message carried by a Status that came from an
// error reply). Strings are binary-safe: they may hold any bytes, NULs included.
//
// A top-level error reply never reaches callers as a Reply: Client and Connection turn it into
// an absl::Status (see ServerErrorToStatus). Error replies nested in arrays (EXEC results, a
// Lua table) stay Reply values of type kError.
//
// Thread safety: a Reply is an immutable-after-construction value; share const references.
//
//   absl::StatusOr<Reply> r = client.Command(deadline, "GET", key);
//   if (!r.ok()) return r.status();
//   if (r->is_nil()) return NotFound();
//   std::string value = r->str();
//   for (const Reply& e : client.Command(d, "LRANGE", key, 0, -1)->elements()) ...
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace keel::redis {

class Reply {
 public:
  enum class Type { kNil, kInteger, kString, kArray, kStatus, kError };

  Reply() = default;  // nil
  static Reply Nil() { return Reply(); }
  static Reply Integer(int64_t v);
  static Reply String(std::string s);
  static Reply Status(std::string s);
  static Reply Error(std::string s);
  static Reply Array(std::vector<Reply> elements);

  Type type() const { return type_; }
  bool is_nil() const { return type_ == Type::kNil; }
  bool is_integer() const { return type_ == Type::kInteger; }
  bool is_string() const { return type_ == Type::kString; }
  bool is_array() const { return type_ == Type::kArray; }
  bool is_status() const { return type_ == Type::kStatus; }
  bool is_error() const { return type_ == Type::kError; }

  // The integer. REQUIRES: is_integer() (otherwise 0).
  int64_t integer() const { return integer_; }
  // The bytes of a bulk string, status or error. Empty for other types.
  const std::string& str() const { return str_; }
  // The elements of an array. Empty for other types.
  const std::vector<Reply>& elements() const { return elements_; }

  // Checked accessors for code that parses replies it expects: INTERNAL naming the expected
  // and actual types when the reply has another shape (a protocol surprise, not a user error).
  absl::StatusOr<int64_t> AsInteger() const;
  // Bulk string or status.
  absl::StatusOr<std::string> AsString() const;
  // Bulk string or status; nullopt for nil.
  absl::StatusOr<std::optional<std::string>> AsOptionalString() const;

  // Human-readable form for logs and test failures: 42, "bytes", nil, [1, "a"], +OK, -ERR x.
  std::string DebugString() const;

  friend bool operator==(const Reply& a, const Reply& b) = default;

 private:
  Type type_ = Type::kNil;
  int64_t integer_ = 0;
  std::string str_;
  std::vector<Reply> elements_;
};

std::string_view TypeName(Reply::Type type);

// The Status for a top-level error reply such as "WRONGTYPE Operation against a key holding the
// wrong kind of value". The message is `<component>: <server message>`; the server message is
// also attached as a payload (ServerError reads it back). Codes by the error's first word:
//
//   READONLY, LOADING, MASTERDOWN, BUSY, TRYAGAIN, CLUSTERDOWN  UNAVAILABLE (retryable: a
//                                                    failover, restart or busy script)
//   OOM                                              RESOURCE_EXHAUSTED
//   NOAUTH, WRONGPASS, NOPERM                        PERMISSION_DENIED
//   NOSCRIPT                                         NOT_FOUND
//   EXECABORT                                        ABORTED
//   anything else (ERR, WRONGTYPE, script errors)    INVALID_ARGUMENT
absl::Status ServerErrorToStatus(std::string_view component, std::string_view message);

// The raw server error message a Status carries, when it came from an error reply.
std::optional<std::string> ServerError(const absl::Status& status);

// Whether `status` came from an error reply whose first word is `prefix` ("NOSCRIPT").
bool IsServerError(const absl::Status& status, std::string_view prefix);

}  // namespace keel::redis
