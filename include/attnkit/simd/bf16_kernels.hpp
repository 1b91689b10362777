#pragma once
/// \file
/// Decode kernels for a bf16 K/V cache: logits of one fp32 query row against
/// sixteen bf16 key rows per call (dot16_bf16), and P·V with the bf16 V rows
/// widened in registers (pv_rows_bf16), so neither K nor V is copied to fp32.
///
/// With AVX512-BF16 (`vdpbf16ps`; compiled in when the compiler targets it, e.g.
/// -march=native on Zen 4/5, Cooper Lake, Sapphire Rapids) the keys are never
/// widened. The query is split once into two bf16 halves, q = q_hi + q_lo + r with
/// |r| <= 2^-18·|q|; each half is multiplied with the stored keys (a bf16·bf16
/// product is exact in fp32) and accumulated in fp32. The logit therefore differs
/// from the widen-then-fp32-dot path by about 2^-18 relative per term, far below
/// the fp32 tolerance of the tests, at a fraction of the instructions: 32 products
/// per instruction and no conversions. The sixteen per-key accumulators are summed
/// by one transposing shuffle tree (about 3 instructions per key instead of ~8 for
/// a separate lane sum per key).
///
/// Two differences from the widening path, both documented in the README:
/// `vdpbf16ps` treats bf16 subnormal inputs (|x| < 2^-126) as zero, and a key with
/// ±inf or NaN makes that logit be recomputed by the plain fp32 path, so non-finite
/// keys give exactly the widening path's result.
///
/// Elsewhere (no AVX512-BF16) the same functions compute the same split arithmetic
/// in portable code, so the tests check the semantics on every build.
#include <cstdint>
#include <type_traits>

#include "../core/dtype.hpp"
#include "arch.hpp"
#include "microkernel.hpp"  // ATTNKIT_UNROLL

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace attnkit::simd {

/// True when `Arch` runs `dot16_bf16` on AVX512-BF16 instructions.
template <class Arch>
inline constexpr bool has_native_bf16_dot =
#if defined(__AVX512BF16__)
    std::is_base_of_v<xsimd::avx512f, Arch>;
#else
    false;
#endif

/// Query length after zero padding to whole 32-element bf16 vectors.
inline constexpr long bf16_padded(long d) noexcept { return (d + 31) / 32 * 32; }

/// Splits q[0..d) into bf16 halves hi + lo (both zero-padded to bf16_padded(d)).
/// A non-finite q[i] keeps its value in hi and a zero in lo.
inline void split_bf16(const float* q, long d, std::uint16_t* hi, std::uint16_t* lo) noexcept {
  const long dp = bf16_padded(d);
  for (long i = 0; i < dp; ++i) {
    const float x = i < d ? q[i] : 0.0f;
    const bfloat16 h = bfloat16::from_float(x);
    const float rest = x - h.to_float();
    hi[i] = h.bits;
    lo[i] = rest == rest ? bfloat16::from_float(rest).bits : std::uint16_t{0};
  }
}

namespace bf16_detail {

/// Exact-semantics fallback for one key: Σ q[i]·float(k[i]) in fp32.
inline float dot_widened(const float* q, const bfloat16* k, long d) noexcept {
  float s = 0.0f;
  for (long i = 0; i < d; ++i) s += q[i] * k[i].to_float();
  return s;
}

#if defined(__AVX512BF16__)
/// Sixteen accumulators a[j] -> one vector whose lane j is the lane sum of a[j].
/// Each level halves the count by adding the two halves of a pair of vectors side
/// by side; the lanes come out in a fixed shuffled order that one permute undoes.
inline __m512 reduce16(const __m512* a) noexcept {
  __m512 b[8], c[4], d[2];
  ATTNKIT_UNROLL
  for (int j = 0; j < 8; ++j)  // 256-bit halves: keys j | j+8
    b[j] = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(0xFFFF, a[j], a[j + 8], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_maskz_shuffle_f32x4(0xFFFF, a[j], a[j + 8], _MM_SHUFFLE(3, 2, 3, 2)));
  ATTNKIT_UNROLL
  for (int j = 0; j < 4; ++j)  // 128-bit blocks: keys j, j+8, j+4, j+12
    c[j] = _mm512_add_ps(_mm512_maskz_shuffle_f32x4(0xFFFF, b[j], b[j + 4], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_maskz_shuffle_f32x4(0xFFFF, b[j], b[j + 4], _MM_SHUFFLE(3, 1, 3, 1)));
  ATTNKIT_UNROLL
  for (int j = 0; j < 2; ++j)  // lane pairs inside each block
    d[j] = _mm512_add_ps(_mm512_shuffle_ps(c[j], c[j + 2], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_ps(c[j], c[j + 2], _MM_SHUFFLE(3, 2, 3, 2)));
  const __m512 e = _mm512_add_ps(_mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm512_shuffle_ps(d[0], d[1], _MM_SHUFFLE(3, 1, 3, 1)));
  // e holds keys 0 2 1 3 | 8 10 9 11 | 4 6 5 7 | 12 14 13 15; lane j of the result
  // is taken from the position of key j.
  const __m512i where = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
  return _mm512_maskz_permutexvar_ps(0xFFFF, where, e);
}
#endif

}  // namespace bf16_detail

/// out[j] = Σ_i q[i]·k_j[i] for j < n (1 <= n <= 16), k_j = k + j·ldk (elements).
/// `hi`/`lo` are q split by split_bf16 (length bf16_padded(d)); `q` itself is used
/// only to recompute non-finite results exactly.
template <class Arch>
inline void dot16_bf16(const float* q, const std::uint16_t* hi, const std::uint16_t* lo, long d,
                       const bfloat16* k, long ldk, int n, float* out) noexcept {
#if defined(__AVX512BF16__)
  if constexpr (has_native_bf16_dot<Arch>) {
    const bfloat16* row[16];
    for (int j = 0; j < 16; ++j) row[j] = k + (j < n ? j : n - 1) * ldk;  // spare lanes repeat a row
    __m512 acc[16];
    ATTNKIT_UNROLL
    for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
    long i = 0;
    for (; i + 32 <= d; i += 32) {
      const __m512bh qh = (__m512bh)_mm512_loadu_si512(hi + i), ql = (__m512bh)_mm512_loadu_si512(lo + i);
      ATTNKIT_UNROLL
      for (int j = 0; j < 16; ++j) {
        const __m512bh kv = (__m512bh)_mm512_loadu_si512(row[j] + i);
        acc[j] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[j], qh, kv), ql, kv);
      }
    }
    if (i < d) {  // masked tail: the padded query is zero there, the key load reads nothing
      const __mmask32 m = static_cast<__mmask32>((1ull << (d - i)) - 1);
      const __m512bh qh = (__m512bh)_mm512_loadu_si512(hi + i), ql = (__m512bh)_mm512_loadu_si512(lo + i);
      ATTNKIT_UNROLL
      for (int j = 0; j < 16; ++j) {
        const __m512bh kv = (__m512bh)_mm512_maskz_loadu_epi16(m, row[j] + i);
        acc[j] = _mm512_dpbf16_ps(_mm512_dpbf16_ps(acc[j], qh, kv), ql, kv);
      }
    }
    const __m512 s = bf16_detail::reduce16(acc);
    const __mmask16 keep = static_cast<__mmask16>((1u << n) - 1);
    _mm512_mask_storeu_ps(out, keep, s);
    // x - x is NaN exactly when x is ±inf or NaN.
    __mmask16 bad = _mm512_cmp_ps_mask(_mm512_sub_ps(s, s), _mm512_sub_ps(s, s), _CMP_UNORD_Q) & keep;
    while (bad) {
      const int j = __builtin_ctz(bad);
      out[j] = bf16_detail::dot_widened(q, k + j * ldk, d);
      bad = static_cast<__mmask16>(bad & (bad - 1));
    }
    return;
  }
#endif
  for (int j = 0; j < n; ++j) {
    const bfloat16* kj = k + j * ldk;
    float s = 0.0f;
    for (long i = 0; i < d; ++i) {
      const float kf = kj[i].to_float();
      s += bfloat16{hi[i]}.to_float() * kf + bfloat16{lo[i]}.to_float() * kf;
    }
    out[j] = s - s == 0.0f ? s : bf16_detail::dot_widened(q, kj, d);
  }
}

/// True when `Arch` runs pv_rows_bf16 (AVX-512F widening in registers).
template <class Arch>
inline constexpr bool has_bf16_pv =
#if defined(__AVX512F__)
    std::is_base_of_v<xsimd::avx512f, Arch>;
#else
    false;
#endif

#if defined(__AVX512F__)
namespace bf16_detail {
/// 16 bf16 -> 16 floats (a bf16 is the upper half of a float).
inline __m512 widen16(const bfloat16* x) noexcept {
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))), 16));
}

/// O[R][NV·16] += Σ_j P[r][j]·float(V_j[0..NV·16)).
template <int R, int NV>
inline void pv_tile_bf16(const float* p, long ps, const bfloat16* v, long vs, long keys, float* o, long os) noexcept {
  __m512 acc[R][NV];
  ATTNKIT_UNROLL
  for (int r = 0; r < R; ++r)
    ATTNKIT_UNROLL
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_loadu_ps(o + r * os + c * 16);
  for (long j = 0; j < keys; ++j) {
    __m512 vv[NV];
    ATTNKIT_UNROLL
    for (int c = 0; c < NV; ++c) vv[c] = widen16(v + j * vs + c * 16);
    ATTNKIT_UNROLL
    for (int r = 0; r < R; ++r) {
      const __m512 pr = _mm512_set1_ps(p[r * ps + j]);
      ATTNKIT_UNROLL
      for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_fmadd_ps(pr, vv[c], acc[r][c]);
    }
  }
  ATTNKIT_UNROLL
  for (int r = 0; r < R; ++r)
    ATTNKIT_UNROLL
    for (int c = 0; c < NV; ++c) _mm512_storeu_ps(o + r * os + c * 16, acc[r][c]);
}

template <int R>
inline void pv_row_block_bf16(int nv, const float* p, long ps, const bfloat16* v, long vs, long keys, float* o,
                              long os) noexcept {
  switch (nv) {
    case 4: pv_tile_bf16<R, 4>(p, ps, v, vs, keys, o, os); break;
    case 3: pv_tile_bf16<R, 3>(p, ps, v, vs, keys, o, os); break;
    case 2: pv_tile_bf16<R, 2>(p, ps, v, vs, keys, o, os); break;
    default: pv_tile_bf16<R, 1>(p, ps, v, vs, keys, o, os); break;
  }
}
}  // namespace bf16_detail
#endif

/// O[R][0..dv) += P[R][keys]·V[keys][0..dv) for R <= 6 rows, V stored as bf16
/// (row stride vs elements), accumulated in fp32 in the order of the fp32 kernels
/// (one fma per key and column). Requires has_bf16_pv<Arch>.
template <class Arch>
inline void pv_rows_bf16(int R, const float* p, long ps, const bfloat16* v, long vs, long keys, float* o, long os,
                         long dv) noexcept {
  static_assert(has_bf16_pv<Arch>, "pv_rows_bf16 needs an AVX-512 architecture");
#if defined(__AVX512F__)
  const long full = dv / 16;
  for (long c = 0; c < full; c += 4) {
    const int nv = static_cast<int>(full - c < 4 ? full - c : 4);
    const bfloat16* vc = v + c * 16;
    float* oc = o + c * 16;
    switch (R) {
      case 6: bf16_detail::pv_row_block_bf16<6>(nv, p, ps, vc, vs, keys, oc, os); break;
      case 5: bf16_detail::pv_row_block_bf16<5>(nv, p, ps, vc, vs, keys, oc, os); break;
      case 4: bf16_detail::pv_row_block_bf16<4>(nv, p, ps, vc, vs, keys, oc, os); break;
      case 3: bf16_detail::pv_row_block_bf16<3>(nv, p, ps, vc, vs, keys, oc, os); break;
      case 2: bf16_detail::pv_row_block_bf16<2>(nv, p, ps, vc, vs, keys, oc, os); break;
      default: bf16_detail::pv_row_block_bf16<1>(nv, p, ps, vc, vs, keys, oc, os); break;
    }
  }
  for (int r = 0; r < R; ++r)  // columns past the last whole vector
    for (long j = 0; j < keys; ++j)
      for (long d = full * 16; d < dv; ++d) o[r * os + d] += p[r * ps + j] * v[j * vs + d].to_float();
#else
  (void)R, (void)p, (void)ps, (void)v, (void)vs, (void)keys, (void)o, (void)os, (void)dv;
#endif
}

}  // namespace attnkit::simd
