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

namespace keel_test {

// A URBG whose every draw is the fraction `*u` of its range: absl::Uniform(gen, 0.0, 1.0) then
// returns *u (to within 2^-53). Point it at a variable the test changes. REQUIRES: *u in [0, 1).
struct FractionGen {
  using result_type = uint64_t;
  static constexpr result_type min() { return 0; }
  static constexpr result_type max() { return std::numeric_limits<result_type>::max(); }
  result_type operator()() { return static_cast<result_type>(*u * 18446744073709551616.0); }
  const double* u;
};

}  // namespace keel_test
