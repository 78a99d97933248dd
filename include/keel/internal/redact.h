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
//   - the value of every `password=` / `pass=` / `passwd=` / `requirepass=` key (any case):
//     bare up to white space (as libpq reads a conninfo), single-quoted with backslash escapes
//     (libpq's conninfo quoting), or as a URL query parameter (`?password=...`, up to '&' or '#').
// Text without credentials is returned unchanged. Never fails; linear in the input.
std::string RedactCredentials(std::string_view text);

// Pieces of a password at least this long are removed by the two-argument form.
inline constexpr size_t kMinPieceLength = 3;

// RedactCredentials(text), and then every password that RedactCredentials would find in
// `source` (the URL or conninfo the message is about) removed from `text` wherever it stands,
// when it has at least kMinPieceLength characters,
// whole and in pieces of at least kMinPieceLength characters between URL delimiters. For messages
// from libpq and hiredis about a connection string: a parser that misreads a password quotes it
// (or a piece of it) bare, as a port, a host or an escape, where no pattern can recognise it.
std::string RedactCredentials(std::string_view text, std::string_view source);

}  // namespace keel::internal
