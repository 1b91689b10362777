#pragma once
/// \file
/// Transposes a block of 16 rows into 16-wide columns: key rows of 16 keys into a
/// key-major panel (Kᵀ for the quadratic skeleton, φ(K)ᵀ for the kernelised one). The scalar form
/// stores each element to a different panel row, 16 cache lines per key; on
/// AVX-512 a 16×16 register transpose writes whole lines.
#include <cstddef>
#include <type_traits>

#include "arch.hpp"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace attnkit::simd {

/// dst[d · ld + i] = rows[i][d] for i < 16 and d < dim (rows anywhere in memory:
/// the packed K of a reordered call reads its keys through a permutation).
template <class Arch>
inline void transpose_16(const float* const* rows, std::ptrdiff_t dim, float* dst, std::ptrdiff_t ld) noexcept {
  std::ptrdiff_t d0 = 0;
#if defined(__AVX512F__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
    for (; d0 + 16 <= dim; d0 += 16) {
      __m512 r[16], t[16];
      for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(rows[i] + d0);
      // Within each 128-bit lane L: rows interleaved in pairs, then in fours, so
      // r[4g + c] lane L holds column 4L + c of rows 4g..4g+3.
      for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int g = 0; g < 4; ++g) {
        r[4 * g + 0] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0x44);
        r[4 * g + 1] = _mm512_shuffle_ps(t[4 * g], t[4 * g + 2], 0xEE);
        r[4 * g + 2] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0x44);
        r[4 * g + 3] = _mm512_shuffle_ps(t[4 * g + 1], t[4 * g + 3], 0xEE);
      }
      // Then a 4×4 transpose of 128-bit lanes across the four row groups.
      for (int c = 0; c < 4; ++c) {
        const __m512 u0 = r[c], u1 = r[4 + c], u2 = r[8 + c], u3 = r[12 + c];
        const __m512 v0 = _mm512_shuffle_f32x4(u0, u1, 0x44), v1 = _mm512_shuffle_f32x4(u0, u1, 0xEE);
        const __m512 v2 = _mm512_shuffle_f32x4(u2, u3, 0x44), v3 = _mm512_shuffle_f32x4(u2, u3, 0xEE);
        _mm512_storeu_ps(dst + (d0 + 0 + c) * ld, _mm512_shuffle_f32x4(v0, v2, 0x88));
        _mm512_storeu_ps(dst + (d0 + 4 + c) * ld, _mm512_shuffle_f32x4(v0, v2, 0xDD));
        _mm512_storeu_ps(dst + (d0 + 8 + c) * ld, _mm512_shuffle_f32x4(v1, v3, 0x88));
        _mm512_storeu_ps(dst + (d0 + 12 + c) * ld, _mm512_shuffle_f32x4(v1, v3, 0xDD));
      }
    }
  }
#endif
  for (; d0 < dim; ++d0)
    for (int i = 0; i < 16; ++i) dst[d0 * ld + i] = rows[i][d0];
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
