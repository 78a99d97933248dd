// Shared helpers for keel's benchmarks: where the test servers are.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>

namespace keel::bench {

// The value of an environment variable, or nullopt when unset or empty.
inline std::optional<std::string> Env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string(v);
}

}  // namespace keel::bench
