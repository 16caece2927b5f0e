// tests/unit/heap_counter.hpp — counting heap allocations in a scope, for the
// "no heap" tests. The replacement global operator new / delete that do the
// counting are defined once, in test_micro_runtime.cpp, for the whole
// unit_tests binary: they forward to malloc / free and count only on a thread
// inside a HeapCounter scope, so every other test sees the default behaviour.
#pragma once

namespace fleetdl_test {

inline thread_local long tl_heap_count = 0;
inline thread_local bool tl_heap_counting = false;

/// Counts the operator new calls of this thread while it lives.
struct HeapCounter {
  HeapCounter() {
    tl_heap_count = 0;
    tl_heap_counting = true;
  }
  ~HeapCounter() { tl_heap_counting = false; }
  HeapCounter(const HeapCounter&) = delete;
  HeapCounter& operator=(const HeapCounter&) = delete;
  long count() const { return tl_heap_count; }
};

}  // namespace fleetdl_test
