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
  CHECK(RedactCredentials("requirepass=x;") == "requirepass=***;");
  // Only whole keys: a key that merely ends in "password" is not one of them.
  CHECK(RedactCredentials("mypassword=x") == "mypassword=x");
  CHECK(RedactCredentials("password") == "password");
  CHECK(RedactCredentials("password='unterminated") == "password=***");
}

TEST_CASE("durations print one way") {
  CHECK(keel::internal::FormatDuration(1500ms) == "1.5s");
  CHECK(keel::internal::FormatDuration(250us) == "250us");
  CHECK(keel::internal::FormatDuration(0ns) == "0");
  CHECK(keel::internal::FormatDuration(std::chrono::nanoseconds::max()) == "inf");
}
