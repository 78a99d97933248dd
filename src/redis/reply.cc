#include "keel/redis/reply.h"

#include <utility>

#include "absl/strings/cord.h"
#include "keel/internal/strings.h"

namespace keel::redis {
namespace {

using keel::internal::StrCat;

constexpr absl::string_view kServerErrorPayloadUrl = "type.keel.dev/redis-server-error";

absl::Status TypeMismatch(std::string_view expected, Reply::Type actual) {
  return absl::InternalError(
      StrCat("redis: expected a ", expected, " reply, got ", TypeName(actual)));
}

void AppendDebug(const Reply& r, std::string& out) {
  switch (r.type()) {
    case Reply::Type::kNil:
      out += "nil";
      return;
    case Reply::Type::kInteger:
      out += std::to_string(r.integer());
      return;
    case Reply::Type::kStatus:
      out += "+" + r.str();
      return;
    case Reply::Type::kError:
      out += "-" + r.str();
      return;
    case Reply::Type::kString: {
      out += '"';
      for (unsigned char c : r.str()) {
        if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
          static constexpr char kHex[] = "0123456789abcdef";
          out += "\\x";
          out += kHex[c >> 4];
          out += kHex[c & 0xf];
        } else {
          out += static_cast<char>(c);
        }
      }
      out += '"';
      return;
    }
    case Reply::Type::kArray:
      out += '[';
      for (size_t i = 0; i < r.elements().size(); ++i) {
        if (i > 0) out += ", ";
        AppendDebug(r.elements()[i], out);
      }
      out += ']';
      return;
  }
}

}  // namespace

Reply Reply::Integer(int64_t v) {
  Reply r;
  r.type_ = Type::kInteger;
  r.integer_ = v;
  return r;
}
Reply Reply::String(std::string s) {
  Reply r;
  r.type_ = Type::kString;
  r.str_ = std::move(s);
  return r;
}
Reply Reply::Status(std::string s) {
  Reply r;
  r.type_ = Type::kStatus;
  r.str_ = std::move(s);
  return r;
}
Reply Reply::Error(std::string s) {
  Reply r;
  r.type_ = Type::kError;
  r.str_ = std::move(s);
  return r;
}
Reply Reply::Array(std::vector<Reply> elements) {
  Reply r;
  r.type_ = Type::kArray;
  r.elements_ = std::move(elements);
  return r;
}

absl::StatusOr<int64_t> Reply::AsInteger() const {
  if (type_ != Type::kInteger) return TypeMismatch("integer", type_);
  return integer_;
}

absl::StatusOr<std::string> Reply::AsString() const {
  if (type_ != Type::kString && type_ != Type::kStatus) return TypeMismatch("string", type_);
  return str_;
}

absl::StatusOr<std::optional<std::string>> Reply::AsOptionalString() const {
  if (type_ == Type::kNil) return std::optional<std::string>();
  if (type_ != Type::kString && type_ != Type::kStatus) return TypeMismatch("string", type_);
  return std::optional<std::string>(str_);
}

std::string Reply::DebugString() const {
  std::string out;
  AppendDebug(*this, out);
  return out;
}

std::string_view TypeName(Reply::Type type) {
  switch (type) {
    case Reply::Type::kNil:
      return "nil";
    case Reply::Type::kInteger:
      return "integer";
    case Reply::Type::kString:
      return "string";
    case Reply::Type::kArray:
      return "array";
    case Reply::Type::kStatus:
      return "status";
    case Reply::Type::kError:
      return "error";
  }
  return "unknown";
}

absl::Status ServerErrorToStatus(std::string_view component, std::string_view message) {
  const std::string_view word = message.substr(0, message.find(' '));
  absl::StatusCode code = absl::StatusCode::kInvalidArgument;
  if (word == "READONLY" || word == "LOADING" || word == "MASTERDOWN" || word == "BUSY" ||
      word == "TRYAGAIN" || word == "CLUSTERDOWN") {
    code = absl::StatusCode::kUnavailable;
  } else if (word == "OOM") {
    code = absl::StatusCode::kResourceExhausted;
  } else if (word == "NOAUTH" || word == "WRONGPASS" || word == "NOPERM") {
    code = absl::StatusCode::kPermissionDenied;
  } else if (word == "NOSCRIPT") {
    code = absl::StatusCode::kNotFound;
  } else if (word == "EXECABORT") {
    code = absl::StatusCode::kAborted;
  }
  absl::Status status(code, StrCat(component, ": ", message));
  status.SetPayload(kServerErrorPayloadUrl, absl::Cord(keel::internal::ToAbsl(message)));
  return status;
}

std::optional<std::string> ServerError(const absl::Status& status) {
  auto payload = status.GetPayload(kServerErrorPayloadUrl);
  if (!payload) return std::nullopt;
  return std::string(*payload);
}

bool IsServerError(const absl::Status& status, std::string_view prefix) {
  auto payload = status.GetPayload(kServerErrorPayloadUrl);
  if (!payload) return false;
  const std::string message(*payload);
  return message.compare(0, prefix.size(), prefix) == 0 &&
         (message.size() == prefix.size() || message[prefix.size()] == ' ');
}

}  // namespace keel::redis
