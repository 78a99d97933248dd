#include "keel/redis/options.h"

#include <charconv>
#include <string>
#include <string_view>
#include <vector>

#include "keel/internal/format.h"
#include "keel/internal/status_macros.h"
#include "keel/internal/strings.h"

namespace keel::redis {
namespace {

using keel::internal::FormatDuration;
using keel::internal::StrCat;

absl::Status UrlError(std::string_view what) {
  return absl::InvalidArgumentError(StrCat("redis url: ", what));
}

// Quoted for error messages; control characters would garble logs, so they are escaped.
std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (static_cast<unsigned char>(c) < 0x20 || c == '"' || c == '\\') {
      static constexpr char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[(static_cast<unsigned char>(c) >> 4) & 0xf];
      out += kHex[static_cast<unsigned char>(c) & 0xf];
    } else {
      out += c;
    }
  }
  return out + "\"";
}

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes `s`; `part` names it in the error (the value itself is not echoed: it may be
// a password).
absl::StatusOr<std::string> PercentDecode(std::string_view s, std::string_view part) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    const int hi = i + 1 < s.size() ? HexValue(s[i + 1]) : -1;
    const int lo = i + 2 < s.size() ? HexValue(s[i + 2]) : -1;
    if (hi < 0 || lo < 0) {
      return UrlError(StrCat(part, " has an invalid percent escape at offset ", i,
                             " (write a literal % as %25)"));
    }
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

absl::StatusOr<int> ParseInt(std::string_view s, int min, int max, std::string_view part) {
  int value = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (s.empty() || ec != std::errc() || end != s.data() + s.size() || value < min || value > max) {
    return UrlError(StrCat(part, " must be a number in ", min, "..", max, ", got ", Quote(s)));
  }
  return value;
}

bool ValidHostChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_';
}

// "host", "host:port", "[v6]" or "[v6]:port".
absl::StatusOr<Endpoint> ParseHostPort(std::string_view s, int default_port) {
  Endpoint ep;
  std::string_view port_part;
  if (s.empty()) return UrlError("host is empty");
  if (s.front() == '[') {
    const size_t close = s.find(']');
    if (close == std::string_view::npos) {
      return UrlError(StrCat("host ", Quote(s), " has an unterminated IPv6 bracket"));
    }
    ep.host = std::string(s.substr(1, close - 1));
    if (ep.host.empty() ||
        ep.host.find_first_not_of("0123456789abcdefABCDEF:.") != std::string::npos) {
      return UrlError(StrCat("host ", Quote(s), " is not a valid IPv6 address"));
    }
    std::string_view rest = s.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') {
        return UrlError(StrCat("host ", Quote(s), " has unexpected text after ']'"));
      }
      port_part = rest.substr(1);
      if (port_part.empty()) return UrlError(StrCat("port is empty in ", Quote(s)));
    }
  } else {
    const size_t colon = s.rfind(':');
    std::string_view host = s.substr(0, colon);
    if (colon != std::string_view::npos) {
      port_part = s.substr(colon + 1);
      if (port_part.empty()) return UrlError(StrCat("port is empty in ", Quote(s)));
    }
    if (host.empty()) return UrlError(StrCat("host is empty in ", Quote(s)));
    for (char c : host) {
      if (!ValidHostChar(c)) {
        return UrlError(StrCat("host ", Quote(host), " contains an invalid character"));
      }
    }
    ep.host = std::string(host);
  }
  ep.port = default_port;
  if (!port_part.empty()) {
    KEEL_ASSIGN_OR_RETURN(ep.port, ParseInt(port_part, 1, 65535, "port"));
  }
  return ep;
}

std::vector<std::string_view> Split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    const size_t pos = s.find(sep, start);
    parts.push_back(s.substr(start, pos == std::string_view::npos ? pos : pos - start));
    if (pos == std::string_view::npos) return parts;
    start = pos + 1;
  }
}

}  // namespace

std::string Endpoint::ToString() const {
  if (host.find(':') != std::string::npos) return StrCat("[", host, "]:", port);
  return StrCat(host, ":", port);
}

absl::StatusOr<Options> Options::FromUrl(std::string_view url) {
  static constexpr std::string_view kRedis = "redis://";
  static constexpr std::string_view kSentinel = "redis+sentinel://";
  Options options;
  bool sentinel = false;
  std::string_view rest;
  if (url.substr(0, kRedis.size()) == kRedis) {
    rest = url.substr(kRedis.size());
  } else if (url.substr(0, kSentinel.size()) == kSentinel) {
    rest = url.substr(kSentinel.size());
    sentinel = true;
  } else {
    const size_t sep = url.find("://");
    if (sep == std::string_view::npos) {
      return UrlError("scheme is missing: expected redis:// or redis+sentinel://");
    }
    return UrlError(StrCat("scheme must be redis or redis+sentinel, got ",
                           Quote(url.substr(0, sep)),
                           url.substr(0, sep) == "rediss" ? " (TLS is not supported)" : ""));
  }
  // Credentials end at the URL's last '@' ('@' has no other place in a Redis URL). Splitting
  // there first keeps every later error message, which may quote the host, port or path, free
  // of any part of a password that holds an unescaped '/', '?' or '#'.
  std::string_view userinfo;
  bool has_userinfo = false;
  if (const size_t at = rest.rfind('@'); at != std::string_view::npos) {
    userinfo = rest.substr(0, at);
    rest = rest.substr(at + 1);
    has_userinfo = true;
    if (userinfo.find_first_of("/?#") != std::string_view::npos) {
      return UrlError("user or password holds an unescaped '/', '?' or '#' (write %2F, %3F, %23)");
    }
  }
  if (rest.find_first_of("?#") != std::string_view::npos) {
    return UrlError("query parameters and fragments are not supported; set Options fields");
  }

  // Authority ends at the first '/'.
  const size_t slash = rest.find('/');
  std::string_view authority = rest.substr(0, slash);
  std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash + 1);
  if (has_userinfo) {
    const size_t colon = userinfo.find(':');
    const std::string_view user = userinfo.substr(0, colon);
    if (!user.empty()) {
      KEEL_ASSIGN_OR_RETURN(auto decoded, PercentDecode(user, "user"));
      options.user = std::move(decoded);
    }
    if (colon != std::string_view::npos) {
      const std::string_view password = userinfo.substr(colon + 1);
      if (password.empty()) return UrlError("password is empty (omit the ':' for none)");
      KEEL_ASSIGN_OR_RETURN(auto decoded, PercentDecode(password, "password"));
      options.password = std::move(decoded);
    } else if (options.user) {
      return UrlError("user is given without a password (write user:password@)");
    }
  }

  if (!sentinel) {
    if (authority.find(',') != std::string_view::npos) {
      return UrlError("several hosts need the redis+sentinel:// scheme");
    }
    KEEL_ASSIGN_OR_RETURN(options.server, ParseHostPort(authority, kDefaultPort));
    if (!path.empty()) {
      KEEL_ASSIGN_OR_RETURN(options.db, ParseInt(path, 0, 1 << 20, "db"));
    }
    return options;
  }

  if (authority.empty()) return UrlError("sentinel host list is empty");
  for (std::string_view host : Split(authority, ',')) {
    KEEL_ASSIGN_OR_RETURN(Endpoint ep, ParseHostPort(host, kDefaultSentinelPort));
    options.sentinels.push_back(std::move(ep));
  }
  const std::vector<std::string_view> segments = Split(path, '/');
  if (path.empty() || segments[0].empty()) {
    return UrlError("master name is missing (redis+sentinel://host:26379/mymaster[/db])");
  }
  KEEL_ASSIGN_OR_RETURN(options.master_name, PercentDecode(segments[0], "master name"));
  if (segments.size() > 2) {
    return UrlError(StrCat("path has too many segments after the master name: ", Quote(path)));
  }
  if (segments.size() == 2 && !segments[1].empty()) {
    KEEL_ASSIGN_OR_RETURN(options.db, ParseInt(segments[1], 0, 1 << 20, "db"));
  }
  return options;
}

absl::Status Options::Validate() const {
  auto bad = [](std::string_view field, std::string_view what) {
    return absl::InvalidArgumentError(StrCat("redis.", field, " ", what));
  };
  if (sentinels.empty()) {
    if (server.host.empty()) return bad("server.host", "must not be empty");
    if (server.port < 1 || server.port > 65535) {
      return bad("server.port", StrCat("must be in 1..65535, got ", server.port));
    }
  } else {
    for (const Endpoint& s : sentinels) {
      if (s.host.empty()) return bad("sentinels[].host", "must not be empty");
      if (s.port < 1 || s.port > 65535) {
        return bad("sentinels[].port", StrCat("must be in 1..65535, got ", s.port));
      }
    }
    if (master_name.empty()) return bad("master_name", "must be set in Sentinel mode");
  }
  if (user && !password) return bad("user", "needs a password");
  if (db < 0) return bad("db", StrCat("must be >= 0, got ", db));
  if (connect_timeout <= Duration::zero()) {
    return bad("connect_timeout",
               StrCat("must be positive, got ", FormatDuration(connect_timeout)));
  }
  if (command_timeout <= Duration::zero()) {
    return bad("command_timeout",
               StrCat("must be positive, got ", FormatDuration(command_timeout)));
  }
  if (mux.connections < 1 || mux.connections > 64) {
    return bad("mux.connections", StrCat("must be in 1..64, got ", mux.connections));
  }
  if (mux.max_queued_calls < 1) return bad("mux.max_queued_calls", "must be at least 1, got 0");
  if (mux.max_bytes_in_flight < 1) {
    return bad("mux.max_bytes_in_flight", "must be at least 1, got 0");
  }
  if (late_reply_timeout <= Duration::zero()) {
    return bad("late_reply_timeout",
               StrCat("must be positive, got ", FormatDuration(late_reply_timeout)));
  }
  KEEL_RETURN_IF_ERROR(Backoff::Create(reconnect_backoff, "redis.reconnect_backoff").status());
  return absl::OkStatus();
}

}  // namespace keel::redis
