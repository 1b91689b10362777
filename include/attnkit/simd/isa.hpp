#pragma once
/// \file
/// The few operations that use instructions xsimd does not expose, written once
/// per instruction set and chosen by the architecture tag, as xsimd chooses its
/// own kernels: each operation has a portable overload taking `xsimd::generic`
/// and ISA overloads taking the least tag whose instructions they use
/// (`xsimd::avx512f`, `xsimd::avx512bw`, ...). A call `isa::op(..., Arch{})`
/// resolves to the most derived tag that `Arch` inherits, so `avx512bw` gets the
/// BW form, `avx512f` the F form and `fma3<avx2>` the portable one. This is the
/// only header of attnkit with intrinsics outside the 16-bit decode kernels
/// (simd/decode_kernels.hpp); everything else is written in xsimd batches.
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include <xsimd/xsimd.hpp>

#include "../core/dtype.hpp"
#include "arch.hpp"

#if XSIMD_WITH_AVX512F || defined(__F16C__)
#include <immintrin.h>
#endif

namespace attnkit::simd::isa {

inline constexpr float neg_inf = -std::numeric_limits<float>::infinity();

// ------------------------------------------------------------ horizontal max
/// max over the lanes (the caller handles NaN lanes).
template <class A>
ATTNKIT_FORCE_INLINE float reduce_max(const xsimd::batch<float, A>& v, xsimd::generic) noexcept {
  alignas(64) float t[xsimd::batch<float, A>::size];
  v.store_aligned(t);
  float m = t[0];
  for (std::size_t i = 1; i < xsimd::batch<float, A>::size; ++i) m = t[i] > m ? t[i] : m;
  return m;
}

// ------------------------------------------------------------ lane-wise max / min
/// a > b ? a : b per lane (min: a < b ? a : b): the second operand when either is
/// NaN, as x86's maxps/minps, which the kernels rely on (a NaN passed first is
/// skipped, one passed second propagates) and which the scalar path's
/// `a > b ? a : b` matches. A compare and a select. ops<Arch>::max/min and
/// math::max/min use it on NEON, whose fmax/fmin return NaN when either operand is
/// NaN (fmaxnm/fminnm the number); on x86 they call xsimd::max/min (maxps/minps),
/// which follow this rule in one instruction.
template <class A>
ATTNKIT_FORCE_INLINE xsimd::batch<float, A> max(const xsimd::batch<float, A>& a, const xsimd::batch<float, A>& b,
                                                xsimd::generic) noexcept {
  return xsimd::select(a > b, a, b);
}
template <class A>
ATTNKIT_FORCE_INLINE xsimd::batch<float, A> min(const xsimd::batch<float, A>& a, const xsimd::batch<float, A>& b,
                                                xsimd::generic) noexcept {
  return xsimd::select(a < b, a, b);
}

// ------------------------------------------------------------ 2^n · p
/// 2^n · p for integral-valued n in [−126, 126] and p in [0.7, 1.5], exactly 0
/// where x < `underflow` (x: the original argument; NaN in x or p stays NaN).
/// Portable: n added to p's exponent field. n comes from a float→int conversion,
/// which maps NaN to INT_MIN (shifted out to 0), so p's NaN survives whatever its
/// payload; reading n from mantissa bits would splice a payload into the exponent.
template <class A>
ATTNKIT_FORCE_INLINE xsimd::batch<float, A> scale_by_exp2(const xsimd::batch<float, A>& p, const xsimd::batch<float, A>& n,
                                     const xsimd::batch<float, A>& x, float underflow, xsimd::generic) noexcept {
  using vf = xsimd::batch<float, A>;
  using vi = xsimd::batch<std::int32_t, A>;
  const vi ni = xsimd::to_int(n) << 23;
  const vf res = xsimd::bitwise_cast<vf>(xsimd::bitwise_cast<vi>(p) + ni);
  return xsimd::select(x < vf(underflow), vf(0.0f), res);
}

// ------------------------------------------------------------ lane masks
/// x where bit l of `keep` is set, else −inf.
template <class A>
ATTNKIT_FORCE_INLINE xsimd::batch<float, A> mask_bits(const xsimd::batch<float, A>& x, std::uint32_t keep, xsimd::generic) noexcept {
  constexpr std::size_t W = xsimd::batch<float, A>::size;
  alignas(64) float t[W];
  x.store_aligned(t);
  for (std::size_t i = 0; i < W; ++i)
    if (!((keep >> i) & 1u)) t[i] = neg_inf;
  return xsimd::batch<float, A>::load_aligned(t);
}

/// x where keep[l] != 0, else −inf (a boolean attention mask, one byte per key).
template <class A>
ATTNKIT_FORCE_INLINE xsimd::batch<float, A> mask_bytes(const xsimd::batch<float, A>& x, const std::uint8_t* keep, xsimd::generic) noexcept {
  constexpr std::size_t W = xsimd::batch<float, A>::size;
  alignas(64) float t[W];
  x.store_aligned(t);
  for (std::size_t i = 0; i < W; ++i)
    if (!keep[i]) t[i] = neg_inf;
  return xsimd::batch<float, A>::load_aligned(t);
}

// ------------------------------------------------------------ compaction
/// Appends the lanes of x[0, W) that are ≥ t and not −inf to dst (room for W);
/// returns how many. Portable: branch-free scalar.
template <int W>
ATTNKIT_FORCE_INLINE std::ptrdiff_t compact_ge(const float* x, float t, float* dst, xsimd::generic) noexcept {
  std::ptrdiff_t n = 0;
  for (int j = 0; j < W; ++j) {
    dst[n] = x[j];
    n += x[j] >= t && x[j] != neg_inf;
  }
  return n;
}

// ------------------------------------------------------------ 16×16 transpose
/// dst[d · ld + i] = rows[i][d] for i < 16 and d < dim. Portable: one element at
/// a time (16 cache lines per key).
template <class A>
inline void transpose_16(const float* const* rows, std::ptrdiff_t dim, float* dst, std::ptrdiff_t ld, xsimd::generic) noexcept {
  for (std::ptrdiff_t d = 0; d < dim; ++d)
    for (int i = 0; i < 16; ++i) dst[d * ld + i] = rows[i][d];
}

// ------------------------------------------------------------ widening loads
/// dst[0, n) = float(src[0, n)) for bf16 / fp16 (F16C where the compiler has it).
template <class T>
inline void widen(const T* src, float* dst, std::ptrdiff_t n, xsimd::generic) noexcept {
  std::ptrdiff_t i = 0;
#if defined(__F16C__)
  if constexpr (std::is_same_v<T, float16>)
    for (; i + 8 <= n; i += 8)
      _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + i))));
#endif
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}

/// dst[0, n) = T(src[0, n)) for bf16 / fp16, to nearest even (F16C for fp16 where
/// the compiler has it; the same values as T::from_float, NaN stays a NaN).
template <class T>
inline void narrow(const float* src, T* dst, std::ptrdiff_t n, xsimd::generic) noexcept {
  std::ptrdiff_t i = 0;
#if defined(__F16C__)
  if constexpr (std::is_same_v<T, float16>)
    for (; i + 8 <= n; i += 8)
      _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i),
                       _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
#endif
  for (; i < n; ++i) dst[i] = T::from_float(src[i]);
}

#if XSIMD_WITH_AVX512F
template <class A>
ATTNKIT_FORCE_INLINE float reduce_max(const xsimd::batch<float, A>& v, xsimd::avx512f) noexcept {
  return _mm512_reduce_max_ps(v);
}

/// One vscalefps: its write mask gives the exact zeros below the underflow bound
/// (NaN compares "not less", so it stays NaN).
template <class A>
ATTNKIT_FORCE_INLINE xsimd::batch<float, A> scale_by_exp2(const xsimd::batch<float, A>& p, const xsimd::batch<float, A>& n,
                                     const xsimd::batch<float, A>& x, float underflow, xsimd::avx512f) noexcept {
  const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(underflow), _CMP_NLT_UQ);
  return _mm512_maskz_scalef_ps(keep, p, n);
}

template <class A>
ATTNKIT_FORCE_INLINE xsimd::batch<float, A> mask_bits(const xsimd::batch<float, A>& x, std::uint32_t keep, xsimd::avx512f) noexcept {
  return _mm512_mask_blend_ps(static_cast<__mmask16>(keep), _mm512_set1_ps(neg_inf), x);
}

/// Bytes widened to 32-bit lanes, tested (AVX-512F only).
template <class A>
ATTNKIT_FORCE_INLINE xsimd::batch<float, A> mask_bytes(const xsimd::batch<float, A>& x, const std::uint8_t* keep, xsimd::avx512f) noexcept {
  const __m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(keep)));
  return _mm512_mask_blend_ps(_mm512_test_epi32_mask(w, w), _mm512_set1_ps(neg_inf), x);
}

/// Register compress, one store.
template <int W>
ATTNKIT_FORCE_INLINE std::ptrdiff_t compact_ge(const float* x, float t, float* dst, xsimd::avx512f) noexcept {
  static_assert(W == 16, "one zmm of floats");
  const __m512 xv = _mm512_loadu_ps(x);
  const __mmask16 m =
      _mm512_cmp_ps_mask(xv, _mm512_set1_ps(t), _CMP_GE_OQ) & _mm512_cmp_ps_mask(xv, _mm512_set1_ps(neg_inf), _CMP_NEQ_OQ);
  _mm512_storeu_ps(dst, _mm512_maskz_compress_ps(m, xv));
  return std::popcount(static_cast<unsigned>(m));
}

/// A 16×16 register transpose per 16 columns: whole cache lines written.
template <class A>
inline void transpose_16(const float* const* rows, std::ptrdiff_t dim, float* dst, std::ptrdiff_t ld, xsimd::avx512f) noexcept {
  std::ptrdiff_t d0 = 0;
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
  if (d0 < dim) {
    const float* rest[16];
    for (int i = 0; i < 16; ++i) rest[i] = rows[i] + d0;
    transpose_16<A>(rest, dim - d0, dst + d0 * ld, ld, xsimd::generic{});
  }
}

/// bf16 → fp32 is a 16-bit shift; fp16 → fp32 one vcvtph2ps.
template <class T>
inline void widen(const T* src, float* dst, std::ptrdiff_t n, xsimd::avx512f) noexcept {
  std::ptrdiff_t i = 0;
  if constexpr (std::is_same_v<T, bfloat16>) {
    for (; i + 16 <= n; i += 16) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i));
      _mm512_storeu_ps(dst + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
  } else {
    for (; i + 16 <= n; i += 16)
      _mm512_storeu_ps(dst + i, _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i))));
  }
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}

/// fp32 → bf16 as bfloat16::from_float, 16 lanes at a time (integer rounding: the
/// AVX512-BF16 conversion would flush subnormal inputs); fp32 → fp16 one vcvtps2ph.
template <class T>
inline void narrow(const float* src, T* dst, std::ptrdiff_t n, xsimd::avx512f) noexcept {
  std::ptrdiff_t i = 0;
  if constexpr (std::is_same_v<T, bfloat16>) {
    const __m512i one = _mm512_set1_epi32(1), half = _mm512_set1_epi32(0x7fff), quiet = _mm512_set1_epi32(0x40);
    for (; i + 16 <= n; i += 16) {
      const __m512 x = _mm512_loadu_ps(src + i);
      const __m512i u = _mm512_castps_si512(x), hi = _mm512_srli_epi32(u, 16);
      __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, _mm512_add_epi32(half, _mm512_and_si512(hi, one))), 16);
      r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_or_si512(hi, quiet));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), _mm512_cvtepi32_epi16(r));
    }
  } else {
    for (; i + 16 <= n; i += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                          _mm512_cvtps_ph(_mm512_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  for (; i < n; ++i) dst[i] = T::from_float(src[i]);
}
#endif  // XSIMD_WITH_AVX512F

#if XSIMD_WITH_AVX512BW && defined(__AVX512VL__)
/// 16 bytes tested in one instruction (AVX-512 BW + VL).
template <class A>
ATTNKIT_FORCE_INLINE xsimd::batch<float, A> mask_bytes(const xsimd::batch<float, A>& x, const std::uint8_t* keep, xsimd::avx512bw) noexcept {
  const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(keep));
  return _mm512_mask_blend_ps(_mm_test_epi8_mask(b, b), _mm512_set1_ps(neg_inf), x);
}
#endif  // XSIMD_WITH_AVX512BW && __AVX512VL__

}  // namespace attnkit::simd::isa
