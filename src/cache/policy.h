// The eviction policies of the local store, on one shard's entries: LRU, and W-TinyLFU after
// Caffeine's BoundedLocalCache (ben-manes/caffeine). Private to src/cache/.
//
// A Policy owns the order of a shard's nodes, never the nodes: it links, reorders and unlinks
// them and says which to evict; the shard removes those from its table and reports them.
//
// Invariants (checked by tests/unit/cache/policy_test.cc):
//   - every node the shard's table holds is on exactly one list, and node->queue names it;
//   - used_ is the sum over all lists; window_used_ and protected_used_ over their lists;
//   - after Insert, Replace or Access returns, used_ is within total_ (unless a single node is
//     heavier than the whole budget, which StoreCore::CheckPut refuses) and protected_used_ within
//     protected_.
//
// W-TinyLFU in one paragraph: a new node enters the window's MRU end. When the window is over its
// budget (1% of the shard), its LRU nodes move to probation's MRU end and become candidates. While
// the shard is over budget, the first candidate is compared with probation's LRU node (the
// victim): the one with the lower sketch frequency is evicted, the victim winning ties (a warm
// candidate, frequency >= 6, that does not win outright is still admitted 1 time in 128 at
// random: Caffeine's defence against an attacker inflating victims' counts through collisions). A
// hit in probation promotes the node to protected (80% of the main space), whose LRU overflow is
// demoted back to probation's MRU end. Every hit and every Put increments the sketch. Caffeine also
// adapts the window size by hill climbing; keel keeps the window at 1% (see docs/caching.md for
// what that costs on recency-heavy traces).
//
// Not thread-safe: used under the shard's lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>

#include "absl/container/inlined_vector.h"
#include "cache/frequency_sketch.h"
#include "keel/cache/internal/store_core.h"
#include "keel/cache/store_types.h"

namespace keel::cache::internal {

// Entries and weight, used or allowed.
struct Usage {
  size_t entries = 0;
  uint64_t weight = 0;
};

// A circular doubly linked list through NodeBase::prev/next around a sentinel; front is LRU.
class NodeList {
 public:
  NodeList() { head_.prev = head_.next = &head_; }
  NodeList(const NodeList&) = delete;
  NodeList& operator=(const NodeList&) = delete;

  bool empty() const { return head_.next == &head_; }
  NodeBase* Front() const { return empty() ? nullptr : head_.next; }
  // The node after `n` towards the MRU end, nullptr at the end.
  NodeBase* Next(const NodeBase* n) const { return n->next == &head_ ? nullptr : n->next; }
  void PushBack(NodeBase* n) {
    n->next = &head_;
    n->prev = head_.prev;
    head_.prev->next = n;
    head_.prev = n;
  }
  static void Unlink(NodeBase* n) {
    n->prev->next = n->next;
    n->next->prev = n->prev;
    n->prev = n->next = nullptr;
  }
  // `fresh` takes `old`'s place; `old` is left unlinked.
  static void ReplaceInPlace(NodeBase* old, NodeBase* fresh) {
    fresh->prev = old->prev;
    fresh->next = old->next;
    fresh->prev->next = fresh;
    fresh->next->prev = fresh;
    old->prev = old->next = nullptr;
  }
  void MoveToBack(NodeBase* n) {
    if (head_.prev == n) return;  // already MRU: the common case for a hot key
    Unlink(n);
    PushBack(n);
  }
  void Reset() { head_.prev = head_.next = &head_; }

 private:
  NodeBase head_;
};

using Victims = absl::InlinedVector<NodeBase*, 4>;

class Policy {
 public:
  enum Queue : uint8_t { kWindow = 0, kProbation = 1, kProtected = 2 };  // kLru uses kWindow

  // `budget`: what the shard may hold (SIZE_MAX / UINT64_MAX for an unbounded dimension).
  // `seed`: the tie-break coin's seed (fixed, so hit rates are reproducible).
  Policy(Eviction eviction, Usage budget, uint64_t seed);

  // Links a new node and appends what must go (possibly `n` itself) to `victims`, unlinked.
  void Insert(NodeBase* n, Victims& victims);
  // A hit on `n`.
  void Access(NodeBase* n);
  // `fresh` replaces `old` (same key) at its place, as an access; `old` is left unlinked.
  // Appends what must go to `victims`, as Insert.
  void Replace(NodeBase* old, NodeBase* fresh, Victims& victims);
  // Unlinks `n` (erased or expired).
  void Remove(NodeBase* n);
  // Forgets every node (the shard has taken them all); the sketch keeps its counts.
  void Reset();

  Usage budget() const { return total_; }
  Usage used() const { return used_; }
  Usage window_budget() const { return window_; }
  Usage protected_budget() const { return protected_; }
  Usage window_used() const { return window_used_; }
  Usage protected_used() const { return protected_used_; }
  const NodeList& list(Queue q) const { return lists_[q]; }
  const FrequencySketch* sketch() const { return sketch_ ? &*sketch_ : nullptr; }

 private:
  static bool Over(const Usage& used, const Usage& budget) {
    return used.entries > budget.entries || used.weight > budget.weight;
  }
  static void Add(Usage& u, const NodeBase* n) {
    ++u.entries;
    u.weight += n->weight;
  }
  static void Sub(Usage& u, const NodeBase* n) {
    --u.entries;
    u.weight -= n->weight;
  }
  void Link(NodeBase* n, Queue q);
  void Unlink(NodeBase* n);
  // Evicts until within budget: LRU from the front; W-TinyLFU by the window and main rules.
  void Rebalance(Victims& victims);
  void EvictLru(Victims& victims);
  void DemoteProtected();
  void EvictFromMain(NodeBase* candidate, Victims& victims);
  NodeBase* EvictAndAdvance(NodeBase* n, Victims& victims);
  bool Admit(const NodeBase* candidate, const NodeBase* victim);

  const Eviction eviction_;
  const Usage total_;
  const Usage window_;
  const Usage protected_;
  NodeList lists_[3];
  Usage used_;
  Usage window_used_;
  Usage protected_used_;
  std::optional<FrequencySketch> sketch_;  // W-TinyLFU only
  uint64_t rng_;                           // splitmix64 state for the tie-break coin
};

}  // namespace keel::cache::internal
