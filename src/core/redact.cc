#include "keel/internal/redact.h"

#include <array>
#include <cctype>

namespace keel::internal {
namespace {

bool EndsUserinfoSearch(char c) { return c == '?' || c == '#'; }
bool EndsText(char c) {
  return std::isspace(static_cast<unsigned char>(c)) || c == '"' || c == '\'';
}

// Replaces the password of every `scheme://user:password@host` in `text`.
std::string RedactUrls(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (true) {
    const size_t scheme_end = text.find("://", i);
    if (scheme_end == std::string_view::npos) break;
    const size_t start = scheme_end + 3;
    // The span a URL can occupy: up to white space or a quote.
    size_t span_end = start;
    while (span_end < text.size() && !EndsText(text[span_end])) ++span_end;
    const std::string_view span = text.substr(start, span_end - start);
    // The userinfo ends at the last '@' before the query or fragment that follows the first '@'.
    // That errs towards removing too much: a raw '@', ':' or '/' inside a password (which a
    // parser may read as the host) still leaves the whole password out.
    const size_t first_at = span.find('@');
    size_t at = std::string_view::npos;
    if (first_at != std::string_view::npos) {
      size_t search_end = first_at;
      while (search_end < span.size() && !EndsUserinfoSearch(span[search_end])) ++search_end;
      at = span.rfind('@', search_end - 1);
    }
    const size_t colon = at == std::string_view::npos ? at : span.substr(0, at).find(':');
    if (colon == std::string_view::npos) {
      out.append(text.substr(i, start - i));
      i = start;
      continue;
    }
    out.append(text.substr(i, start + colon + 1 - i));
    out.append(kRedacted);
    i = start + at;  // from the '@' on
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

// Replaces the value of every `password=...` style key in `text`.
std::string RedactKeys(std::string_view text) {
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
    size_t value = eq + 1;
    while (value < text.size() && text[value] == ' ') ++value;
    size_t value_end = value;
    if (value < text.size() && text[value] == '\'') {  // libpq quoting: '...' with \' and \\.
      value_end = value + 1;
      while (value_end < text.size() && text[value_end] != '\'') {
        value_end += text[value_end] == '\\' && value_end + 1 < text.size() ? 2 : 1;
      }
      if (value_end < text.size()) ++value_end;  // the closing quote
    } else {
      while (value_end < text.size() &&
             !std::isspace(static_cast<unsigned char>(text[value_end])) && text[value_end] != '&' &&
             text[value_end] != ';' && text[value_end] != ',' && text[value_end] != '"') {
        ++value_end;
      }
    }
    out.append(text.substr(i, value - i));
    out.append(kRedacted);
    i = pos = value_end;
  }
  out.append(text.substr(i));
  return out;
}

}  // namespace

std::string RedactCredentials(std::string_view text) { return RedactKeys(RedactUrls(text)); }

}  // namespace keel::internal
