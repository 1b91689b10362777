#pragma once
/// \file
/// Memory hints: software prefetches and the spin-wait pause (no effect on results).
#include <cstddef>

namespace attnkit::simd {

/// Asks for the cache lines of [p, p + bytes) (a hint; no effect on results).
inline void prefetch_row(const void* p, std::size_t bytes) noexcept {
#if defined(__GNUC__)
  const char* c = static_cast<const char*>(p);
  for (std::size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 3);
#else
  (void)p, (void)bytes;
#endif
}

/// As prefetch_row, for lines about to be written.
inline void prefetch_row_for_write(void* p, std::size_t bytes) noexcept {
#if defined(__GNUC__)
  char* c = static_cast<char*>(p);
  for (std::size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 1, 3);
#else
  (void)p, (void)bytes;
#endif
}

/// Spin-wait hint for a short wait on another thread.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

}  // namespace attnkit::simd
