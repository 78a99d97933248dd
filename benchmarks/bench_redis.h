// The Redis server keel's Redis benchmarks run against.
#pragma once

#include <benchmark/benchmark.h>

#include <optional>
#include <string>

#include "bench_env.h"
#include "keel/redis/options.h"

namespace keel::bench {

// The options of KEEL_TEST_REDIS_URL, or nullopt after marking `state` skipped with the reason.
inline std::optional<redis::Options> RedisOptionsOrSkip(benchmark::State& state) {
  const std::optional<std::string> url = Env("KEEL_TEST_REDIS_URL");
  if (!url) {
    state.SkipWithError("KEEL_TEST_REDIS_URL is not set (run scripts/bench or scripts/test)");
    return std::nullopt;
  }
  absl::StatusOr<redis::Options> options = redis::Options::FromUrl(*url);
  if (!options.ok()) {
    state.SkipWithError(std::string(options.status().message()).c_str());
    return std::nullopt;
  }
  return *std::move(options);
}

}  // namespace keel::bench
