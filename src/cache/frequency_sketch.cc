#include "cache/frequency_sketch.h"

#include <algorithm>
#include <bit>

namespace keel::cache::internal {
namespace {

constexpr uint64_t kResetMask = 0x7777777777777777ULL;  // clears each counter's top bit after >> 1
constexpr uint64_t kOneMask = 0x1111111111111111ULL;    // each counter's low bit

// Caffeine's two supplemental hashes (hash-prospector's three-round function, then one more
// round), applied to 32 bits of the store's hash: the block comes from the first, the counters
// within the block from the second, so the two choices are independent.
uint32_t Spread(uint32_t x) {
  x ^= x >> 17;
  x *= 0xed5ad4bbU;
  x ^= x >> 11;
  x *= 0xac4c1b51U;
  x ^= x >> 15;
  return x;
}
uint32_t Rehash(uint32_t x) {
  x *= 0x31848babU;
  x ^= x >> 14;
  return x;
}

}  // namespace

void FrequencySketch::EnsureCapacity(size_t capacity) {
  const size_t maximum = std::max(capacity, kMinWords);
  sample_size_ = 10 * maximum;
  if (table_.size() >= maximum) {
    additions_ = std::min(additions_, sample_size_ - 1);
    return;
  }
  table_.assign(std::bit_ceil(maximum), 0);
  block_mask_ = (table_.size() >> 3) - 1;
  additions_ = 0;
}

FrequencySketch::Counters FrequencySketch::Locate(uint64_t hash) const {
  const uint32_t block_hash = Spread(static_cast<uint32_t>(hash));
  const uint32_t counter_hash = Rehash(block_hash);
  const size_t block = (block_hash & block_mask_) << 3;
  Counters c;
  for (int i = 0; i < 4; ++i) {
    // Byte i of the counter hash: its low bit picks a word of the i-th pair, the next four bits
    // one of the word's 16 counters.
    const uint32_t h = counter_hash >> (i << 3);
    c.word[i] = block + (h & 1) + (static_cast<size_t>(i) << 1);
    c.shift[i] = static_cast<int>((h >> 1) & 15) << 2;
  }
  return c;
}

void FrequencySketch::Increment(uint64_t hash) {
  const Counters c = Locate(hash);
  bool added = false;
  for (int i = 0; i < 4; ++i) {
    uint64_t& word = table_[c.word[i]];
    const uint64_t mask = uint64_t{0xf} << c.shift[i];
    if ((word & mask) != mask) {
      word += uint64_t{1} << c.shift[i];
      added = true;
    }
  }
  if (added && ++additions_ == sample_size_) Age();
}

int FrequencySketch::Frequency(uint64_t hash) const {
  const Counters c = Locate(hash);
  int frequency = kMaxCount;
  for (int i = 0; i < 4; ++i) {
    frequency = std::min(frequency, static_cast<int>((table_[c.word[i]] >> c.shift[i]) & 0xf));
  }
  return frequency;
}

void FrequencySketch::Age() {
  // Halving every counter truncates the odd ones: `odd` counts the lost halves, so the additions
  // still standing are (additions - odd / 4) / 2 (four counters per key), as in Caffeine.
  size_t odd = 0;
  for (uint64_t& word : table_) {
    odd += static_cast<size_t>(std::popcount(word & kOneMask));
    word = (word >> 1) & kResetMask;
  }
  additions_ = (additions_ - std::min(additions_, odd >> 2)) >> 1;
}

}  // namespace keel::cache::internal
