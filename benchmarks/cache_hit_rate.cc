// Hit rates of keel::cache::LocalStore's eviction policies (LRU, W-TinyLFU) on synthetic traces,
// next to Belady's optimal (MIN: evict the entry whose next use is furthest away, or bypass the
// missed key when its next use is further still: the offline upper bound), at several cache sizes.
//
// Usage: keel_cache_hit_rate [--csv <file>]
// Prints a markdown table (docs/caching.md shows it) and checks the targets of issue 12: W-TinyLFU
// ahead of LRU on the scan and loop traces and at most 1 point behind it on the Zipf traces; exits
// 1 if one is missed. Deterministic: fixed seeds, and the store's own tie-break coin is seeded.
// Traces are 2M accesses each: the whole run takes 20 to 45 s on the 2-core development machine
// (shared, so it varies), within the minute the issue allows.
//
// absl::Hash, which the store hashes keys with, is seeded per process from an address, so under
// address-space randomisation the keys' shards and sketch counters move from run to run (hit
// rates then vary by up to about a point). The harness re-executes itself once with
// randomisation off (Linux personality ADDR_NO_RANDOMIZE), which makes runs of one binary
// identical.
//
// A cache-aside replay: each access is a Get, and a miss is followed by a Put, as a service
// would do; the stores use the default options (16 shards, fewer for a small store) but the size.
#include <sys/personality.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <queue>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "keel/cache/local_store.h"
#include "zipf.h"

namespace {

using keel::cache::Eviction;
using keel::cache::LocalStore;

constexpr uint32_t kKeys = 1'000'000;    // the Zipf traces' key space
constexpr size_t kAccesses = 2'000'000;  // per trace
constexpr uint32_t kNever = UINT32_MAX;

// How a row is judged against the targets.
enum class Target {
  kZipf,     // W-TinyLFU at most 1 point behind LRU
  kHostile,  // scan or loop: W-TinyLFU ahead of LRU
  kShown,    // not judged: shown for what it says about the policy's limits
};

struct Trace {
  std::string name;
  Target target;
  std::vector<uint32_t> keys;
};

using keel::bench::KeyOf;
using keel::bench::Scramble;
using keel::bench::Zipf;

Trace ZipfTrace(double s, uint64_t seed) {
  Trace t{"Zipf " + std::to_string(s).substr(0, 3), Target::kZipf, {}};
  const Zipf zipf(kKeys, s);
  std::mt19937_64 rng(seed);
  t.keys.reserve(kAccesses);
  for (size_t i = 0; i < kAccesses; ++i) t.keys.push_back(Scramble(zipf(rng)));
  return t;
}

// Zipf 1.0, with a scan of 100k keys never seen before (nor after) every 200k accesses.
Trace ScanTrace(uint64_t seed) {
  Trace t{"Zipf 1.0 + scans", Target::kHostile, {}};
  const Zipf zipf(kKeys, 1.0);
  std::mt19937_64 rng(seed);
  uint32_t fresh = 0;
  while (t.keys.size() < kAccesses) {
    for (int i = 0; i < 200'000 && t.keys.size() < kAccesses; ++i) {
      t.keys.push_back(Scramble(zipf(rng)));
    }
    for (int i = 0; i < 100'000 && t.keys.size() < kAccesses; ++i) {
      t.keys.push_back(Scramble(kKeys + fresh++));
    }
  }
  return t;
}

// 0, 1, ..., length - 1, 0, 1, ...: the trace that defeats LRU when length > the cache.
Trace LoopTrace(uint32_t length, Target target) {
  Trace t{"loop of " + std::to_string(length), target, {}};
  t.keys.reserve(kAccesses);
  for (size_t i = 0; i < kAccesses; ++i)
    t.keys.push_back(Scramble(static_cast<uint32_t>(i % length)));
  return t;
}

double StoreHitRate(const Trace& t, size_t size, Eviction eviction) {
  auto store = LocalStore<uint32_t>::Create({.max_entries = size, .eviction = eviction}).value();
  size_t hits = 0;
  char buf[16];
  for (uint32_t id : t.keys) {
    const std::string_view key = KeyOf(id, buf);
    if (store->Get(key)) {
      ++hits;
    } else {
      (void)store->Put(key, id);
    }
  }
  return 100.0 * static_cast<double>(hits) / static_cast<double>(t.keys.size());
}

// For each access, the index of the next access to the same key (kNever if none).
std::vector<uint32_t> NextUses(const Trace& t) {
  std::vector<uint32_t> next(t.keys.size());
  absl::flat_hash_map<uint32_t, uint32_t> last;
  last.reserve(t.keys.size());
  for (size_t i = t.keys.size(); i-- > 0;) {
    auto [it, inserted] = last.try_emplace(t.keys[i], static_cast<uint32_t>(i));
    next[i] = inserted ? kNever : it->second;
    it->second = static_cast<uint32_t>(i);
  }
  return next;
}

// Belady's MIN with bypass. The cache maps key -> its next use; a max-heap of (next use, key)
// finds the furthest, with stale heap entries skipped when popped.
double BeladyHitRate(const Trace& t, const std::vector<uint32_t>& next, size_t size) {
  absl::flat_hash_map<uint32_t, uint32_t> cached;
  cached.reserve(size * 2);
  std::priority_queue<std::pair<uint32_t, uint32_t>> furthest;
  size_t hits = 0;
  for (size_t i = 0; i < t.keys.size(); ++i) {
    const uint32_t key = t.keys[i];
    if (auto it = cached.find(key); it != cached.end()) {
      ++hits;
      it->second = next[i];
      furthest.emplace(next[i], key);
      continue;
    }
    if (next[i] == kNever) continue;  // never used again: caching it cannot help
    if (cached.size() >= size) {
      // Drop stale heap entries until the top is a cached key's current next use.
      while (true) {
        const auto [use, victim] = furthest.top();
        auto it = cached.find(victim);
        if (it != cached.end() && it->second == use) break;
        furthest.pop();
      }
      if (furthest.top().first <= next[i]) continue;  // the missed key is needed last: bypass
      cached.erase(furthest.top().second);
      furthest.pop();
    }
    cached.emplace(key, next[i]);
    furthest.emplace(next[i], key);
  }
  return 100.0 * static_cast<double>(hits) / static_cast<double>(t.keys.size());
}

}  // namespace

int main(int argc, char** argv) {
  // Once: without ASLR the per-process hash seed, and so every figure, is the same on each run.
  const int persona = personality(0xffffffff);
  if (persona != -1 && (persona & ADDR_NO_RANDOMIZE) == 0 &&
      personality(static_cast<unsigned long>(persona | ADDR_NO_RANDOMIZE)) != -1) {
    execv("/proc/self/exe", argv);  // returns only on failure: then run as we are
  }
  const char* csv_path = nullptr;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--csv") == 0 && i + 1 < argc) csv_path = argv[++i];
  }
  const auto start = std::chrono::steady_clock::now();
  const std::vector<size_t> sizes = {1'000, 10'000, 100'000};
  // Each trace with the cache sizes it is replayed at.
  std::vector<std::pair<Trace, std::vector<size_t>>> cases;
  cases.emplace_back(ZipfTrace(0.8, 1), sizes);
  cases.emplace_back(ZipfTrace(1.0, 2), sizes);
  cases.emplace_back(ScanTrace(3), sizes);
  // A loop 1.5x the cache, per size; then the loop of 150k at the smaller sizes, where it is more
  // than 10x the cache: longer than the sketch's history (10 x capacity), so every key looks new
  // to TinyLFU, which then admits like LRU (docs/caching.md).
  for (size_t size : sizes) {
    cases.emplace_back(LoopTrace(static_cast<uint32_t>(size * 3 / 2), Target::kHostile),
                       std::vector<size_t>{size});
  }
  cases.emplace_back(LoopTrace(150'000, Target::kShown), std::vector<size_t>{1'000, 10'000});

  std::ofstream csv;
  if (csv_path != nullptr) {
    csv.open(csv_path);
    csv << "trace,size,lru,wtinylfu,belady\n";
  }
  std::printf("Traces of %zu accesses; Zipf over %u keys. Hit rates in %%.\n\n", kAccesses, kKeys);
  std::printf(
      "| trace | cache size | LRU | W-TinyLFU | Belady (optimal) | W-TinyLFU - LRU | "
      "Belady - W-TinyLFU | target |\n|---|---|---|---|---|---|---|---|\n");
  bool met = true;
  std::string misses;
  for (const auto& [t, trace_sizes] : cases) {
    const std::vector<uint32_t> next = NextUses(t);
    for (size_t size : trace_sizes) {
      const double lru = StoreHitRate(t, size, Eviction::kLru);
      const double tiny = StoreHitRate(t, size, Eviction::kWTinyLfu);
      const double opt = BeladyHitRate(t, next, size);
      const char* judged = t.target == Target::kZipf      ? ">= LRU - 1"
                           : t.target == Target::kHostile ? "> LRU"
                                                          : "(shown)";
      std::printf("| %s | %zu | %.2f | %.2f | %.2f | %+.2f | %.2f | %s |\n", t.name.c_str(), size,
                  lru, tiny, opt, tiny - lru, opt - tiny, judged);
      std::fflush(stdout);
      if (csv.is_open()) {
        csv << '"' << t.name << "\"," << size << ',' << lru << ',' << tiny << ',' << opt << '\n';
      }
      const bool ok = t.target == Target::kZipf      ? tiny >= lru - 1.0
                      : t.target == Target::kHostile ? tiny > lru
                                                     : true;
      if (!ok) {
        met = false;
        misses += "  " + t.name + " at " + std::to_string(size) + "\n";
      }
    }
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::printf("\nTargets (W-TinyLFU > LRU on scan and loop, >= LRU - 1 point on Zipf): %s\n",
              met ? "met" : "MISSED");
  if (!met) std::printf("%s", misses.c_str());
  std::printf("Run time: %.1f s\n", seconds);
  return met ? 0 : 1;
}
