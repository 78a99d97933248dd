// The W-TinyLFU machinery below LocalStore: the frequency sketch and the policy's invariants.
#include "cache/policy.h"

#include <catch2/catch.hpp>
#include <cstdint>
#include <memory>
#include <vector>

#include "cache/frequency_sketch.h"
#include "keel/cache/internal/store_core.h"

using keel::cache::Eviction;
using keel::cache::internal::FrequencySketch;
using keel::cache::internal::NodeBase;
using keel::cache::internal::Policy;
using keel::cache::internal::Usage;
using keel::cache::internal::Victims;

namespace {

uint64_t Mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  return x;
}

// Walks every list: the node counts and weights match the policy's books, queue tags match.
void CheckBooks(const Policy& p) {
  Usage all, window, prot;
  for (auto q : {Policy::kWindow, Policy::kProbation, Policy::kProtected}) {
    for (NodeBase* n = p.list(q).Front(); n != nullptr; n = p.list(q).Next(n)) {
      REQUIRE(n->queue == q);
      ++all.entries;
      all.weight += n->weight;
      if (q == Policy::kWindow) ++window.entries, window.weight += n->weight;
      if (q == Policy::kProtected) ++prot.entries, prot.weight += n->weight;
    }
  }
  REQUIRE(all.entries == p.used().entries);
  REQUIRE(all.weight == p.used().weight);
  REQUIRE(window.entries == p.window_used().entries);
  REQUIRE(prot.entries == p.protected_used().entries);
  REQUIRE(prot.weight == p.protected_used().weight);
  REQUIRE(p.used().entries <= p.budget().entries);
  REQUIRE(p.used().weight <= p.budget().weight);
  REQUIRE(p.protected_used().entries <= p.protected_budget().entries);
}

}  // namespace

TEST_CASE("frequency sketch counts up to 15 and estimates unseen keys near 0") {
  FrequencySketch sketch(1000);
  CHECK(sketch.words() == 1024);          // one word per entry, to a power of two
  CHECK(sketch.sample_size() == 10'000);  // aging period: 10 x capacity
  for (int i = 0; i < 5; ++i) sketch.Increment(Mix(1));
  CHECK(sketch.Frequency(Mix(1)) == 5);
  for (int i = 0; i < 20; ++i) sketch.Increment(Mix(1));
  CHECK(sketch.Frequency(Mix(1)) == 15);  // 4-bit counters saturate
  int unseen_nonzero = 0;
  for (uint64_t k = 100; k < 1100; ++k) unseen_nonzero += sketch.Frequency(Mix(k)) > 0;
  CHECK(unseen_nonzero == 0);  // one key counted: no other key shares all four of its counters
}

TEST_CASE("frequency sketch halves every counter after sample_size increments") {
  FrequencySketch sketch(256);
  REQUIRE(sketch.sample_size() == 2560);
  for (int i = 0; i < 12; ++i) sketch.Increment(Mix(7));
  for (int i = 0; i < 9; ++i) sketch.Increment(Mix(8));
  REQUIRE(sketch.Frequency(Mix(7)) == 12);
  // Fill up to one increment before the aging pass with other keys.
  uint64_t k = 1000;
  while (sketch.additions() < sketch.sample_size() - 1) sketch.Increment(Mix(k++));
  const int before7 = sketch.Frequency(Mix(7));
  const int before8 = sketch.Frequency(Mix(8));
  // One more increment that changes a counter (a new key's does) triggers the halving.
  sketch.Increment(Mix(k++));
  CHECK(sketch.additions() < sketch.sample_size() / 2);
  CHECK(sketch.Frequency(Mix(7)) == before7 / 2);
  CHECK(sketch.Frequency(Mix(8)) == before8 / 2);
}

TEST_CASE("W-TinyLFU budgets follow Caffeine's split") {
  const Policy p(Eviction::kWTinyLfu, {1000, UINT64_MAX}, 1);
  CHECK(p.window_budget().entries == 10);      // 1000 - floor(0.99 * 1000)
  CHECK(p.protected_budget().entries == 792);  // floor(0.8 * 990)
  const Policy tiny(Eviction::kWTinyLfu, {1, UINT64_MAX}, 1);
  CHECK(tiny.window_budget().entries == 1);
}

TEST_CASE("policy keeps its books and its budgets through random traffic") {
  for (Eviction eviction : {Eviction::kLru, Eviction::kWTinyLfu}) {
    Policy policy(eviction, {64, 1000}, 1);
    std::vector<std::unique_ptr<NodeBase>> nodes(300);
    std::vector<bool> linked(300, false);
    uint64_t x = 12345;
    for (int step = 0; step < 20'000; ++step) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      const size_t k = (x >> 33) % nodes.size();
      Victims victims;
      if (!linked[k]) {
        nodes[k] = std::make_unique<NodeBase>();
        nodes[k]->hash = Mix(k);
        nodes[k]->weight = 1 + (x >> 10) % 40;
        policy.Insert(nodes[k].get(), victims);
        linked[k] = true;
      } else if ((x >> 20) % 10 == 0) {
        auto fresh = std::make_unique<NodeBase>();
        fresh->hash = Mix(k);
        fresh->weight = 1 + (x >> 12) % 40;
        policy.Replace(nodes[k].get(), fresh.get(), victims);
        nodes[k] = std::move(fresh);
      } else if ((x >> 20) % 10 == 1) {
        policy.Remove(nodes[k].get());
        linked[k] = false;
      } else {
        policy.Access(nodes[k].get());
      }
      for (NodeBase* v : victims) {
        for (size_t i = 0; i < nodes.size(); ++i) {
          if (nodes[i].get() == v) linked[i] = false;
        }
      }
      if (step % 97 == 0) CheckBooks(policy);
    }
    CheckBooks(policy);
  }
}
