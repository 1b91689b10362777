#pragma once
/// \file
/// Transposes a block of 16 rows into 16-wide columns: key rows of 16 keys into a
/// key-major panel (Kᵀ for the quadratic skeleton, φ(K)ᵀ for the kernelised one). The scalar form
/// stores each element to a different panel row, 16 cache lines per key; on
/// AVX-512 a 16×16 register transpose writes whole lines.
#include <cstddef>
#include <type_traits>

#include "arch.hpp"
#include "isa.hpp"

namespace attnkit::simd {

/// dst[d · ld + i] = rows[i][d] for i < 16 and d < dim (rows anywhere in memory:
/// the packed K of a reordered call reads its keys through a permutation).
template <class Arch>
inline void transpose_16(const float* const* rows, std::ptrdiff_t dim, float* dst, std::ptrdiff_t ld) noexcept {
  if constexpr (is_scalar_v<Arch>)
    isa::transpose_16<Arch>(rows, dim, dst, ld, xsimd::generic{});
  else
    isa::transpose_16<Arch>(rows, dim, dst, ld, Arch{});
}

/// dst[d · ld + i] = src[i · src_stride + d] for i < 16 and d < dim.
template <class Arch>
inline void transpose_16(const float* src, std::ptrdiff_t src_stride, std::ptrdiff_t dim, float* dst,
                         std::ptrdiff_t ld) noexcept {
  const float* rows[16];
  for (int i = 0; i < 16; ++i) rows[i] = src + i * src_stride;
  transpose_16<Arch>(rows, dim, dst, ld);
}

}  // namespace attnkit::simd
