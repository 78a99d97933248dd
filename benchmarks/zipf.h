// Shared by the cache benchmarks (cache.cc, the floor in baselines.cc) and the hit-rate harness
// (cache_hit_rate.cc): a deterministic Zipf sampler and 16-byte keys.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <random>
#include <string>
#include <string_view>
#include <vector>

namespace keel::bench {

// Zipf(s) over ranks [0, n): inverse CDF by binary search on a table, exact and deterministic
// for a seeded engine.
class Zipf {
 public:
  Zipf(uint32_t n, double s) : cdf_(n) {
    double sum = 0;
    for (uint32_t i = 0; i < n; ++i) cdf_[i] = (sum += 1.0 / std::pow(i + 1.0, s));
    for (double& c : cdf_) c /= sum;
  }
  uint32_t operator()(std::mt19937_64& rng) const {
    const double u = std::uniform_real_distribution<double>(0, 1)(rng);
    const auto it = std::lower_bound(cdf_.begin(), cdf_.end(), u);
    return static_cast<uint32_t>(std::min<std::ptrdiff_t>(it - cdf_.begin(), std::ssize(cdf_) - 1));
  }

 private:
  std::vector<double> cdf_;
};

// Key ids scrambled by a fixed odd multiplier, so that rank order does not follow key order.
inline uint32_t Scramble(uint32_t rank) { return rank * 2654435761U; }

// A 16-byte key for an id, without allocating: "key:" + 12 hex digits.
inline std::string_view KeyOf(uint32_t id, char (&buf)[16]) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::memcpy(buf, "key:", 4);
  uint64_t v = id;
  for (int i = 15; i >= 4; --i, v >>= 4) buf[i] = kHex[v & 15];
  return {buf, 16};
}

// The hit benchmarks' workload: kHitKeys distinct 16-byte keys, and an access order of
// kHitOrder key indices drawn from Zipf(0.99) (YCSB's constant), built once per process.
constexpr uint32_t kHitKeys = 1'000'000;
constexpr size_t kHitOrder = size_t{1} << 20;
struct HitWorkload {
  std::vector<std::string> keys;
  std::vector<uint32_t> order;
};
inline const HitWorkload& Hits() {
  static const HitWorkload* w = [] {
    auto* h = new HitWorkload;
    char buf[16];
    h->keys.reserve(kHitKeys);
    for (uint32_t i = 0; i < kHitKeys; ++i) h->keys.emplace_back(KeyOf(Scramble(i), buf));
    const Zipf zipf(kHitKeys, 0.99);
    std::mt19937_64 rng(42);
    h->order.reserve(kHitOrder);
    // Rank r is key index Scramble(r) % kHitKeys: the hot keys are spread over the table.
    for (size_t i = 0; i < kHitOrder; ++i) h->order.push_back(Scramble(zipf(rng)) % kHitKeys);
    return h;
  }();
  return *w;
}

}  // namespace keel::bench
