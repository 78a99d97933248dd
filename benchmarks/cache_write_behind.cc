// Write-behind (Cache<T>::PutBehind, keel/cache/write_behind.h) next to its floor measured in the
// same run: the local tier's own write of the same key (BM_WriteBehind_Floor_TierPut), which every
// PutBehind does too. What PutBehind adds is the pending set: a version per key, an insert or a
// replace (coalescing) under its lock, and waking the flusher when a batch becomes due.
#include <benchmark/benchmark.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "keel/cache/cache.h"
#include "keel/cache/local_tier.h"
#include "keel/cache/write_behind.h"
#include "keel/deadline.h"
#include "zipf.h"

namespace {

using keel::Deadline;
using keel::cache::Cache;
using keel::cache::LocalTier;
using keel::cache::PendingWrite;
using keel::cache::WriteBehind;
using namespace std::chrono_literals;

constexpr uint32_t kKeys = 1024;  // cycled: every write after the first round coalesces

std::unique_ptr<Cache<std::string>> MakeCache(bool flusher, std::atomic<uint64_t>& written) {
  Cache<std::string>::Tiers tiers;
  tiers.push_back(LocalTier<std::string>::Create({.max_entries = 4 * kKeys}).value());
  WriteBehind<std::string> wb;
  wb.writer_batch = [&written](Deadline, std::span<const PendingWrite<std::string>> writes) {
    written.fetch_add(writes.size(), std::memory_order_relaxed);  // a source of truth that is free
    return absl::OkStatus();
  };
  wb.flusher_thread = flusher;
  wb.flush_interval = 1ms;
  return Cache<std::string>::Create({.name = "bench-wb", .ttl = 1h}, std::move(tiers),
                                    std::move(wb))
      .value();
}

// The floor: a Put of the same keys straight into a local tier like the cache's.
void BM_WriteBehind_Floor_TierPut(benchmark::State& state) {
  auto tier = LocalTier<std::string>::Create({.max_entries = 4 * kKeys}).value();
  char buf[16];
  uint32_t id = 0;
  const Deadline d = Deadline::Infinite();
  for (auto _ : state) {
    const std::string_view key = keel::bench::KeyOf(id++ % kKeys, buf);
    benchmark::DoNotOptimize(tier->Set(d, key, std::string("value"), 1h, 0ns));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_WriteBehind_Floor_TierPut);

// PutBehind of the 1024 keys in turn; the rejections it got (none is expected: max_pending is
// far above 1024).
void PutBehindLoop(benchmark::State& state, Cache<std::string>& cache) {
  char buf[16];
  uint32_t id = 0;
  uint64_t rejected = 0;
  const Deadline d = Deadline::Infinite();
  for (auto _ : state) {
    const std::string_view key = keel::bench::KeyOf(id++ % kKeys, buf);
    if (!cache.PutBehind(d, key, std::string("value")).ok()) ++rejected;
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["rejected"] = static_cast<double>(rejected);
}

// PutBehind with no flusher running: 1024 keys pending, each write replaces its key's value.
void BM_WriteBehind_PutBehindCoalescing(benchmark::State& state) {
  std::atomic<uint64_t> written{0};
  auto cache = MakeCache(/*flusher=*/false, written);
  PutBehindLoop(state, *cache);
}
BENCHMARK(BM_WriteBehind_PutBehindCoalescing);

// PutBehind with the flusher thread writing batches of 50 as they become due (writes to the
// source of truth per PutBehind in the counter).
void BM_WriteBehind_PutBehindFlushing(benchmark::State& state) {
  std::atomic<uint64_t> written{0};
  auto cache = MakeCache(/*flusher=*/true, written);
  PutBehindLoop(state, *cache);
  state.counters["flushed_per_put"] =
      static_cast<double>(written.load()) / static_cast<double>(state.iterations());
}
BENCHMARK(BM_WriteBehind_PutBehindFlushing)->UseRealTime();

}  // namespace
