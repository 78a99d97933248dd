#include "keel/internal/redact.h"

#include <array>
#include <cctype>
#include <vector>

namespace keel::internal {
namespace {

bool IsSpace(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }
bool EndsText(char c) { return IsSpace(c) || c == '"' || c == '\''; }

// Replaces the password of every `scheme://user:password@host` in `text`; each removed password
// is appended to `secrets` when it is not null. Linear: every search below moves forwards only.
std::string RedactUrls(std::string_view text, std::vector<std::string>* secrets) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;  // everything before i is in `out`
  size_t token_end = 0;
  size_t pos = 0;
  while (true) {
    const size_t scheme_end = text.find("://", pos);
    if (scheme_end == std::string_view::npos) break;
    const size_t start = scheme_end + 3;
    if (start > token_end) {  // a new run of text between white space and quotes
      token_end = start;
      while (token_end < text.size() && !EndsText(text[token_end])) ++token_end;
    }
    // The userinfo ends at the last '@' before the query or fragment that follows the first '@'.
    // That errs towards removing too much: a raw '@', ':' or '/' inside a password (which a
    // parser may read as the host) still leaves the whole password out.
    const size_t first_at = text.substr(0, token_end).find('@', start);
    if (first_at == std::string_view::npos) {  // no userinfo anywhere in the rest of this run
      pos = token_end;
      continue;
    }
    size_t search_end = first_at;
    while (search_end < token_end && text[search_end] != '?' && text[search_end] != '#') {
      ++search_end;
    }
    // The scans of successive URLs do not overlap: the next first '@' lies past search_end.
    const size_t at = text.rfind('@', search_end - 1);
    const size_t colon = text.substr(0, at).find(':', start);
    if (colon != std::string_view::npos) {
      out.append(text.substr(i, colon + 1 - i));
      out.append(kRedacted);
      if (secrets != nullptr) secrets->emplace_back(text.substr(colon + 1, at - colon - 1));
      i = at;  // from the '@' on
    }
    // A URL starting before `at` has a suffix of this userinfo: nothing more to find there.
    pos = at + 1;
  }
  out.append(text.substr(i));
  return out;
}

bool IsKeyChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

bool EqualsIgnoreCase(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) != b[i]) return false;
  }
  return true;
}

// Replaces the value of every `password=...` style key in `text`, collecting them as above.
std::string RedactKeys(std::string_view text, std::vector<std::string>* secrets) {
  static constexpr std::array<std::string_view, 4> kKeys = {"password", "pass", "passwd",
                                                            "requirepass"};
  std::string out;
  out.reserve(text.size());
  size_t i = 0;  // everything before i is in `out`
  size_t pos = 0;
  while (pos < text.size()) {
    if (!IsKeyChar(text[pos]) || (pos > 0 && IsKeyChar(text[pos - 1]))) {
      ++pos;
      continue;
    }
    size_t key_end = pos;
    while (key_end < text.size() && IsKeyChar(text[key_end])) ++key_end;
    const std::string_view key = text.substr(pos, key_end - pos);
    bool secret = false;
    for (std::string_view k : kKeys) secret = secret || EqualsIgnoreCase(key, k);
    size_t eq = key_end;
    while (eq < text.size() && text[eq] == ' ') ++eq;
    if (!secret || eq >= text.size() || text[eq] != '=') {
      pos = key_end;
      continue;
    }
    // In a URL query (`?password=...&`) a value ends at '&' or '#'; in a conninfo, as libpq reads
    // it, a bare value ends only at white space.
    const bool in_query = pos > 0 && (text[pos - 1] == '?' || text[pos - 1] == '&');
    size_t value = eq + 1;
    while (value < text.size() && text[value] == ' ') ++value;
    size_t value_end = value;
    if (!in_query && value < text.size() && text[value] == '\'') {  // '...' with \' and \\.
      value_end = value + 1;
      while (value_end < text.size() && text[value_end] != '\'') {
        value_end += text[value_end] == '\\' && value_end + 1 < text.size() ? 2 : 1;
      }
      if (value_end < text.size()) ++value_end;  // the closing quote
    } else {
      while (value_end < text.size() && !IsSpace(text[value_end]) &&
             !(in_query && (text[value_end] == '&' || text[value_end] == '#'))) {
        ++value_end;
      }
    }
    out.append(text.substr(i, value - i));
    out.append(kRedacted);
    if (secrets != nullptr && value_end > value) {
      secrets->emplace_back(text.substr(value, value_end - value));
    }
    i = pos = value_end;
  }
  out.append(text.substr(i));
  return out;
}

bool IsDelimiter(char c) {
  // URL and conninfo structure only: '%' escapes and backslashes stand inside the tokens a parser
  // quotes ("invalid percent-encoded token: "ec%t"").
  return c == '/' || c == ':' || c == '@' || c == '?' || c == '#' || c == '&' || c == '=' ||
         c == '\'' || IsSpace(c);
}

// Replaces every occurrence of `secret` in `text` by kRedacted.
void Erase(std::string& text, std::string_view secret) {
  if (secret.empty()) return;
  for (size_t at = text.find(secret); at != std::string::npos;
       at = text.find(secret, at + kRedacted.size())) {
    text.replace(at, secret.size(), kRedacted);
  }
}

}  // namespace

std::string RedactCredentials(std::string_view text) {
  return RedactKeys(RedactUrls(text, nullptr), nullptr);
}

std::string RedactCredentials(std::string_view text, std::string_view source) {
  // Each pattern reads the source as given: a URL's userinfo read too widely must not hide a
  // password= value inside it from the key pattern.
  std::vector<std::string> secrets;
  RedactUrls(source, &secrets);
  RedactKeys(source, &secrets);
  std::string out = RedactCredentials(text);
  for (const std::string& secret : secrets) {
    if (secret.size() >= kMinPieceLength) Erase(out, secret);
    // The pieces a parser may quote alone when it misreads the password as a host, port, path
    // or escape ("invalid integer value "hunter22" for connection option "port"").
    for (size_t b = 0; b < secret.size();) {
      size_t e = b;
      while (e < secret.size() && !IsDelimiter(secret[e])) ++e;
      if (e - b >= kMinPieceLength) Erase(out, std::string_view(secret).substr(b, e - b));
      b = e + 1;
    }
  }
  return out;
}

}  // namespace keel::internal
