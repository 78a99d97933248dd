#include "keel/resilience/cancellation.h"

#include <catch2/catch.hpp>

TEST_CASE("a default token is never cancelled") {
  keel::CancellationToken token;
  CHECK_FALSE(token.cancelled());
}

TEST_CASE("cancelling a source cancels every token it handed out, before and after") {
  keel::CancellationSource source;
  keel::CancellationToken before = source.token();
  CHECK_FALSE(before.cancelled());
  CHECK_FALSE(source.cancelled());
  source.Cancel();
  source.Cancel();  // idempotent
  CHECK(before.cancelled());
  CHECK(source.token().cancelled());
  CHECK(source.cancelled());
}

TEST_CASE("a token outlives its source and keeps its state") {
  keel::CancellationToken token;
  {
    keel::CancellationSource source;
    token = source.token();
    source.Cancel();
  }
  CHECK(token.cancelled());
}
