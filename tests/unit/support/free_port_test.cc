// The test servers' port picker: ports outside the kernel's ephemeral range, each handed out once.
#include <catch2/catch.hpp>
#include <cstdio>
#include <set>

#include "support/subprocess.h"

TEST_CASE("test support: free loopback ports lie outside the ephemeral range and never repeat",
          "[support]") {
  int lo = 32768, hi = 60999;
  if (std::FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    REQUIRE(std::fscanf(f, "%d %d", &lo, &hi) == 2);
    std::fclose(f);
  }
  std::set<int> seen;
  for (int i = 0; i < 500; ++i) {
    const int port = keel::test::FreeLoopbackPort();
    INFO("port " << port << ", ephemeral range " << lo << "-" << hi);
    CHECK(port >= 10000);
    CHECK(port <= 65535);
    CHECK((port < lo || port > hi));
    CHECK(seen.insert(port).second);
  }
}
