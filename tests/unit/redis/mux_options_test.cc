// Server-free tests of the multiplexed transport's options and of which commands it refuses to
// multiplex.
#include <catch2/catch.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "keel/redis/command.h"
#include "keel/redis/options.h"

using keel::redis::Options;
using keel::redis::Pipeline;
using keel::redis::Transport;
using keel::redis::internal::IsBlockingCommand;

namespace {
bool Blocking(std::vector<std::string_view> argv) { return IsBlockingCommand(argv); }
}  // namespace

TEST_CASE("redis options: the multiplexed transport is the default, with one connection") {
  Options o;
  CHECK(o.transport == Transport::kMultiplexed);
  CHECK(o.mux.connections == 1);
  CHECK(o.Validate().ok());
}

TEST_CASE("redis options: mux limits are validated and named") {
  Options o;
  o.mux.connections = 0;
  CHECK(std::string(o.Validate().message()) == "redis.mux.connections must be in 1..64, got 0");
  o.mux.connections = 65;
  CHECK_FALSE(o.Validate().ok());
  o.mux.connections = 2;
  o.mux.max_queued_calls = 0;
  CHECK_THAT(std::string(o.Validate().message()), Catch::StartsWith("redis.mux.max_queued_calls"));
  o.mux.max_queued_calls = 1;
  o.mux.max_bytes_in_flight = 0;
  CHECK_THAT(std::string(o.Validate().message()),
             Catch::StartsWith("redis.mux.max_bytes_in_flight"));
}

TEST_CASE("redis command: blocking commands are recognised, case-insensitively") {
  for (std::string_view name : {"BLPOP", "brpop", "BLMove", "BRPOPLPUSH", "BZPOPMIN", "BZPOPMAX",
                                "BLMPOP", "BZMPOP", "WAIT", "waitaof"}) {
    INFO(name);
    CHECK(Blocking({name, "k", "0"}));
  }
  CHECK(Blocking({"XREAD", "COUNT", "1", "BLOCK", "0", "STREAMS", "s", "$"}));
  CHECK(Blocking({"xreadgroup", "GROUP", "g", "c", "block", "10", "STREAMS", "s", ">"}));
  // BLOCK after STREAMS is a key or an ID, not the option.
  CHECK_FALSE(Blocking({"XREAD", "STREAMS", "BLOCK", "0"}));
  CHECK_FALSE(Blocking({"XREAD", "COUNT", "1", "STREAMS", "s", "0"}));
  CHECK_FALSE(Blocking({"LPOP", "k"}));
  CHECK_FALSE(Blocking({"GET", "BLPOP"}));
  CHECK_FALSE(Blocking({}));
}

TEST_CASE("redis pipeline: remembers whether a command blocks, also through Append") {
  Pipeline plain;
  plain.Add("GET", "a").Add("INCR", "b");
  CHECK_FALSE(plain.has_blocking());
  Pipeline blocking;
  blocking.Add("BLPOP", "q", 1);
  CHECK(blocking.has_blocking());
  Pipeline both;
  both.Append(plain).Append(blocking);
  CHECK(both.has_blocking());
  both.Clear();
  CHECK_FALSE(both.has_blocking());
}
