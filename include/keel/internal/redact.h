// keel/internal/redact.h: removes credentials from text before it reaches an error, a log line or
// a metric label. Not part of keel's API.
//
// keel builds messages from URLs and libpq connection strings, and passes on messages from libpq
// and hiredis that may quote them. Every such message goes through RedactCredentials first, for
// PostgreSQL and Redis alike.
//
// Thread safety: pure function.
//
//   RedactCredentials("postgresql://app:s3cret@db/x")  -> "postgresql://app:***@db/x"
//   RedactCredentials("host=db password='a b' user=x") -> "host=db password=*** user=x"
#pragma once

#include <string>
#include <string_view>

namespace keel::internal {

// What stands in for a removed secret.
inline constexpr std::string_view kRedacted = "***";

// `text` with every credential replaced by kRedacted:
//   - the password of every URL's userinfo (`scheme://user:PASSWORD@host`), up to the last '@'
//     before the end of the authority, so a password containing '@' or ':' is removed whole;
//   - the value of every `password=` / `pass=` / `requirepass=` key (any case), written bare,
//     single-quoted with backslash escapes (libpq's conninfo quoting), or as a URL query
//     parameter (`?password=...&`).
// Text without credentials is returned unchanged. Never fails; linear in the input.
std::string RedactCredentials(std::string_view text);

}  // namespace keel::internal
