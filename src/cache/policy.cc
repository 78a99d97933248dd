#include "cache/policy.h"

#include <limits>

namespace keel::cache::internal {
namespace {

// Caffeine's split (BoundedLocalCache: PERCENT_MAIN = 0.99, PERCENT_MAIN_PROTECTED = 0.80). The
// window is `max - floor(0.99 * max)`, so it is at least 1 for any max >= 1.
constexpr double kMainFraction = 0.99;
constexpr double kProtectedFraction = 0.80;
// Caffeine's ADMIT_HASHDOS_THRESHOLD: a candidate this warm wins 1 tie in 128.
constexpr int kWarmCandidate = 6;

template <typename T>
T WindowOf(T max) {
  if (max == std::numeric_limits<T>::max()) return max;
  return max - static_cast<T>(kMainFraction * static_cast<double>(max));
}
template <typename T>
T ProtectedOf(T max, T window) {
  if (max == std::numeric_limits<T>::max()) return max;
  return static_cast<T>(kProtectedFraction * static_cast<double>(max - window));
}

Usage WindowBudget(Eviction eviction, Usage total) {
  if (eviction == Eviction::kLru) return total;
  return {WindowOf(total.entries), WindowOf(total.weight)};
}
Usage ProtectedBudget(Eviction eviction, Usage total) {
  if (eviction == Eviction::kLru) return {};
  const Usage window = WindowBudget(eviction, total);
  return {ProtectedOf(total.entries, window.entries), ProtectedOf(total.weight, window.weight)};
}

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

Policy::Policy(Eviction eviction, Usage budget, uint64_t seed)
    : eviction_(eviction),
      total_(budget),
      window_(WindowBudget(eviction, budget)),
      protected_(ProtectedBudget(eviction, budget)),
      rng_(seed) {
  if (eviction_ == Eviction::kWTinyLfu) {
    // Sized for the entry budget; a store bounded by weight only grows it with its entries.
    const size_t entries = budget.entries == std::numeric_limits<size_t>::max()
                               ? FrequencySketch::kMinWords
                               : budget.entries;
    sketch_.emplace(entries);
  }
}

void Policy::Link(NodeBase* n, Queue q) {
  n->queue = q;
  lists_[q].PushBack(n);
  Add(used_, n);
  if (q == kWindow) Add(window_used_, n);
  if (q == kProtected) Add(protected_used_, n);
}

void Policy::Unlink(NodeBase* n) {
  NodeList::Unlink(n);
  Sub(used_, n);
  if (n->queue == kWindow) Sub(window_used_, n);
  if (n->queue == kProtected) Sub(protected_used_, n);
}

void Policy::Insert(NodeBase* n, Victims& victims) {
  Link(n, kWindow);
  if (sketch_) {
    if (used_.entries > sketch_->words()) sketch_->EnsureCapacity(2 * used_.entries);
    sketch_->Increment(n->hash);
  }
  Rebalance(victims);
}

void Policy::Access(NodeBase* n) {
  if (!sketch_) {
    lists_[kWindow].MoveToBack(n);
    return;
  }
  sketch_->Increment(n->hash);
  switch (n->queue) {
    case kWindow:
    case kProtected:
      lists_[n->queue].MoveToBack(n);
      break;
    case kProbation:
      if (n->weight > protected_.weight) {  // could never fit: stays in probation (Caffeine)
        lists_[kProbation].MoveToBack(n);
        break;
      }
      Unlink(n);
      Link(n, kProtected);
      DemoteProtected();
      break;
  }
}

void Policy::Replace(NodeBase* old, NodeBase* fresh, Victims& victims) {
  fresh->queue = old->queue;
  NodeList::ReplaceInPlace(old, fresh);
  // Unsigned arithmetic: the sums wrap back into range, whatever the order.
  used_.weight = used_.weight - old->weight + fresh->weight;
  if (old->queue == kWindow)
    window_used_.weight = window_used_.weight - old->weight + fresh->weight;
  if (old->queue == kProtected) {
    protected_used_.weight = protected_used_.weight - old->weight + fresh->weight;
  }
  Access(fresh);
  Rebalance(victims);
}

void Policy::Remove(NodeBase* n) { Unlink(n); }

void Policy::Reset() {
  for (NodeList& l : lists_) l.Reset();
  used_ = window_used_ = protected_used_ = Usage{};
}

void Policy::Rebalance(Victims& victims) {
  if (!sketch_) {
    EvictLru(victims);
    return;
  }
  DemoteProtected();
  // The window's overflow moves to probation's MRU end; the first one moved is the first
  // candidate for the main space.
  NodeBase* candidate = nullptr;
  while (Over(window_used_, window_) && !lists_[kWindow].empty()) {
    NodeBase* n = lists_[kWindow].Front();
    Unlink(n);
    Link(n, kProbation);
    if (candidate == nullptr) candidate = n;
  }
  EvictFromMain(candidate, victims);
}

void Policy::EvictLru(Victims& victims) {
  while (Over(used_, total_) && !lists_[kWindow].empty()) {
    NodeBase* n = lists_[kWindow].Front();
    Unlink(n);
    victims.push_back(n);
  }
}

void Policy::DemoteProtected() {
  while (Over(protected_used_, protected_) && !lists_[kProtected].empty()) {
    NodeBase* n = lists_[kProtected].Front();
    Unlink(n);
    Link(n, kProbation);
  }
}

NodeBase* Policy::EvictAndAdvance(NodeBase* n, Victims& victims) {
  NodeBase* next = lists_[n->queue].Next(n);
  Unlink(n);
  victims.push_back(n);
  return next;
}

// Caffeine's evictFromMain: candidates (the window's overflow, at probation's MRU end in the
// order they arrived) walk towards MRU; victims walk from probation's LRU end. When probation
// has no victim left, protected's and then the window's LRU nodes go.
void Policy::EvictFromMain(NodeBase* candidate, Victims& victims) {
  NodeBase* victim = lists_[kProbation].Front();
  while (Over(used_, total_)) {
    if (victim == nullptr && candidate == nullptr) {
      NodeBase* n = lists_[kProtected].Front();
      if (n == nullptr) n = lists_[kWindow].Front();
      if (n == nullptr) break;
      Unlink(n);
      victims.push_back(n);
      continue;
    }
    if (victim == nullptr) {
      candidate = EvictAndAdvance(candidate, victims);
    } else if (candidate == nullptr) {
      victim = EvictAndAdvance(victim, victims);
    } else if (candidate == victim) {
      victim = EvictAndAdvance(victim, victims);
      candidate = nullptr;
    } else if (Admit(candidate, victim)) {
      victim = EvictAndAdvance(victim, victims);
      candidate = lists_[kProbation].Next(candidate);
    } else {
      candidate = EvictAndAdvance(candidate, victims);
    }
  }
}

bool Policy::Admit(const NodeBase* candidate, const NodeBase* victim) {
  const int candidate_freq = sketch_->Frequency(candidate->hash);
  const int victim_freq = sketch_->Frequency(victim->hash);
  if (candidate_freq > victim_freq) return true;
  if (candidate_freq >= kWarmCandidate) return (SplitMix64(rng_) & 127) == 0;
  return false;
}

}  // namespace keel::cache::internal
