// Fuzzes keel's handling of PostgreSQL connection strings: keel::internal::RedactCredentials on
// text that carries a password in each form keel meets: a URL's userinfo, a key=value conninfo
// (bare or libpq-quoted), a URL query parameter, and libpq's parse errors (PQconninfoParse) for
// such strings, redacted against the conninfo as keel's connect path does.
//
// Invariants, beyond "no crash, no sanitizer report": no piece of the inserted password survives
// (see fuzz_check.h for which pieces count), in the text itself or in libpq's error message about
// it.
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
#include <vector>

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
  // What keel promises for a message about a conninfo (redact.h): the password, whole, and each
  // of its pieces between URL delimiters of at least kMinPieceLength characters, are gone. A
  // password made only of delimiters and shorter pieces is outside that promise.
  const std::string redacted = keel::internal::RedactCredentials(parsed.error, conninfo);
  std::string masked = conninfo;
  for (size_t i = pos - start; i < pos - start + secret.size(); ++i) {
    const unsigned char c = static_cast<unsigned char>(masked[i]);
    if (std::isalnum(c) || c >= 0x80) masked[i] = c == 'Q' ? 'R' : 'Q';
  }
  const std::string masked_message = keel::internal::RedactCredentials(Parse(masked).error, masked);
  const auto is_delimiter = [](unsigned char c) {
    return c == '/' || c == ':' || c == '@' || c == '?' || c == '#' || c == '&' || c == '=' ||
           c == '\'' || Space(c);
  };
  std::vector<std::string> pieces;
  for (size_t b = 0; b < secret.size();) {
    size_t e = b;
    while (e < secret.size() && !is_delimiter(static_cast<unsigned char>(secret[e]))) ++e;
    if (e - b >= keel::internal::kMinPieceLength) pieces.push_back(secret.substr(b, e - b));
    b = e + 1;
  }
  for (const std::string& piece : pieces) {
    if (piece.find('*') != std::string::npos) continue;  // `***` is the redaction marker
    if (redacted.find(piece) == std::string::npos) continue;
    if (masked_message.find(piece) != std::string::npos) continue;  // libpq's own text
    keel::fuzz::Show("conninfo", conninfo);
    keel::fuzz::Show("password", secret);
    keel::fuzz::Show("piece", piece);
    keel::fuzz::Show("redacted libpq message", redacted);
    Check(false, "a password survives RedactCredentials of libpq's error message");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  FuzzedDataProvider in(data, size);
  FuzzRedaction(in);
  return 0;
}
