// Fuzzes keel::redis::Options::FromUrl.
//
// Half of the inputs are URLs as they come; the other half are built as
// `<scheme>://<user>:<password>@<rest>` so the target knows which bytes are the password.
// Invariants, beyond "no crash, no sanitizer report":
//   - an accepted URL yields options that pass Validate(), with ports in 1..65535;
//   - an accepted URL's fields round-trip: the URL rebuilt from them (percent-encoding user,
//     password and master name) parses to the same server, sentinels, master name, user,
//     password and db;
//   - an error is INVALID_ARGUMENT, and no part of the password appears in what its message
//     quotes of the URL (keel quotes input as "..." with \xHH escapes; see fuzz_check.h for
//     which pieces count).
#include <fuzzer/FuzzedDataProvider.h>

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_check.h"
#include "keel/internal/strings.h"
#include "keel/redis/options.h"

namespace {

using keel::fuzz::Check;
using keel::redis::Options;

std::string PercentEncode(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
        c == '.' || c == '_' || c == '~') {
      out += static_cast<char>(c);
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

std::string HostPort(const keel::redis::Endpoint& e) {
  return e.ToString();  // brackets IPv6 literals
}

std::string ToUrl(const Options& o) {
  std::string url = o.sentinel_mode() ? "redis+sentinel://" : "redis://";
  if (o.password)
    url += PercentEncode(o.user.value_or("")) + ":" + PercentEncode(*o.password) + "@";
  if (o.sentinel_mode()) {
    for (size_t i = 0; i < o.sentinels.size(); ++i) {
      url += (i > 0 ? "," : "") + HostPort(o.sentinels[i]);
    }
    url += "/" + PercentEncode(o.master_name) + "/" + std::to_string(o.db);
  } else {
    url += HostPort(o.server) + "/" + std::to_string(o.db);
  }
  return url;
}

void CheckAccepted(const Options& o) {
  Check(o.Validate().ok(), "an accepted URL fails Validate()");
  Check(!o.user || o.password, "a user without a password");
  for (const auto& e : o.sentinel_mode() ? o.sentinels : std::vector{o.server}) {
    Check(!e.host.empty() && e.port >= 1 && e.port <= 65535, "endpoint out of range");
  }
  const absl::StatusOr<Options> again = Options::FromUrl(ToUrl(o));
  Check(again.ok(), "the URL rebuilt from accepted options is rejected");
  Check(again->server == o.server && again->sentinels == o.sentinels &&
            again->master_name == o.master_name && again->user == o.user &&
            again->password == o.password && again->db == o.db,
        "accepted options do not round-trip through a URL");
}

int Hex(char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

// The unescaped contents of every "..." in `message`, the parts keel quotes from its input.
std::vector<std::string> QuotedParts(std::string_view message) {
  std::vector<std::string> parts;
  size_t open = message.find('"');
  while (open != std::string_view::npos) {
    const size_t close = message.find('"', open + 1);
    if (close == std::string_view::npos) break;
    std::string part;
    for (size_t i = open + 1; i < close; ++i) {
      if (message[i] == '\\' && i + 3 < close && message[i + 1] == 'x') {
        part += static_cast<char>(Hex(message[i + 2]) * 16 + Hex(message[i + 3]));
        i += 3;
      } else {
        part += message[i];
      }
    }
    parts.push_back(std::move(part));
    open = message.find('"', close + 1);
  }
  return parts;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  std::string url;
  std::optional<std::pair<size_t, size_t>> password;  // position and length in `url`
  if (in.ConsumeBool()) {
    static constexpr const char* kSchemes[] = {"redis://", "redis+sentinel://", "rediss://"};
    url = kSchemes[in.ConsumeIntegralInRange<size_t>(0, 2)];
    std::string user = in.ConsumeRandomLengthString(16);
    std::erase_if(user, [](char c) { return c == ':' || c == '/'; });
    url += user + ":";
    const std::string secret = in.ConsumeRandomLengthString(32);
    password.emplace(url.size(), secret.size());
    url += secret + "@";
  }
  url += in.ConsumeRemainingBytesAsString();

  const absl::StatusOr<Options> options = Options::FromUrl(url);
  if (options.ok()) {
    CheckAccepted(*options);
    return 0;
  }
  Check(options.status().code() == absl::StatusCode::kInvalidArgument,
        "error is not INVALID_ARGUMENT");
  if (!password) return 0;
  const std::string_view message = keel::internal::FromAbsl(options.status().message());
  for (const std::string& part : QuotedParts(message)) {
    std::string_view piece;
    if (keel::fuzz::Leaks(url, password->first, password->second, part, &piece)) {
      keel::fuzz::Show("url", url);
      keel::fuzz::Show("message", message);
      keel::fuzz::Show("leaked", piece);
      Check(false, "an error message quotes part of the password");
    }
  }
  return 0;
}
