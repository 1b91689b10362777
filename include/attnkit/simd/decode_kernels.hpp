#pragma once
/// \file
/// Decode kernels (few query rows against a long K/V cache, read in place):
/// logits of one fp32 query row against sixteen key rows per call, and P·V, with
/// 16-bit K/V widened in registers so the cache is never copied to fp32.
///
/// dot16 (AVX-512, K as float, bfloat16 or float16): sixteen per-key accumulators
/// whose lanes are summed together by one transposing shuffle tree (about 3
/// instructions per key instead of ~8 for a separate lane sum per key). The sum
/// order depends only on D, not on the storage type; the fp32 cache, which the
/// decode path reads one row at a time (it streams better), uses dot1, which sums
/// in the same order, so 16-bit K gives bitwise the result of float K holding the
/// same values.
///
/// dot16_bf16 (AVX512-BF16, `vdpbf16ps`; compiled in when the compiler targets it,
/// e.g. -march=native on Zen 4/5, Cooper Lake, Sapphire Rapids): bf16 keys are not
/// even widened. The query is split once into two bf16 halves, q = q_hi + q_lo + r
/// with |r| <= 2^-18·|q|; each half is multiplied with the stored keys (a
/// bf16·bf16 product is exact in fp32) and accumulated in fp32, 32 products per
/// instruction. The logit differs from the exact fp32 dot by about 2^-18 relative
/// per term, far below the fp32 tolerance of the tests. `vdpbf16ps` treats bf16
/// subnormal inputs (|x| < 2^-126) as zero, and a logit whose key holds ±inf or
/// NaN is recomputed in plain fp32, so non-finite keys behave exactly as in the
/// float path. Both differences are documented in the README.
///
/// dot16_q8 / pv_rows_q8: the same for 8-bit block-quantised K/V (core/quant.hpp):
/// the int8 values are widened and scaled in registers (x = scale·q), fp32 sums.
///
/// ISA: the wide kernels use AVX-512 F, BW (16-bit masked loads) and VL (256-bit
/// masked loads) instructions, so they are selected only for an `Arch` tag that
/// promises BW (xsimd::avx512bw and its descendants) in a translation unit compiled
/// for BW and VL; `xsimd::avx512f` (F only) takes the portable path, as every other
/// architecture does: the decode skeleton widens rows into fp32 scratch and uses the
/// fp32 kernels. dot16_bf16 then runs the same split arithmetic in portable code,
/// so the tests check its semantics on every build.
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "../core/dtype.hpp"
#include "../core/quant.hpp"
#include "arch.hpp"
#include "microkernel.hpp"  // ATTNKIT_UNROLL

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define ATTNKIT_WIDE_KV_KERNELS 1
#else
#define ATTNKIT_WIDE_KV_KERNELS 0
#endif

namespace attnkit::simd {

/// True when `Arch` runs dot16, dot16_q8, pv_rows_kv and pv_rows_q8: an AVX-512 tag
/// with BW (xsimd::avx512bw or a descendant) and a compiler targeting BW and VL.
template <class Arch>
inline constexpr bool has_wide_kv_kernels =
#if ATTNKIT_WIDE_KV_KERNELS
    std::is_base_of_v<xsimd::avx512bw, Arch>;
#else
    false;
#endif

/// True when `Arch` runs `dot16_bf16` on AVX512-BF16 instructions.
template <class Arch>
inline constexpr bool has_native_bf16_dot =
#if defined(__AVX512BF16__) && ATTNKIT_WIDE_KV_KERNELS
    has_wide_kv_kernels<Arch>;
#else
    false;
#endif

/// Asks for the cache lines of [p, p + bytes) into L2 only (prefetcht1; a hint):
/// for the decode kernels' next block of K/V rows.
inline void prefetch_row_l2(const void* p, std::size_t bytes) noexcept {
#if defined(__GNUC__)
  const char* c = static_cast<const char*>(p);
  for (std::size_t off = 0; off < bytes; off += 64) __builtin_prefetch(c + off, 0, 2);
#else
  (void)p, (void)bytes;
#endif
}

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

#if ATTNKIT_WIDE_KV_KERNELS
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
#if defined(__AVX512BF16__) && ATTNKIT_WIDE_KV_KERNELS
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

#if ATTNKIT_WIDE_KV_KERNELS
namespace kv_detail {
/// 16 elements of K/V storage -> 16 floats (exact).
inline __m512 load16(const float* x) noexcept { return _mm512_loadu_ps(x); }
inline __m512 load16(const bfloat16* x) noexcept {  // a bf16 is the upper half of a float
  return _mm512_castsi512_ps(
      _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x))), 16));
}
inline __m512 load16(const float16* x) noexcept {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(x)));
}
/// The first lanes of `m` only (zeros elsewhere); nothing past them is read.
inline __m512 load16(const float* x, __mmask16 m) noexcept { return _mm512_maskz_loadu_ps(m, x); }
inline __m512 load16(const bfloat16* x, __mmask16 m) noexcept {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, x)), 16));
}
inline __m512 load16(const float16* x, __mmask16 m) noexcept { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, x)); }

/// O[R][NV·16] += Σ_j P[r][j]·V_j[0..NV·16), one fma per key and column.
template <int R, int NV, class KV>
inline void pv_tile(const float* p, long ps, const KV* v, long vs, long keys, float* o, long os) noexcept {
  __m512 acc[R][NV];
  ATTNKIT_UNROLL
  for (int r = 0; r < R; ++r)
    ATTNKIT_UNROLL
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_loadu_ps(o + r * os + c * 16);
  for (long j = 0; j < keys; ++j) {
    __m512 vv[NV];
    ATTNKIT_UNROLL
    for (int c = 0; c < NV; ++c) vv[c] = load16(v + j * vs + c * 16);
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

template <int R, class KV>
inline void pv_row_block(int nv, const float* p, long ps, const KV* v, long vs, long keys, float* o, long os) noexcept {
  if constexpr (R <= 2) {  // few rows: up to 8 vectors per pass, so 8+ FMA chains cover the latency
    switch (nv) {
      case 8: pv_tile<R, 8>(p, ps, v, vs, keys, o, os); return;
      case 7: pv_tile<R, 7>(p, ps, v, vs, keys, o, os); return;
      case 6: pv_tile<R, 6>(p, ps, v, vs, keys, o, os); return;
      case 5: pv_tile<R, 5>(p, ps, v, vs, keys, o, os); return;
      default: break;
    }
  }
  switch (nv) {
    case 4: pv_tile<R, 4>(p, ps, v, vs, keys, o, os); break;
    case 3: pv_tile<R, 3>(p, ps, v, vs, keys, o, os); break;
    case 2: pv_tile<R, 2>(p, ps, v, vs, keys, o, os); break;
    default: pv_tile<R, 1>(p, ps, v, vs, keys, o, os); break;
  }
}
}  // namespace kv_detail
#endif

#if ATTNKIT_WIDE_KV_KERNELS
namespace kv_detail {
/// acc[j] += Σ over NCH 16-element chunks from element i of q·k_j, k_j = k + j·ldk
/// (spare lanes j >= n repeat row n − 1); the last chunk reads only the lanes of
/// `tail`. Eight keys at a time, chunk by chunk: eight independent FMA chains
/// cover the FMA latency (one key's chain of NCH dependent FMAs alone would stall),
/// while each key's sum still runs over its chunks in order (the order dot1 uses).
/// One base pointer and a stride rather than a table of sixteen row pointers, which
/// GCC keeps on the stack.
template <int NCH, class KV>
ATTNKIT_FORCE_INLINE void dot16_chunks(const float* q, long i, const KV* k, long ldk, int n, __mmask16 tail,
                                       __m512* acc) noexcept {
  __m512 qv[NCH];
  ATTNKIT_UNROLL
  for (int c = 0; c < NCH; ++c) qv[c] = c + 1 < NCH ? _mm512_loadu_ps(q + i + 16 * c) : _mm512_maskz_loadu_ps(tail, q + i + 16 * c);
  ATTNKIT_UNROLL
  for (int h = 0; h < 16; h += 8) {
    const KV* r[8];
    ATTNKIT_UNROLL
    for (int j = 0; j < 8; ++j) r[j] = k + (h + j < n ? h + j : n - 1) * ldk + i;
    ATTNKIT_UNROLL
    for (int c = 0; c < NCH; ++c)
      ATTNKIT_UNROLL
      for (int j = 0; j < 8; ++j)
        acc[h + j] = _mm512_fmadd_ps(qv[c], c + 1 < NCH ? load16(r[j] + 16 * c) : load16(r[j] + 16 * c, tail), acc[h + j]);
  }
}
}  // namespace kv_detail
#endif

/// out[j] = Σ_i q[i]·float(k_j[i]) for j < n (1 <= n <= 16), k_j = k + j·ldk
/// (elements), in fp32 with the keys widened in registers. Requires
/// has_wide_kv_kernels<Arch>.
template <class Arch, class KV>
inline void dot16(const float* q, long d, const KV* k, long ldk, int n, float* out) noexcept {
  static_assert(has_wide_kv_kernels<Arch>, "dot16 needs an AVX-512 (BW, VL) architecture");
#if ATTNKIT_WIDE_KV_KERNELS
  __m512 acc[16];
  ATTNKIT_UNROLL
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
  // Groups of up to 8 chunks (128 elements) with their query vectors in registers;
  // the last chunk of the last group is masked to d.
  for (long i = 0; i < d; i += 128) {
    const long left = d - i < 128 ? d - i : 128;
    const int nch = static_cast<int>((left + 15) / 16);
    const __mmask16 tail = static_cast<__mmask16>(left % 16 == 0 ? 0xFFFFu : (1u << (left % 16)) - 1);
    switch (nch) {
      case 8: kv_detail::dot16_chunks<8>(q, i, k, ldk, n, tail, acc); break;
      case 7: kv_detail::dot16_chunks<7>(q, i, k, ldk, n, tail, acc); break;
      case 6: kv_detail::dot16_chunks<6>(q, i, k, ldk, n, tail, acc); break;
      case 5: kv_detail::dot16_chunks<5>(q, i, k, ldk, n, tail, acc); break;
      case 4: kv_detail::dot16_chunks<4>(q, i, k, ldk, n, tail, acc); break;
      case 3: kv_detail::dot16_chunks<3>(q, i, k, ldk, n, tail, acc); break;
      case 2: kv_detail::dot16_chunks<2>(q, i, k, ldk, n, tail, acc); break;
      default: kv_detail::dot16_chunks<1>(q, i, k, ldk, n, tail, acc); break;
    }
  }
  _mm512_mask_storeu_ps(out, static_cast<__mmask16>((1u << n) - 1), bf16_detail::reduce16(acc));
#else
  (void)q, (void)d, (void)k, (void)ldk, (void)n, (void)out;
#endif
}

/// Σ_i q[i]·k[i] for one fp32 row, summed in exactly the order dot16 uses for
/// each of its keys (one accumulator over 16-element chunks, then the halving tree
/// of reduce16), so a row gives the same bits through either. Requires
/// has_wide_kv_kernels<Arch>.
template <class Arch>
inline float dot1(const float* q, long d, const float* k) noexcept {
  static_assert(has_wide_kv_kernels<Arch>, "dot1 needs an AVX-512 (BW, VL) architecture");
#if ATTNKIT_WIDE_KV_KERNELS
  __m512 acc = _mm512_setzero_ps();
  long i = 0;
  for (; i + 16 <= d; i += 16) acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(k + i), acc);
  if (i < d) {
    const __mmask16 m = static_cast<__mmask16>((1u << (d - i)) - 1);
    acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i), _mm512_maskz_loadu_ps(m, k + i), acc);
  }
  // Lanes l + l+8, then + l+4, then + l+2, then + l+1: reduce16's levels.
  const __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc), 1)));
  const __m128 y = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  const __m128 z = _mm_add_ps(y, _mm_movehl_ps(y, y));
  return _mm_cvtss_f32(_mm_add_ss(z, _mm_shuffle_ps(z, z, 1)));
#else
  (void)q, (void)d, (void)k;
  return 0.0f;
#endif
}

/// O[R][0..dv) += P[R][keys]·V[keys][0..dv) for R <= 6 rows, V stored as KV (row
/// stride vs elements) and widened in registers; one fma per key and column in key
/// order, as the fp32 pv_tile. Requires has_wide_kv_kernels<Arch>.
template <class Arch, class KV>
inline void pv_rows_kv(int R, const float* p, long ps, const KV* v, long vs, long keys, float* o, long os,
                       long dv) noexcept {
  static_assert(has_wide_kv_kernels<Arch>, "pv_rows_kv needs an AVX-512 (BW, VL) architecture");
#if ATTNKIT_WIDE_KV_KERNELS
  const long full = dv / 16, per_pass = R <= 2 ? 8 : 4;
  for (long c = 0; c < full; c += per_pass) {
    const int nv = static_cast<int>(full - c < per_pass ? full - c : per_pass);
    const KV* vc = v + c * 16;
    float* oc = o + c * 16;
    switch (R) {
      case 6: kv_detail::pv_row_block<6>(nv, p, ps, vc, vs, keys, oc, os); break;
      case 5: kv_detail::pv_row_block<5>(nv, p, ps, vc, vs, keys, oc, os); break;
      case 4: kv_detail::pv_row_block<4>(nv, p, ps, vc, vs, keys, oc, os); break;
      case 3: kv_detail::pv_row_block<3>(nv, p, ps, vc, vs, keys, oc, os); break;
      case 2: kv_detail::pv_row_block<2>(nv, p, ps, vc, vs, keys, oc, os); break;
      default: kv_detail::pv_row_block<1>(nv, p, ps, vc, vs, keys, oc, os); break;
    }
  }
  for (int r = 0; r < R; ++r)  // columns past the last whole vector
    for (long j = 0; j < keys; ++j)
      for (long d = full * 16; d < dv; ++d) o[r * os + d] += p[r * ps + j] * to_float(v[j * vs + d]);
#else
  (void)R, (void)p, (void)ps, (void)v, (void)vs, (void)keys, (void)o, (void)os, (void)dv;
#endif
}

#if ATTNKIT_WIDE_KV_KERNELS
namespace kv_detail {
/// The scale of a q8 block in all 16 lanes.
inline __m512 scale16(const block_q8<float>& b) noexcept { return _mm512_set1_ps(b.scale); }
inline __m512 scale16(const block_q8<float16>& b) noexcept {
  return _mm512_cvtph_ps(_mm256_set1_epi16(static_cast<short>(b.scale.bits)));
}
/// Values [16·h, 16·h + 16) of a q8 block, dequantised: float(q)·scale, exactly
/// what dequantize_q8 stores, so the kernels below see the values a float cache
/// holding the dequantised block would hold.
template <class S>
inline __m512 load16_q8(const block_q8<S>& b, int h, __m512 scale) noexcept {
  const __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b.q + 16 * h));
  return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(x)), scale);
}

/// O[R][NB·32] += Σ_j P[r][j]·V_j over NB blocks of each q8 row, in key order.
template <int R, int NB, class S>
inline void pv_tile_q8(const float* p, long ps, const block_q8<S>* v, long vs, long keys, float* o, long os) noexcept {
  constexpr int NV = 2 * NB;
  __m512 acc[R][NV];
  ATTNKIT_UNROLL
  for (int r = 0; r < R; ++r)
    ATTNKIT_UNROLL
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_loadu_ps(o + r * os + c * 16);
  for (long j = 0; j < keys; ++j) {
    __m512 vv[NV];
    ATTNKIT_UNROLL
    for (int b = 0; b < NB; ++b) {
      const block_q8<S>& blk = v[j * vs + b];
      const __m512 sc = scale16(blk);
      vv[2 * b] = load16_q8(blk, 0, sc);
      vv[2 * b + 1] = load16_q8(blk, 1, sc);
    }
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

template <int R, class S>
inline void pv_row_block_q8(int nb, const float* p, long ps, const block_q8<S>* v, long vs, long keys, float* o,
                            long os) noexcept {
  if (nb >= 2)
    pv_tile_q8<R, 2>(p, ps, v, vs, keys, o, os);
  else
    pv_tile_q8<R, 1>(p, ps, v, vs, keys, o, os);
}
}  // namespace kv_detail
#endif

/// out[j] = Σ_i q[i]·x_j[i] for j < n (1 <= n <= 16), x_j the dequantised values
/// of the q8 row k + j·ldk (ldk in blocks), d = 32·(blocks per row). Summed in
/// dot16's order, so a q8 cache gives bitwise the logits of a float cache holding
/// its dequantised values. Requires has_wide_kv_kernels<Arch>.
template <class Arch, class S>
inline void dot16_q8(const float* q, long d, const block_q8<S>* k, long ldk, int n, float* out) noexcept {
  static_assert(has_wide_kv_kernels<Arch>, "dot16_q8 needs an AVX-512 (BW, VL) architecture");
#if ATTNKIT_WIDE_KV_KERNELS
  const block_q8<S>* row[16];
  for (int j = 0; j < 16; ++j) row[j] = k + (j < n ? j : n - 1) * ldk;  // spare lanes repeat a row
  __m512 acc[16];
  ATTNKIT_UNROLL
  for (int j = 0; j < 16; ++j) acc[j] = _mm512_setzero_ps();
  for (long b = 0; b < d / 32; ++b) {
    const __m512 q0 = _mm512_loadu_ps(q + 32 * b), q1 = _mm512_loadu_ps(q + 32 * b + 16);
    ATTNKIT_UNROLL
    for (int j = 0; j < 16; ++j) {
      const block_q8<S>& blk = row[j][b];
      const __m512 sc = kv_detail::scale16(blk);
      acc[j] = _mm512_fmadd_ps(q0, kv_detail::load16_q8(blk, 0, sc), acc[j]);
      acc[j] = _mm512_fmadd_ps(q1, kv_detail::load16_q8(blk, 1, sc), acc[j]);
    }
  }
  _mm512_mask_storeu_ps(out, static_cast<__mmask16>((1u << n) - 1), bf16_detail::reduce16(acc));
#else
  (void)q, (void)d, (void)k, (void)ldk, (void)n, (void)out;
#endif
}

/// O[R][0..dv) += P[R][keys]·V[keys][0..dv) for R <= 6 rows, V as q8 rows (row
/// stride vs in blocks, dv = 32·blocks), dequantised in registers; one fma per key
/// and column in key order, as pv_rows_kv. Requires has_wide_kv_kernels<Arch>.
template <class Arch, class S>
inline void pv_rows_q8(int R, const float* p, long ps, const block_q8<S>* v, long vs, long keys, float* o, long os,
                       long dv) noexcept {
  static_assert(has_wide_kv_kernels<Arch>, "pv_rows_q8 needs an AVX-512 (BW, VL) architecture");
#if ATTNKIT_WIDE_KV_KERNELS
  const long blocks = dv / 32;
  for (long b = 0; b < blocks; b += 2) {
    const int nb = static_cast<int>(blocks - b < 2 ? blocks - b : 2);
    const block_q8<S>* vb = v + b;
    float* ob = o + b * 32;
    switch (R) {
      case 6: kv_detail::pv_row_block_q8<6>(nb, p, ps, vb, vs, keys, ob, os); break;
      case 5: kv_detail::pv_row_block_q8<5>(nb, p, ps, vb, vs, keys, ob, os); break;
      case 4: kv_detail::pv_row_block_q8<4>(nb, p, ps, vb, vs, keys, ob, os); break;
      case 3: kv_detail::pv_row_block_q8<3>(nb, p, ps, vb, vs, keys, ob, os); break;
      case 2: kv_detail::pv_row_block_q8<2>(nb, p, ps, vb, vs, keys, ob, os); break;
      default: kv_detail::pv_row_block_q8<1>(nb, p, ps, vb, vs, keys, ob, os); break;
    }
  }
#else
  (void)R, (void)p, (void)ps, (void)v, (void)vs, (void)keys, (void)o, (void)os, (void)dv;
#endif
}

/// x[0, d) = the values of the q8 row `row` (d = 32·blocks): dequantize_q8's bits,
/// 16 values per instruction where `Arch` has the wide kernels.
template <class Arch, class S>
inline void dequantize_row(const block_q8<S>* row, long d, float* x) noexcept {
#if ATTNKIT_WIDE_KV_KERNELS
  if constexpr (has_wide_kv_kernels<Arch>) {
    for (long b = 0; b < d / 32; ++b) {
      const __m512 sc = kv_detail::scale16(row[b]);
      _mm512_storeu_ps(x + 32 * b, kv_detail::load16_q8(row[b], 0, sc));
      _mm512_storeu_ps(x + 32 * b + 16, kv_detail::load16_q8(row[b], 1, sc));
    }
    return;
  }
#endif
  dequantize_q8(row, d, x);
}

}  // namespace attnkit::simd
