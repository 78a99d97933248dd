// Fuzzes keel's handling of PostgreSQL connection strings: postgres::internal::WithConnectTimeout
// (against libpq's own parser, PQconninfoParse) and keel::internal::RedactCredentials on text
// that carries a password in each form keel meets: a URL's userinfo, a key=value conninfo (bare
// or libpq-quoted), a URL query parameter, and libpq's parse errors for such strings.
//
// Invariants, beyond "no crash, no sanitizer report":
//   - WithConnectTimeout: whenever libpq accepts the conninfo, it accepts the result too, with
//     connect_timeout set to the requested seconds and every other option unchanged;
//   - RedactCredentials: no piece of the inserted password survives (see fuzz_check.h for which
//     pieces count), in the text itself or in libpq's error message about it.
#include <fuzzer/FuzzedDataProvider.h>
#include <libpq-fe.h>

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>

#include "fuzz_check.h"
#include "keel/internal/redact.h"
#include "keel/postgres/pool.h"

namespace {

using keel::fuzz::Check;

struct Parsed {
  std::map<std::string, std::string> options;  // keyword -> value, only those set
  std::string error;                           // libpq's message when it refused
  bool ok = false;
};

Parsed Parse(const std::string& conninfo) {
  Parsed out;
  char* err = nullptr;
  PQconninfoOption* opts = PQconninfoParse(conninfo.c_str(), &err);
  if (opts == nullptr) {
    if (err != nullptr) out.error = err;
    PQfreemem(err);
    return out;
  }
  out.ok = true;
  for (PQconninfoOption* o = opts; o->keyword != nullptr; ++o) {
    if (o->val != nullptr) out.options[o->keyword] = o->val;
  }
  PQconninfoFree(opts);
  return out;
}

void FuzzConnectTimeout(FuzzedDataProvider& in) {
  std::string conninfo = in.ConsumeBool() ? "postgresql://" : "";
  const int seconds = in.ConsumeIntegralInRange<int>(2, 1 << 30);  // what Connect passes
  conninfo += in.ConsumeRemainingBytesAsString();
  if (conninfo.find('\0') != std::string::npos) return;  // a C string to libpq
  const Parsed before = Parse(conninfo);
  if (!before.ok) return;
  // F6: a URL ending in '?' or '&' gets "&connect_timeout=", an empty parameter libpq refuses.
  if (keel::fuzz::SkipKnown(conninfo.starts_with("postgres") &&
                            (conninfo.ends_with('?') || conninfo.ends_with('&')))) {
    return;
  }
  // F8: a raw '?' in the URL's userinfo (libpq takes the userinfo up to the '@') is taken for
  // the query's start: "&connect_timeout=N" then lands in the host name.
  if (keel::fuzz::SkipKnown(conninfo.starts_with("postgres") &&
                            conninfo.find('?') < conninfo.find('@') &&
                            conninfo.find('@') != std::string::npos)) {
    return;
  }
  // F7: a key=value conninfo whose last value is still open (an empty last value as in
  // "application_name=", or a trailing backslash; libpq accepts both) swallows
  // " connect_timeout=N" into that value.
  if (!conninfo.starts_with("postgres")) {
    const Parsed probe = Parse(conninfo + " dbname=keelprobe");
    const auto dbname = probe.options.find("dbname");
    const bool open = !probe.ok || dbname == probe.options.end() || dbname->second != "keelprobe";
    if (keel::fuzz::SkipKnown(open)) return;
  }
  const std::string with = keel::postgres::internal::WithConnectTimeout(conninfo, seconds);
  const Parsed after = Parse(with);
  if (!after.ok) keel::fuzz::Show("libpq", after.error);
  Check(after.ok, "libpq refuses the conninfo once connect_timeout is added");
  auto expected = before.options;
  expected["connect_timeout"] = std::to_string(seconds);
  Check(after.options == expected, "adding connect_timeout changed the other options");
}

// Bytes of `s` that `keep` accepts.
template <typename Pred>
std::string Filter(std::string s, Pred keep) {
  std::erase_if(s, [&](char c) { return !keep(static_cast<unsigned char>(c)); });
  return s;
}
bool Space(unsigned char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

void CheckRedacted(const std::string& text, size_t pos, size_t len, const char* what) {
  const std::string redacted = keel::internal::RedactCredentials(text);
  std::string_view piece;
  if (keel::fuzz::Leaks(text, pos, len, redacted, &piece)) {
    keel::fuzz::Show("text", text);
    keel::fuzz::Show("redacted", redacted);
    keel::fuzz::Show("leaked", piece);
    Check(false, what);
  }
}

void FuzzRedaction(FuzzedDataProvider& in) {
  // Free text before the credential-bearing string, as in an error message; without '=', so it
  // cannot end in a key whose value would be the string that follows.
  std::string text =
      Filter(in.ConsumeRandomLengthString(32), [](unsigned char c) { return c != '='; });
  if (!text.empty()) text += ' ';
  const size_t start = text.size();
  std::string secret;
  size_t pos = 0;
  std::string rest;
  switch (in.ConsumeIntegralInRange<int>(0, 2)) {
    case 0: {  // scheme://user:PASSWORD@host...: any byte a URL span can hold, '@' ':' '/' too
      static constexpr const char* kSchemes[] = {"postgresql", "postgres", "redis",
                                                 "redis+sentinel"};
      text += kSchemes[in.ConsumeIntegralInRange<size_t>(0, 3)];
      text += "://";
      text += Filter(in.ConsumeRandomLengthString(16), [](unsigned char c) {
        return !Space(c) && c != ':' && c != '@' && c != '/' && c != '"' && c != '\'';
      });
      text += ':';
      secret = Filter(in.ConsumeRandomLengthString(32), [](unsigned char c) {
        return !Space(c) && c != '"' && c != '\'' && c != '?' && c != '#';
      });
      pos = text.size();
      text += secret + "@";
      rest = in.ConsumeRemainingBytesAsString();
      break;
    }
    case 1: {  // password=VALUE in a conninfo, bare or in libpq's quotes
      static constexpr const char* kKeys[] = {"password", "PASSWORD", "pass", "passwd",
                                              "requirepass"};
      text += kKeys[in.ConsumeIntegralInRange<size_t>(0, 4)];
      text.append(in.ConsumeIntegralInRange<size_t>(0, 2), ' ');
      text += '=';
      text.append(in.ConsumeIntegralInRange<size_t>(0, 2), ' ');
      const std::string raw = in.ConsumeRandomLengthString(32);
      if (in.ConsumeBool()) {
        text += '\'';
        for (char c : raw) {
          if (c == '\'' || c == '\\') secret += '\\';
          secret += c;
        }
        pos = text.size();
        text += secret + "'";
      } else {
        secret = Filter(raw, [](unsigned char c) { return !Space(c); });
        secret.erase(0, secret.find_first_not_of('\''));  // a leading quote opens a quoted value
        // F2: a bare value ends at '&', ';', ',' or '"' for RedactCredentials, but libpq's bare
        // values end only at white space ("password=ab;cd" -> "password=***;cd").
        if (keel::fuzz::SkipKnown(secret.find_first_of("&;,\"") != std::string::npos)) return;
        pos = text.size();
        text += secret;
      }
      rest = in.ConsumeRemainingBytesAsString();
      if (!rest.empty()) rest = " " + rest;  // a value ends at white space
      break;
    }
    default: {  // a URL query parameter: ?password=VALUE&...
      text += "postgresql://db/app?sslmode=disable&password=";
      secret = Filter(in.ConsumeRandomLengthString(32), [](unsigned char c) {
        return !Space(c) && c != '"' && c != '\'' && c != '&' && c != '#';
      });
      // F2 again: ';' and ',' are plain characters in a URL query value.
      if (keel::fuzz::SkipKnown(secret.find_first_of(";,") != std::string::npos)) return;
      pos = text.size();
      text += secret;
      rest = in.ConsumeRemainingBytesAsString();
      if (!rest.empty()) rest = "&" + rest;  // a parameter ends at '&'
      break;
    }
  }
  text += rest;
  CheckRedacted(text, pos, secret.size(), "a password survives RedactCredentials");

  // libpq's own complaint about the same string, as keel passes it on. libpq's message has text
  // of its own, so the password counts as leaked only when it is in the redacted message and
  // gone from the message about the same string with the password's letters and digits masked
  // (its punctuation kept, so libpq parses the string alike).
  const std::string conninfo = text.substr(start);
  if (secret.size() < 4 || conninfo.find('\0') != std::string::npos) return;
  const Parsed parsed = Parse(conninfo);
  if (parsed.ok || parsed.error.empty()) return;
  // F4: libpq's URL errors quote the piece they stumble on alone (`invalid percent-encoded
  // token: "<password>"`, `forbidden value %00 in percent-encoded value: "<password>"`,
  // `missing key/value separator "=" in URI query parameter: "<rest>"`), with nothing left for
  // RedactCredentials to recognise.
  if (keel::fuzz::SkipKnown(parsed.error.find("percent-encoded") != std::string::npos ||
                            parsed.error.find("URI") != std::string::npos)) {
    return;
  }
  const std::string redacted = keel::internal::RedactCredentials(parsed.error);
  if (redacted.find(secret) == std::string::npos) return;
  std::string masked = conninfo;
  for (size_t i = pos - start; i < pos - start + secret.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(masked[i]);
    if (std::isalnum(c) || c >= 0x80) masked[i] = c == 'Q' ? 'R' : 'Q';
  }
  const std::string masked_message = keel::internal::RedactCredentials(Parse(masked).error);
  if (masked_message.find(secret) == std::string::npos) {
    keel::fuzz::Show("conninfo", conninfo);
    keel::fuzz::Show("password", secret);
    keel::fuzz::Show("redacted libpq message", redacted);
    Check(false, "a password survives RedactCredentials of libpq's error message");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  if (in.ConsumeBool()) {
    FuzzConnectTimeout(in);
  } else {
    FuzzRedaction(in);
  }
  return 0;
}
