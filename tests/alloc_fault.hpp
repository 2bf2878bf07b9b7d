// Replaces the process's global allocation functions for a test binary that
// makes allocations fail on purpose: include it in exactly one file of the
// binary, after defining the predicate. operator new (and new[]) fail with
// std::bad_alloc when `apilb_test_new_fails(n)` says so, as under an
// address-space limit; the rest goes to malloc and free.
#pragma once

#include <cstdlib>
#include <new>

/// True if this operator new of `n` bytes must fail. Defined by the test.
bool apilb_test_new_fails(std::size_t n) noexcept;

void* operator new(std::size_t n) {
    if (!apilb_test_new_fails(n)) {
        if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
    }
    throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return ::operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }
