// Many threads against one LocalStore: gets, puts, erases, clears and purges of overlapping keys,
// with TTLs on a clock another thread moves, and a removal listener that reads the store. Run
// under TSan in CI. The counters must balance exactly afterwards: every value put is either still
// held or was told to the listener once. Assertions happen on the main thread only (Catch2 v2 is
// not thread-safe).
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "keel/cache/local_store.h"

using namespace std::chrono_literals;
using keel::cache::Eviction;
using keel::cache::LocalStore;
using keel::cache::RemovalCause;

namespace {

constexpr int kThreads = 4;
constexpr int kOpsPerThread = 50'000;

void Hammer(Eviction eviction) {
  keel::ManualClock clock;
  std::atomic<int64_t> removals{0};
  std::atomic<int64_t> listener_reads{0};
  std::unique_ptr<LocalStore<std::string>> store;
  store =
      LocalStore<std::string>::Create(
          {.max_entries = 500,
           .max_weight = 20'000,
           .weigher = [](std::string_view k, const std::string& v) { return k.size() + v.size(); },
           .eviction = eviction,
           .shards = 4,
           .removal_listener =
               [&](std::string_view key, const std::string& value, RemovalCause) {
                 removals.fetch_add(1, std::memory_order_relaxed);
                 // Reads the store from the listener: no lock is held here.
                 if (store->Get(key) || !value.empty()) {
                   listener_reads.fetch_add(1, std::memory_order_relaxed);
                 }
               }},
          clock)
          .value();
  std::atomic<bool> go{false};
  std::atomic<bool> done{false};
  std::thread ticker([&] {
    while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
    while (!done.load(std::memory_order_acquire)) {
      clock.Advance(1ms);
      std::this_thread::yield();
    }
  });
  std::vector<std::thread> threads;
  std::atomic<int64_t> puts{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      while (!go.load(std::memory_order_acquire)) std::this_thread::yield();
      uint64_t x = static_cast<uint64_t>(t) * 7919 + 1;
      int64_t mine = 0;
      for (int i = 0; i < kOpsPerThread; ++i) {
        x = x * 6364136223846793005ULL + 1442695040888963407ULL;
        const std::string key = absl::StrCat("k", (x >> 33) % 2000);
        const int op = static_cast<int>((x >> 20) % 100);
        if (op < 60) {
          (void)store->GetEntry(key);
        } else if (op < 90) {
          const keel::Duration ttl = std::chrono::milliseconds(1 + (x >> 8) % 50);
          if (store->Put(key, std::string((x >> 12) % 64, 'v'), {.ttl = ttl}).ok()) ++mine;
        } else if (op < 98) {
          store->Erase(key);
        } else if (op < 99) {
          store->PurgeExpired();
        } else if (i % 1000 == 0) {
          store->Clear();
        } else {
          (void)store->Stats();
        }
      }
      puts.fetch_add(mine);
    });
  }
  go.store(true, std::memory_order_release);
  for (auto& th : threads) th.join();
  done.store(true, std::memory_order_release);
  ticker.join();

  const auto s = store->Stats();
  CHECK(s.puts_total == static_cast<uint64_t>(puts.load()));
  // Every value put is held or was removed, and each removal reached the listener once.
  CHECK(s.entries + s.evicted_size_total + s.expired_total + s.removed_explicit_total +
            s.replaced_total ==
        s.puts_total);
  CHECK(static_cast<uint64_t>(removals.load()) ==
        s.evicted_size_total + s.expired_total + s.removed_explicit_total + s.replaced_total);
  CHECK(s.entries <= 500);
  CHECK(s.weight <= 20'000);
  CHECK(s.listener_errors_total == 0);
  CHECK(s.hits_total + s.misses_total > 0);
  store.reset();
}

}  // namespace

TEST_CASE(
    "local store under concurrent gets, puts, erases and clears keeps its books (W-TinyLFU)") {
  Hammer(Eviction::kWTinyLfu);
}

TEST_CASE("local store under concurrent gets, puts, erases and clears keeps its books (LRU)") {
  Hammer(Eviction::kLru);
}
