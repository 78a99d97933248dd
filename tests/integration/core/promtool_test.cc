// Renders a registry holding every kind of series, with awkward label values and help text, and
// asks Prometheus' own linter (`promtool check metrics`, Debian package prometheus) to judge it.
#include <sys/wait.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "keel/metrics.h"

TEST_CASE("promtool accepts the rendered registry without a single warning") {
  keel::MetricsRegistry registry;
  registry
      .AddCounter("keel_requests_total", "Requests served, by route.",
                  {{"route", "/diaries/{id}"}, {"method", "GET"}})
      .value()
      ->Increment(17);
  registry
      .AddCounter("keel_requests_total", "Requests served, by route.",
                  {{"route", "C:\\path\n\"quoted\" ünïcödé"}, {"method", "POST"}})
      .value()
      ->Increment();
  registry
      .AddGauge("keel_pool_idle_connections", "Idle connections.\nSecond line \\ backslash.",
                {{"pool", "pg-primary"}})
      .value()
      ->Set(3.5);
  keel::Histogram* h = registry
                           .AddHistogram("keel_request_duration_seconds", "Request latency.",
                                         keel::DefaultLatencyBuckets(), {{"route", "/x"}})
                           .value();
  for (double v : {0.0001, 0.003, 0.02, 0.7, 42.0}) h->Observe(v);
  auto reg = registry
                 .AddGaugeCallback("keel_breaker_state", "Breaker state (0 closed, 1 open).",
                                   {{"name", "ai"}}, [] { return 1.0; })
                 .value();
  auto reg2 = registry
                  .AddCounterCallback("keel_pool_created_total", "Connections created.",
                                      {{"pool", "redis"}}, [] { return 12.0; })
                  .value();

  const auto dir = std::filesystem::temp_directory_path() / "keel_promtool_test";
  std::filesystem::create_directories(dir);
  const auto path = dir / "metrics.txt";
  {
    std::ofstream out(path);
    out << registry.RenderPrometheus();
  }
  const std::string cmd = "promtool check metrics < " + path.string() + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::string output;
  std::array<char, 512> buf;
  while (fgets(buf.data(), buf.size(), pipe) != nullptr) output += buf.data();
  const int rc = pclose(pipe);
  INFO("promtool output:\n" << output);
  REQUIRE(WIFEXITED(rc));
  CHECK(WEXITSTATUS(rc) == 0);
  CHECK(output.empty());
}
