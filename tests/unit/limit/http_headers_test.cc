#include "keel/limit/http_headers.h"

#include <catch2/catch.hpp>

using namespace std::chrono_literals;
using keel::limit::Decision;
using keel::limit::HttpHeader;
using keel::limit::HttpHeaders;

TEST_CASE("http headers for an allowed request follow draft-10 and the legacy fields") {
  const Decision d{.allowed = true, .limit = 100, .remaining = 42, .reset_after = 16500ms};
  const auto headers = HttpHeaders(d, {.name = "api", .window = 60s});
  CHECK(headers == std::vector<HttpHeader>{
                       {"RateLimit-Policy", "\"api\";q=100;w=60"},
                       {"RateLimit", "\"api\";r=42;t=17"},
                       {"RateLimit-Limit", "100"},
                       {"RateLimit-Remaining", "42"},
                       {"RateLimit-Reset", "17"},
                   });
}

TEST_CASE("http headers for a denied request add Retry-After rounded up") {
  const Decision d{
      .allowed = false, .limit = 5, .remaining = 0, .reset_after = 5s, .retry_after = 1200ms};
  const auto headers = HttpHeaders(d, {.name = "login", .window = 5min});
  REQUIRE(headers.size() == 6);
  CHECK(headers.back() == HttpHeader{"Retry-After", "2"});
  CHECK(headers[0].value == "\"login\";q=5;w=300");
}

TEST_CASE("http headers never say Retry-After 0 and omit it when no wait helps") {
  Decision d{.allowed = false, .limit = 5, .retry_after = 1ns};
  CHECK(HttpHeaders(d, {}).back() == HttpHeader{"Retry-After", "1"});
  d.retry_after = keel::limit::kNever;
  for (const auto& h : HttpHeaders(d, {})) CHECK(h.name != "Retry-After");
}

TEST_CASE("http headers escape the policy name so it cannot break the header") {
  const Decision d{.allowed = true, .limit = 1, .remaining = 1};
  const auto headers = HttpHeaders(d, {.name = "a\"b\\c\r\nX: y", .window = 1s});
  CHECK(headers[0].value == "\"a\\\"b\\\\c??X: y\";q=1;w=1");
}

TEST_CASE("rate-limit headers of a degraded decision carry no remaining quota or reset") {
  keel::limit::Decision d;
  d.allowed = true;
  d.limit = 100;
  d.remaining = 0;  // unknown: a fail-open decision leaves it at zero
  d.degraded = true;
  const auto headers =
      keel::limit::HttpHeaders(d, {.name = "api", .window = std::chrono::minutes(1)});
  REQUIRE(headers.size() == 2);
  CHECK(headers[0] == keel::limit::HttpHeader{"RateLimit-Policy", "\"api\";q=100;w=60"});
  CHECK(headers[1] == keel::limit::HttpHeader{"RateLimit-Limit", "100"});
  // Denied by a local fallback: the wait it computed is real for this process, so Retry-After
  // stays.
  d.allowed = false;
  d.retry_after = std::chrono::milliseconds(2500);
  const auto denied =
      keel::limit::HttpHeaders(d, {.name = "api", .window = std::chrono::minutes(1)});
  REQUIRE(denied.size() == 3);
  CHECK(denied[2] == keel::limit::HttpHeader{"Retry-After", "3"});
}

TEST_CASE("rate-limit headers clamp counts to RFC 8941's sf-integer range") {
  keel::limit::Decision d;
  d.allowed = true;
  d.limit = -5;
  d.remaining = int64_t{1} << 62;
  const auto headers =
      keel::limit::HttpHeaders(d, {.name = "api", .window = std::chrono::seconds(1)});
  REQUIRE(headers.size() == 5);
  CHECK(headers[0] == keel::limit::HttpHeader{"RateLimit-Policy", "\"api\";q=0;w=1"});
  CHECK(headers[1] == keel::limit::HttpHeader{"RateLimit", "\"api\";r=999999999999999;t=0"});
  CHECK(headers[2] == keel::limit::HttpHeader{"RateLimit-Limit", "0"});
  CHECK(headers[3] == keel::limit::HttpHeader{"RateLimit-Remaining", "999999999999999"});
}
