#include "keel/internal/redact.h"

#include <catch2/catch.hpp>
#include <string>

#include "keel/internal/format.h"

using keel::internal::RedactCredentials;
using namespace std::chrono_literals;

TEST_CASE("redaction removes the password from URLs of every scheme") {
  CHECK(RedactCredentials("postgresql://app:s3cret@db:5432/x") == "postgresql://app:***@db:5432/x");
  CHECK(RedactCredentials("redis://:pw@127.0.0.1:6379/0") == "redis://:***@127.0.0.1:6379/0");
  CHECK(RedactCredentials("redis-sentinel://u:p@h1,h2/m") == "redis-sentinel://u:***@h1,h2/m");
  // A raw '@', ':' or '/' inside the password is removed with it.
  CHECK(RedactCredentials("postgres://u:a@b:c/d@host/db") == "postgres://u:***@host/db");
  CHECK(RedactCredentials("invalid URI \"postgresql://app:pw@@h\" here") ==
        "invalid URI \"postgresql://app:***@h\" here");
  // A '?' inside the password cannot be told from a query: it errs towards removing too much.
  CHECK(RedactCredentials("redis://:pa?ss@h:1") == "redis://:***@h:1");
  // Several URLs in one message.
  CHECK(RedactCredentials("a redis://u:x@h b redis://u:y@k") ==
        "a redis://u:***@h b redis://u:***@k");
}

TEST_CASE("redaction keeps URLs without a password as they are") {
  for (std::string s : {"postgresql://app@db/x", "redis://127.0.0.1:6379", "http://h/a@b",
                        "plain text", "", "://", "x://@", "redis://user@h:1/2?x=@"}) {
    CHECK(RedactCredentials(s) == s);
  }
}

TEST_CASE("redaction removes password= values in conninfo and query strings") {
  CHECK(RedactCredentials("host=db password=s3cret user=app") == "host=db password=*** user=app");
  CHECK(RedactCredentials("host=db password = 's3 c\\'ret' user=app") ==
        "host=db password = *** user=app");
  CHECK(RedactCredentials("postgresql://db/x?user=a&password=s3cret&sslmode=disable") ==
        "postgresql://db/x?user=a&password=***&sslmode=disable");
  CHECK(RedactCredentials("PASSWORD=x") == "PASSWORD=***");
  CHECK(RedactCredentials("requirepass=x;") == "requirepass=***");
  // Only whole keys: a key that merely ends in "password" is not one of them.
  CHECK(RedactCredentials("mypassword=x") == "mypassword=x");
  CHECK(RedactCredentials("password") == "password");
  CHECK(RedactCredentials("password='unterminated") == "password=***");
  // libpq ends a bare conninfo value only at white space; a URL query value ends at '&'.
  CHECK(RedactCredentials("password=ab;cd&e,f\"g x") == "password=*** x");
  CHECK(RedactCredentials("\"password=x\" y") == "\"password=*** y");
  CHECK(RedactCredentials("pass=s3&cret") == "pass=***");
  CHECK(RedactCredentials("db/x?password=s3,c;ret#f") == "db/x?password=***#f");
}

TEST_CASE("redaction takes linear time on text made of scheme separators") {
  for (std::string unit : {"a://", "x://y@?"}) {
    std::string text;
    for (int i = 0; i < 200000; ++i) text += unit;
    text += " z://u:p@h";
    // Quadratic scanning would take minutes here; the result shows the whole text was read.
    const std::string out = RedactCredentials(text);
    CHECK(out.size() == text.size() + 2);
    CHECK(out.ends_with(" z://u:***@h"));
  }
}

TEST_CASE("redaction against a source removes the source's passwords wherever they stand") {
  const std::string url = "postgresql://app:hunter22/x@db/app";
  // libpq misreads the password as a port and quotes it bare.
  CHECK(RedactCredentials("invalid integer value \"hunter22/x@db\" for option \"port\"", url) ==
        "invalid integer value \"***@db\" for option \"port\"");
  CHECK(RedactCredentials("invalid percent-encoded token: \"s3cr%zzet\"",
                          "postgresql://db/app?password=s3cr%zzet") ==
        "invalid percent-encoded token: \"***\"");
  // A query value the URL pattern reads into a wide userinfo is still found by the key pattern.
  CHECK(RedactCredentials("invalid percent-encoded token: \"p%:0s\"",
                          "postgresql://db/app?sslmode=disable&password=p%:0s&,?xa@ame%x") ==
        "invalid percent-encoded token: \"***\"");
  // The userinfo read up to a second '@': the piece before it is what libpq quotes.
  CHECK(RedactCredentials("invalid percent-encoded token: \"ec%t\"", "postgres://zoc:ec%t@@h") ==
        "invalid percent-encoded token: \"***\"");
  // Pieces shorter than kMinPieceLength stay: they would erase ordinary words.
  CHECK(RedactCredentials("a message about x", "redis://:x@h") == "a message about x");
  CHECK(RedactCredentials("nothing secret", "host=db") == "nothing secret");
}

TEST_CASE("durations print one way") {
  CHECK(keel::internal::FormatDuration(1500ms) == "1.5s");
  CHECK(keel::internal::FormatDuration(250us) == "250us");
  CHECK(keel::internal::FormatDuration(0ns) == "0");
  CHECK(keel::internal::FormatDuration(std::chrono::nanoseconds::max()) == "inf");
}
