#include "keel/metrics.h"

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>

using Catch::Matchers::Contains;

TEST_CASE("counter renders with help and type lines") {
  keel::MetricsRegistry registry;
  keel::Counter* c = registry.AddCounter("jobs_done_total", "Jobs done.").value();
  c->Increment();
  c->Increment(41);
  CHECK(c->Value() == 42);
  CHECK(registry.RenderPrometheus() ==
        "# HELP jobs_done_total Jobs done.\n"
        "# TYPE jobs_done_total counter\n"
        "jobs_done_total 42\n");
}

TEST_CASE("registering the same series twice returns the same object") {
  keel::MetricsRegistry registry;
  keel::Counter* a = registry.AddCounter("x_total", "X.", {{"k", "v"}}).value();
  keel::Counter* b = registry.AddCounter("x_total", "X.", {{"k", "v"}}).value();
  keel::Counter* c = registry.AddCounter("x_total", "X.", {{"k", "w"}}).value();
  CHECK(a == b);
  CHECK(a != c);
}

TEST_CASE("series are sorted by labels and labels by name, whatever the order given") {
  keel::MetricsRegistry registry;
  registry.AddGauge("temp", "T.", {{"zone", "b"}, {"area", "1"}}).value()->Set(2);
  registry.AddGauge("temp", "T.", {{"area", "1"}, {"zone", "a"}}).value()->Set(1.5);
  registry.AddGauge("alpha", "A.").value()->Set(-3);
  CHECK(registry.RenderPrometheus() ==
        "# HELP alpha A.\n"
        "# TYPE alpha gauge\n"
        "alpha -3\n"
        "# HELP temp T.\n"
        "# TYPE temp gauge\n"
        "temp{area=\"1\",zone=\"a\"} 1.5\n"
        "temp{area=\"1\",zone=\"b\"} 2\n");
}

TEST_CASE("histogram renders cumulative buckets, +Inf, sum and count") {
  keel::MetricsRegistry registry;
  keel::Histogram* h =
      registry.AddHistogram("rpc_seconds", "RPC latency.", {0.1, 0.5, 1}, {{"m", "get"}}).value();
  h->Observe(0.05);
  h->Observe(0.1);  // equal to a bound: counted in that bucket (le is inclusive)
  h->Observe(0.3);
  h->Observe(7);
  CHECK(registry.RenderPrometheus() ==
        "# HELP rpc_seconds RPC latency.\n"
        "# TYPE rpc_seconds histogram\n"
        "rpc_seconds_bucket{m=\"get\",le=\"0.1\"} 2\n"
        "rpc_seconds_bucket{m=\"get\",le=\"0.5\"} 3\n"
        "rpc_seconds_bucket{m=\"get\",le=\"1\"} 3\n"
        "rpc_seconds_bucket{m=\"get\",le=\"+Inf\"} 4\n"
        "rpc_seconds_sum{m=\"get\"} 7.45\n"
        "rpc_seconds_count{m=\"get\"} 4\n");
}

TEST_CASE("histogram observes durations in seconds") {
  keel::Histogram h({0.001, 0.01});
  h.ObserveDuration(std::chrono::microseconds(500));
  h.ObserveDuration(std::chrono::milliseconds(5));
  const keel::Histogram::Snapshot s = h.Snap();
  CHECK(s.cumulative == std::vector<uint64_t>{1, 2, 2});
  CHECK(s.count == 2);
  CHECK(s.sum == Approx(0.0055));
}

TEST_CASE("label values and help text are escaped") {
  keel::MetricsRegistry registry;
  registry
      .AddCounter("odd_total", "Back\\slash and\nnewline \"quoted\".", {{"path", "C:\\dir\n\"x\""}})
      .value()
      ->Increment();
  CHECK(registry.RenderPrometheus() ==
        "# HELP odd_total Back\\\\slash and\\nnewline \"quoted\".\n"
        "# TYPE odd_total counter\n"
        "odd_total{path=\"C:\\\\dir\\n\\\"x\\\"\"} 1\n");
}

TEST_CASE("special float values render as Prometheus spells them") {
  keel::MetricsRegistry registry;
  registry.AddGauge("g", "G.", {{"v", "inf"}})
      .value()
      ->Set(std::numeric_limits<double>::infinity());
  registry.AddGauge("g", "G.", {{"v", "nan"}}).value()->Set(std::nan(""));
  registry.AddGauge("g", "G.", {{"v", "ninf"}})
      .value()
      ->Set(-std::numeric_limits<double>::infinity());
  const std::string text = registry.RenderPrometheus();
  CHECK_THAT(text, Contains("g{v=\"inf\"} +Inf\n"));
  CHECK_THAT(text, Contains("g{v=\"nan\"} NaN\n"));
  CHECK_THAT(text, Contains("g{v=\"ninf\"} -Inf\n"));
}

TEST_CASE("invalid metric names are rejected at registration") {
  keel::MetricsRegistry registry;
  for (const char* name : {"", "9lives_total", "has-dash_total", "has space_total", "é_total"}) {
    INFO(name);
    auto r = registry.AddCounter(name, "x");
    REQUIRE_FALSE(r.ok());
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  }
  CHECK(registry.AddGauge("ns:sub_name", "colons are allowed").ok());
  CHECK(registry.RenderPrometheus().find("9lives") == std::string::npos);
}

TEST_CASE("counters must end in _total and nothing else may") {
  keel::MetricsRegistry registry;
  auto counter = registry.AddCounter("requests", "x");
  CHECK(counter.status().code() == absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(counter.status().message()), Contains("_total"));
  CHECK(registry.AddGauge("queue_total", "x").status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(registry.AddCounter("_total", "x").status().code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("invalid label names are rejected at registration") {
  keel::MetricsRegistry registry;
  for (const char* label : {"", "1st", "a-b", "__reserved", "with:colon"}) {
    INFO(label);
    auto r = registry.AddGauge("g", "x", {{label, "v"}});
    CHECK(r.status().code() == absl::StatusCode::kInvalidArgument);
  }
  CHECK(registry.AddGauge("g", "x", {{"a", "1"}, {"a", "2"}}).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(registry.AddHistogram("h", "x", {1}, {{"le", "1"}}).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(registry.RenderPrometheus().empty());
}

TEST_CASE("a name keeps its first type and histogram bounds") {
  keel::MetricsRegistry registry;
  REQUIRE(registry.AddGauge("m", "x").ok());
  CHECK(registry.AddHistogram("m", "x", {1}).status().code() == absl::StatusCode::kInvalidArgument);
  REQUIRE(registry.AddHistogram("h", "x", {1, 2}).ok());
  CHECK(registry.AddHistogram("h", "x", {1, 3}).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(registry.AddHistogram("bad", "x", {2, 1}).status().code() ==
        absl::StatusCode::kInvalidArgument);
  CHECK(registry.AddHistogram("bad", "x", {1, std::numeric_limits<double>::infinity()})
            .status()
            .code() == absl::StatusCode::kInvalidArgument);
}

TEST_CASE("callback series read their value at render time and vanish with their registration") {
  keel::MetricsRegistry registry;
  double in_use = 3;
  {
    auto reg = registry.AddGaugeCallback("pool_in_use", "In use.", {{"pool", "pg"}},
                                         [&] { return in_use; });
    REQUIRE(reg.ok());
    CHECK_THAT(registry.RenderPrometheus(), Contains("pool_in_use{pool=\"pg\"} 3\n"));
    in_use = 4;
    CHECK_THAT(registry.RenderPrometheus(), Contains("pool_in_use{pool=\"pg\"} 4\n"));
    auto dup =
        registry.AddGaugeCallback("pool_in_use", "In use.", {{"pool", "pg"}}, [] { return 0.0; });
    CHECK(dup.status().code() == absl::StatusCode::kAlreadyExists);
    auto moved = std::move(*reg);
    CHECK_THAT(registry.RenderPrometheus(), Contains("pool_in_use{pool=\"pg\"} 4\n"));
  }
  CHECK(registry.RenderPrometheus().empty());
  auto again = registry.AddCounterCallback("created_total", "C.", {}, [] { return 7.0; });
  REQUIRE(again.ok());
  CHECK_THAT(registry.RenderPrometheus(),
             Contains("# TYPE created_total counter\ncreated_total 7\n"));
  CHECK(registry.AddGaugeCallback("g", "x", {}, nullptr).status().code() ==
        absl::StatusCode::kInvalidArgument);
}
