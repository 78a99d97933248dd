// Server-free tests of URL parsing and option validation.
#include "keel/redis/options.h"

#include <catch2/catch.hpp>
#include <string>

using keel::redis::Endpoint;
using keel::redis::Options;

namespace {

std::string ErrorOf(const char* url) {
  auto o = Options::FromUrl(url);
  if (o.ok()) return "(parsed)";
  CHECK(o.status().code() == absl::StatusCode::kInvalidArgument);
  return std::string(o.status().message());
}

}  // namespace

TEST_CASE("redis url: host, port and db are parsed, omitted parts keep their defaults") {
  auto o = Options::FromUrl("redis://cache.internal:6380/3");
  REQUIRE(o.ok());
  CHECK(o->server == Endpoint{"cache.internal", 6380});
  CHECK(o->db == 3);
  CHECK_FALSE(o->user);
  CHECK_FALSE(o->password);
  CHECK_FALSE(o->sentinel_mode());

  auto d = Options::FromUrl("redis://10.1.2.3");
  REQUIRE(d.ok());
  CHECK(d->server == Endpoint{"10.1.2.3", 6379});
  CHECK(d->db == 0);
  CHECK(d->connect_timeout == Options{}.connect_timeout);
}

TEST_CASE("redis url: user and password are percent-decoded") {
  auto o = Options::FromUrl("redis://app:p%40ss%3Aw%2Frd@h:1/0");
  REQUIRE(o.ok());
  CHECK(*o->user == "app");
  CHECK(*o->password == "p@ss:w/rd");

  auto p = Options::FromUrl("redis://:only-password@h:1");
  REQUIRE(p.ok());
  CHECK_FALSE(p->user);
  CHECK(*p->password == "only-password");
}

TEST_CASE("redis url: an IPv6 literal is bracketed") {
  auto o = Options::FromUrl("redis://[::1]:7000");
  REQUIRE(o.ok());
  CHECK(o->server == Endpoint{"::1", 7000});
  CHECK(o->server.ToString() == "[::1]:7000");
}

TEST_CASE("redis+sentinel url: sentinels, master name and db are parsed") {
  auto o = Options::FromUrl("redis+sentinel://:pw@s1:26379,s2,[::1]:26380/mymaster/2");
  REQUIRE(o.ok());
  CHECK(o->sentinel_mode());
  REQUIRE(o->sentinels.size() == 3);
  CHECK(o->sentinels[0] == Endpoint{"s1", 26379});
  CHECK(o->sentinels[1] == Endpoint{"s2", 26379});
  CHECK(o->sentinels[2] == Endpoint{"::1", 26380});
  CHECK(o->master_name == "mymaster");
  CHECK(o->db == 2);
  CHECK(*o->password == "pw");
  CHECK(o->Validate().ok());
}

TEST_CASE("redis url: each bad part is named in the error") {
  CHECK_THAT(ErrorOf("http://h:1"), Catch::Contains("scheme must be redis or redis+sentinel"));
  CHECK_THAT(ErrorOf("rediss://h:1"), Catch::Contains("TLS is not supported"));
  CHECK_THAT(ErrorOf("h:6379"), Catch::Contains("scheme is missing"));
  CHECK_THAT(ErrorOf("redis://"), Catch::Contains("host is empty"));
  CHECK_THAT(ErrorOf("redis://:6379"), Catch::Contains("host is empty"));
  CHECK_THAT(ErrorOf("redis://h:abc"), Catch::Contains("port must be a number in 1..65535"));
  CHECK_THAT(ErrorOf("redis://h:70000"), Catch::Contains("port must be a number"));
  CHECK_THAT(ErrorOf("redis://h:"), Catch::Contains("port is empty"));
  CHECK_THAT(ErrorOf("redis://h:1/x"), Catch::Contains("db must be a number"));
  CHECK_THAT(ErrorOf("redis://h:1/-1"), Catch::Contains("db must be a number"));
  CHECK_THAT(ErrorOf("redis://h o:1"), Catch::Contains("host \"h o\" contains an invalid"));
  CHECK_THAT(ErrorOf("redis://[::1:1"), Catch::Contains("unterminated IPv6"));
  CHECK_THAT(ErrorOf("redis://a:1,b:2"), Catch::Contains("need the redis+sentinel:// scheme"));
  CHECK_THAT(ErrorOf("redis://u@h:1"), Catch::Contains("user is given without a password"));
  CHECK_THAT(ErrorOf("redis://:@h:1"), Catch::Contains("password is empty"));
  CHECK_THAT(ErrorOf("redis://h:1?timeout=1"), Catch::Contains("query parameters"));
  CHECK_THAT(ErrorOf("redis+sentinel://s1:26379"), Catch::Contains("master name is missing"));
  CHECK_THAT(ErrorOf("redis+sentinel://s1,/m"), Catch::Contains("host is empty"));
  CHECK_THAT(ErrorOf("redis+sentinel://s1/m/1/2"), Catch::Contains("too many segments"));
  CHECK_THAT(ErrorOf("redis+sentinel://s1/m/x"), Catch::Contains("db must be a number"));
}

TEST_CASE("redis url: a malformed password is reported without echoing it") {
  const std::string error = ErrorOf("redis://:sec%zzret@h:1");
  CHECK_THAT(error, Catch::Contains("password has an invalid percent escape"));
  CHECK_THAT(error, !Catch::Contains("sec"));
}

TEST_CASE("redis options: Validate names the first bad field") {
  Options o;
  CHECK(o.Validate().ok());
  o.connect_timeout = std::chrono::milliseconds(-1);
  CHECK_THAT(std::string(o.Validate().message()),
             Catch::Contains("redis.connect_timeout must be positive, got -1ms"));
  o = Options{};
  o.command_timeout = keel::Duration::zero();
  CHECK_THAT(std::string(o.Validate().message()), Catch::Contains("redis.command_timeout"));
  o = Options{};
  o.sentinels = {{"s", 26379}};
  CHECK_THAT(std::string(o.Validate().message()), Catch::Contains("redis.master_name"));
  o = Options{};
  o.server.port = 0;
  CHECK_THAT(std::string(o.Validate().message()), Catch::Contains("redis.server.port"));
  o = Options{};
  o.user = "u";
  CHECK_THAT(std::string(o.Validate().message()), Catch::Contains("redis.user needs a password"));
}

TEST_CASE("redis url: no error quotes any part of a password, whatever it holds") {
  // Each password holds a character that ends the authority if it is taken literally; the
  // parts after it used to be quoted as a port, a path or a host.
  for (const char* url :
       {"redis://u:pa/ss@h:1", "redis://:sec/ret@h", "redis+sentinel://u:se/cr/et@h/m",
        "redis://u:pa?ss@h", "redis://u:pa#ss@h:1", "redis://:se:cr@et@h:x", "redis://:p%zz@h",
        "redis://:ab/cd@h/1/2"}) {
    INFO(url);
    const std::string error = ErrorOf(url);
    CHECK(error != "(parsed)");
    for (const char* part : {"pa", "ss", "sec", "ret", "se", "cr", "et", "zz", "ab", "cd"}) {
      CHECK_THAT(error, !Catch::Contains(std::string("\"") + part));
      CHECK_THAT(error, !Catch::Contains(std::string(part) + "\""));
    }
  }
  // '@' may appear in a password unescaped: the last '@' ends the credentials.
  auto o = Options::FromUrl("redis://:p@ss@h:1");
  REQUIRE(o.ok());
  CHECK(*o->password == "p@ss");
}
