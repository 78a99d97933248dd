// Server-free tests of replies, error mapping, argument encoding and script hashing.
#include "keel/redis/reply.h"

#include <catch2/catch.hpp>
#include <string>

#include "keel/redis/command.h"
#include "keel/redis/script.h"

using keel::redis::Arg;
using keel::redis::Pipeline;
using keel::redis::Reply;

TEST_CASE("reply: typed accessors and checked conversions") {
  CHECK(Reply().is_nil());
  CHECK(Reply::Integer(-7).integer() == -7);
  CHECK(*Reply::Integer(5).AsInteger() == 5);
  CHECK(*Reply::String("x").AsString() == "x");
  CHECK(*Reply::Status("OK").AsString() == "OK");
  CHECK_FALSE(Reply::Nil().AsOptionalString()->has_value());
  auto bad = Reply::String("5").AsInteger();
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.status().code() == absl::StatusCode::kInternal);
  CHECK_THAT(std::string(bad.status().message()),
             Catch::Contains("expected a integer reply, got string"));
}

TEST_CASE("reply: DebugString shows nesting and escapes binary bytes") {
  Reply r = Reply::Array({Reply::Integer(1), Reply::String(std::string("a\0\"", 3)), Reply::Nil(),
                          Reply::Status("OK"), Reply::Error("ERR x")});
  CHECK(r.DebugString() == "[1, \"a\\x00\\x22\", nil, +OK, -ERR x]");
}

TEST_CASE("server errors map to codes by their first word and keep the message") {
  auto s = keel::redis::ServerErrorToStatus("redis h:1", "WRONGTYPE Operation against a key");
  CHECK(s.code() == absl::StatusCode::kInvalidArgument);
  CHECK(s.message() == "redis h:1: WRONGTYPE Operation against a key");
  CHECK(*keel::redis::ServerError(s) == "WRONGTYPE Operation against a key");
  CHECK(keel::redis::IsServerError(s, "WRONGTYPE"));
  CHECK_FALSE(keel::redis::IsServerError(s, "WRONG"));
  using C = absl::StatusCode;
  auto code = [](const char* m) { return keel::redis::ServerErrorToStatus("r", m).code(); };
  CHECK(code("READONLY You can't write against a read only replica.") == C::kUnavailable);
  CHECK(code("LOADING Redis is loading the dataset in memory") == C::kUnavailable);
  CHECK(code("BUSY Redis is busy running a script.") == C::kUnavailable);
  CHECK(code("OOM command not allowed") == C::kResourceExhausted);
  CHECK(code("NOAUTH Authentication required.") == C::kPermissionDenied);
  CHECK(code("WRONGPASS invalid username-password pair") == C::kPermissionDenied);
  CHECK(code("NOSCRIPT No matching script.") == C::kNotFound);
  CHECK(code("EXECABORT Transaction discarded") == C::kAborted);
  CHECK(code("ERR unknown command") == C::kInvalidArgument);
  CHECK_FALSE(keel::redis::ServerError(absl::UnavailableError("io")).has_value());
}

TEST_CASE("arguments: strings are viewed, integers formatted, copies stay valid") {
  std::string s("with\0nul", 8);
  CHECK(Arg(s).view() == s);
  CHECK(Arg("lit").view() == "lit");
  CHECK(Arg(absl::string_view("absl")).view() == "absl");
  CHECK(Arg(int64_t{-9223372036854775807LL - 1}).view() == "-9223372036854775808");
  CHECK(Arg(uint64_t{18446744073709551615ULL}).view() == "18446744073709551615");
  Arg a(42);
  Arg b = a;
  a = Arg(7);
  CHECK(b.view() == "42");
  CHECK(a.view() == "7");
}

TEST_CASE("pipeline: commands are RESP-encoded, binary-safe, one entry per Add") {
  Pipeline p;
  CHECK(p.empty());
  p.Add("SET", std::string("k\r\n", 3), 12);
  p.Add("PING");
  CHECK(p.size() == 2);
  CHECK(p.encoded() == "*3\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n*1\r\n$4\r\nPING\r\n");
  p.Clear();
  CHECK(p.empty());
  CHECK(p.encoded().empty());
}

TEST_CASE("script: the SHA-1 name matches the standard test vectors") {
  CHECK(keel::redis::Script("").sha1() == "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  CHECK(keel::redis::Script("abc").sha1() == "a9993e364706816aba3e25717850c26c9cd0d89d");
  CHECK(keel::redis::Script("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq").sha1() ==
        "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
  CHECK(keel::redis::Script(std::string(1000, 'a')).sha1() ==
        "291e9a6c66994949b57ba5e650361e98fc36b1ba");
  CHECK(keel::redis::Script("return 1").sha1() == "e0e1f9fabfc9d4800c877a703b823ac0578ff8db");
}
