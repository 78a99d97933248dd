// The counting global operator new behind alloc_counter.h. A thread-local counter, not an atomic:
// it adds one increment to each allocation and no sharing between benchmark threads. Every form
// of operator new funnels into the two counting functions; delete is left to the library
// default, which frees with std::free as this new allocates with std::malloc/aligned_alloc.
#include "alloc_counter.h"

#include <atomic>
#include <cstdlib>
#include <new>

namespace {
thread_local uint64_t allocations = 0;
// Every thread's allocations, counted only while a benchmark asks (CountProcessAllocations):
// one relaxed load otherwise.
std::atomic<bool> count_process{false};
std::atomic<uint64_t> process_allocations{0};

void CountProcess() {
  if (count_process.load(std::memory_order_relaxed)) {
    process_allocations.fetch_add(1, std::memory_order_relaxed);
  }
}

void* Allocate(std::size_t size) {
  ++allocations;
  CountProcess();
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}

void* AllocateAligned(std::size_t size, std::align_val_t align) {
  ++allocations;
  CountProcess();
  const auto a = static_cast<std::size_t>(align);
  const std::size_t rounded = (size + a - 1) / a * a;
  if (void* p = std::aligned_alloc(a, rounded == 0 ? a : rounded)) return p;
  throw std::bad_alloc();
}
}  // namespace

namespace keel::bench {
uint64_t ThreadAllocations() { return allocations; }
void CountProcessAllocations(bool on) { count_process.store(on, std::memory_order_relaxed); }
uint64_t ProcessAllocations() { return process_allocations.load(std::memory_order_relaxed); }
}  // namespace keel::bench

void* operator new(std::size_t size) { return Allocate(size); }
void* operator new[](std::size_t size) { return Allocate(size); }
void* operator new(std::size_t size, std::align_val_t align) {
  return AllocateAligned(size, align);
}
void* operator new[](std::size_t size, std::align_val_t align) {
  return AllocateAligned(size, align);
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
void operator delete(void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::align_val_t) noexcept { std::free(p); }
void operator delete(void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t, std::align_val_t) noexcept { std::free(p); }
