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

namespace {

// One admission duel in a 2-entry W-TinyLFU (window 1, main 1): a victim read `victim_reads`
// times sits in probation; a candidate read `candidate_reads` times leaves the window. True if
// the candidate was admitted (the victim evicted). Each Put and read counts once in the sketch.
bool CandidateAdmitted(int candidate_reads, uint64_t seed, int victim_reads = 15) {
  Policy p(Eviction::kWTinyLfu, {2, UINT64_MAX}, seed);
  NodeBase victim, filler, candidate, pusher;
  victim.hash = Mix(1);
  filler.hash = Mix(2);
  candidate.hash = Mix(3);
  pusher.hash = Mix(4);
  Victims out;
  p.Insert(&victim, out);
  for (int i = 0; i < victim_reads; ++i) p.Access(&victim);
  p.Insert(&filler, out);  // the victim moves to probation
  REQUIRE(out.empty());
  p.Remove(&filler);
  p.Insert(&candidate, out);
  for (int i = 0; i < candidate_reads; ++i) p.Access(&candidate);
  p.Insert(&pusher, out);  // the candidate leaves the window: the duel
  REQUIRE(out.size() == 1);
  REQUIRE((out[0] == &victim || out[0] == &candidate));
  return out[0] == &victim;
}

}  // namespace

TEST_CASE("W-TinyLFU admits a warm but less frequent candidate about 1 time in 128") {
  int warm = 0, cold = 0, more_frequent = 0;
  for (uint64_t seed = 1; seed <= 1280; ++seed) {
    warm += CandidateAdmitted(/*candidate_reads=*/7, seed);  // frequency 8: >= 6, < 15
    cold += CandidateAdmitted(/*candidate_reads=*/3, seed);  // frequency 4: never
  }
  for (uint64_t seed = 1; seed <= 10; ++seed) {
    more_frequent += CandidateAdmitted(/*candidate_reads=*/4, seed, /*victim_reads=*/2);
  }
  CHECK(cold == 0);
  CHECK(warm >= 3);  // 10 expected
  CHECK(warm <= 25);
  CHECK(more_frequent == 10);  // a candidate estimated more frequent always wins
}

TEST_CASE("a sketch of a store bounded by weight only grows with its entries") {
  Policy p(Eviction::kWTinyLfu, {SIZE_MAX, 1'000'000}, 1);
  REQUIRE(p.sketch()->words() == FrequencySketch::kMinWords);
  std::vector<std::unique_ptr<NodeBase>> nodes;
  Victims out;
  for (uint64_t i = 0; i < 1000; ++i) {
    nodes.push_back(std::make_unique<NodeBase>());
    nodes.back()->hash = Mix(i);
    p.Insert(nodes.back().get(), out);
  }
  CHECK(out.empty());
  CHECK(p.sketch()->words() >= 1000);
}

TEST_CASE("an entry's node stays 72 bytes") {
  // docs/caching.md's memory figures assume it.
  CHECK(sizeof(NodeBase) == 72);
}
