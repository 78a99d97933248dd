// The frequency filter of W-TinyLFU: a count-min sketch of 4-bit counters with periodic aging,
// after Caffeine's FrequencySketch (ben-manes/caffeine, FrequencySketch.java) and the TinyLFU
// paper (Einziger, Friedman, Manes: "TinyLFU: A Highly Efficient Cache Admission Policy", ACM
// TOS 2017). Private to src/cache/.
//
// Layout: `words` 64-bit words (a power of two, at least kMinWords), 16 counters of 4 bits each.
// The words are grouped in 64-byte blocks of 8: a key picks one block from its hash, and in it
// four counters, one in each 16-byte pair of words, so an increment or an estimate touches one
// cache line. The estimate is the minimum of the four (count-min); counters saturate at 15.
//
// Sizing: one word per entry the cache can hold (rounded up to a power of two), so 8 to 16 bytes
// per entry of capacity; with 16 counters per word and 4 counters per key, that is Caffeine's
// configuration (error bound e / width at 93.75% confidence).
//
// Aging (TinyLFU's "reset"): after `sample_size` = 10 x capacity increments that changed a
// counter, every counter is halved, so the sketch estimates frequency over a sliding history of
// about ten cache sizes of traffic and a key that was hot long ago fades. The pass is O(words),
// amortised over the 10 x capacity increments that precede it.
//
// Not thread-safe: each shard of the store owns one and uses it under the shard's lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace keel::cache::internal {

class FrequencySketch {
 public:
  static constexpr size_t kMinWords = 256;  // Caffeine's MIN_SKETCH_SIZE
  static constexpr int kMaxCount = 15;

  // Sized for a cache of `capacity` entries; forgets every count when it grows.
  explicit FrequencySketch(size_t capacity) { EnsureCapacity(capacity); }

  // Grows the table (forgetting every count) when `capacity` needs more words than it has, and
  // adjusts the sample size to 10 x capacity.
  void EnsureCapacity(size_t capacity);

  // Counts one occurrence of the key with this hash.
  void Increment(uint64_t hash);
  // The estimated number of occurrences in the recent history, 0 to 15.
  int Frequency(uint64_t hash) const;

  size_t words() const { return table_.size(); }
  size_t sample_size() const { return sample_size_; }
  // Increments since the last aging, as the aging period counts them.
  size_t additions() const { return additions_; }
  size_t bytes() const { return table_.size() * sizeof(uint64_t); }

 private:
  // Where a key's four counters are: word index and bit shift of each.
  struct Counters {
    size_t word[4];
    int shift[4];
  };
  Counters Locate(uint64_t hash) const;
  void Age();

  std::vector<uint64_t> table_;
  size_t block_mask_ = 0;
  size_t sample_size_ = 0;
  size_t additions_ = 0;
};

}  // namespace keel::cache::internal
