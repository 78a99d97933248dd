// Fixed random sources for the overload tests.
#pragma once

#include <cstdint>
#include <limits>

namespace keel_test {

// A URBG that always returns its minimum: absl::Uniform(gen, a, b) over reals then returns a.
// Not for integer distributions (their rejection sampling never accepts a constant 0).
struct ZeroGen {
  using result_type = uint64_t;
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return std::numeric_limits<result_type>::max(); }
  result_type operator()() { return 0; }
};

}  // namespace keel_test
