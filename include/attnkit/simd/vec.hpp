#pragma once
/// \file
/// The small vector vocabulary the kernels are written in. `ops<Arch>` maps it
/// onto xsimd batches for SIMD architectures and onto plain `float` for
/// simd::scalar, so one kernel source serves every architecture.
#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <limits>

#include "arch.hpp"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

/// Forces inlining of the helpers that work on register tiles. An out-of-line call
/// makes the caller spill every live vector register (all are caller-saved), so a
/// kernel whose 24 accumulators cross one such call runs at half speed. GCC's own
/// heuristics drop these inlines once a caller has many template instances.
#if defined(__GNUC__)
#define ATTNKIT_FORCE_INLINE [[gnu::always_inline]] inline
#else
#define ATTNKIT_FORCE_INLINE inline
#endif

namespace attnkit::simd {

/// Coefficients of 2^f on f ∈ [−0.5, 0.5] (1 + f·P(f), Cephes exp2f form):
/// relative error below 2 ulp in float.
namespace exp2_coef {
inline constexpr float c6 = 1.535336188319500e-4f;
inline constexpr float c5 = 1.339887440266574e-3f;
inline constexpr float c4 = 9.618437357674640e-3f;
inline constexpr float c3 = 5.550332471162809e-2f;
inline constexpr float c2 = 2.402264791363012e-1f;
inline constexpr float c1 = 6.931472028550421e-1f;
}  // namespace exp2_coef

/// Inputs below this give exactly 0 from the fast exp2 (2^−125 is far below any
/// contribution a float accumulator can keep next to the row maximum's 1).
inline constexpr float exp2_underflow = -125.0f;

template <class Arch>
struct ops {
  using vf = xsimd::batch<float, Arch>;
  using vi = xsimd::batch<std::int32_t, Arch>;
  static constexpr int width = static_cast<int>(vf::size);

  ATTNKIT_FORCE_INLINE static vf load(const float* p) noexcept { return vf::load_unaligned(p); }
  ATTNKIT_FORCE_INLINE static void store(float* p, vf v) noexcept { v.store_unaligned(p); }
  ATTNKIT_FORCE_INLINE static vf set1(float x) noexcept { return vf(x); }
  ATTNKIT_FORCE_INLINE static vf fma(vf a, vf b, vf c) noexcept { return xsimd::fma(a, b, c); }
  /// max/min return b when either operand is NaN (x86 semantics), so pass the
  /// value that may be NaN second when NaN must propagate.
  ATTNKIT_FORCE_INLINE static vf max(vf a, vf b) noexcept { return xsimd::max(a, b); }
  ATTNKIT_FORCE_INLINE static vf min(vf a, vf b) noexcept { return xsimd::min(a, b); }
  ATTNKIT_FORCE_INLINE static float reduce_add(vf v) noexcept { return xsimd::hadd(v); }
  /// True iff any lane is NaN. Not `v != v`: xsimd 8.1's != is the *ordered*
  /// compare (_CMP_NEQ_OQ), false for NaN lanes.
  ATTNKIT_FORCE_INLINE static bool has_nan(vf v) noexcept { return !xsimd::all(v == v); }
  /// Horizontal max; NaN if any lane is NaN.
  ATTNKIT_FORCE_INLINE static float reduce_max(vf v) noexcept {
    if (has_nan(v)) return std::numeric_limits<float>::quiet_NaN();
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) return _mm512_reduce_max_ps(v);
#endif
    alignas(64) float t[width];
    v.store_unaligned(t);
    float m = t[0];
    for (int i = 1; i < width; ++i) m = t[i] > m ? t[i] : m;
    return m;
  }
  /// Lane j holds `start + j`.
  ATTNKIT_FORCE_INLINE static vf iota(float start) noexcept {
    alignas(64) float t[width];
    for (int i = 0; i < width; ++i) t[i] = start + static_cast<float>(i);
    return vf::load_unaligned(t);
  }
  /// x where lo <= idx < hi, else −inf (range masking of a tile column vector).
  ATTNKIT_FORCE_INLINE static vf mask_range(vf x, vf idx, float lo, float hi) noexcept {
    auto keep = (idx >= vf(lo)) & (idx < vf(hi));
    return xsimd::select(keep, x, vf(-std::numeric_limits<float>::infinity()));
  }
  /// x where idx < hi, else 0 (a weight row cut at a prefix; a NaN beyond it is dropped).
  ATTNKIT_FORCE_INLINE static vf keep_below(vf x, vf idx, float hi) noexcept { return xsimd::select(idx < vf(hi), x, vf(0.0f)); }

  /// 2^f for f ∈ [−0.5, 0.5] (1 + f·P(f), exp2_coef).
  ATTNKIT_FORCE_INLINE static vf exp2_poly(vf f) noexcept {
    using namespace exp2_coef;
    vf p = fma(vf(c6), f, vf(c5));
    p = fma(p, f, vf(c4));
    p = fma(p, f, vf(c3));
    p = fma(p, f, vf(c2));
    p = fma(p, f, vf(c1));
    return fma(p, f, vf(1.0f));
  }
  /// 2^x, fast polynomial; exact 0 for x < −125 (and for x = −inf), saturates at 2^126.
  ATTNKIT_FORCE_INLINE static vf exp2_fast(vf x) noexcept {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
      // 2^n·p in one vscalefps, whose write mask gives the exact zeros below the
      // underflow bound (NaN compares "not less", so it stays NaN). No lower clamp:
      // lanes below the bound (−inf among them) are never read.
      const vf xc = xsimd::min(vf(126.0f), x);  // NaN stays (the second operand)
      const vf n = xsimd::nearbyint(xc);
      const __mmask16 keep = _mm512_cmp_ps_mask(x, _mm512_set1_ps(exp2_underflow), _CMP_NLT_UQ);
      return _mm512_maskz_scalef_ps(keep, exp2_poly(xc - n), n);
    }
#endif
    // Constant first: x86 min/max return the second operand when either is NaN,
    // so a NaN stays NaN through the clamp.
    const vf xc = xsimd::min(vf(126.0f), xsimd::max(vf(-126.0f), x));
    const vf n = xsimd::nearbyint(xc);
    const vf p = exp2_poly(xc - n);
    // 2^n through the exponent field. The integer comes from a float->int conversion,
    // which maps NaN to INT_MIN (shifted out to 0), so p's NaN survives whatever its
    // payload; reading n out of the mantissa bits would splice a payload into the
    // exponent and turn some NaNs into numbers.
    const vi ni = xsimd::to_int(n) << 23;
    const vf res = xsimd::bitwise_cast<vf>(xsimd::bitwise_cast<vi>(p) + ni);
    return xsimd::select(x < vf(exp2_underflow), vf(0.0f), res);
  }
  ATTNKIT_FORCE_INLINE static vf exp2_precise(vf x) noexcept { return xsimd::exp2(x); }
  ATTNKIT_FORCE_INLINE static vf log1p(vf x) noexcept { return xsimd::log1p(x); }
  ATTNKIT_FORCE_INLINE static vf tanh(vf x) noexcept { return xsimd::tanh(x); }
  ATTNKIT_FORCE_INLINE static vf abs(vf x) noexcept { return xsimd::abs(x); }
  ATTNKIT_FORCE_INLINE static float first_lane(vf x) noexcept { return x.get(0); }
  /// x where keep[lane] is true, else −inf (boolean attention mask, true = attend).
  /// x where bit l of `keep` is set (lane l), else −inf.
  ATTNKIT_FORCE_INLINE static vf mask_bits(vf x, std::uint32_t keep) noexcept {
#if defined(__AVX512F__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>)
      return _mm512_mask_blend_ps(static_cast<__mmask16>(keep), _mm512_set1_ps(-std::numeric_limits<float>::infinity()), x);
#endif
    alignas(64) float t[width];
    x.store_unaligned(t);
    for (int i = 0; i < width; ++i)
      if (!((keep >> i) & 1u)) t[i] = -std::numeric_limits<float>::infinity();
    return vf::load_unaligned(t);
  }
  ATTNKIT_FORCE_INLINE static vf mask_bool(vf x, const std::uint8_t* keep) noexcept {
#if defined(__AVX512BW__) && defined(__AVX512VL__)
    if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(keep));
      return _mm512_mask_blend_ps(_mm_test_epi8_mask(b, b), _mm512_set1_ps(-std::numeric_limits<float>::infinity()),
                                  x);
    }
#endif
    alignas(64) float t[width];
    x.store_unaligned(t);
    for (int i = 0; i < width; ++i)
      if (!keep[i]) t[i] = -std::numeric_limits<float>::infinity();
    return vf::load_unaligned(t);
  }
  /// Number of lanes that are not −inf.
  ATTNKIT_FORCE_INLINE static float count_finite(vf x) noexcept {
    return xsimd::hadd(xsimd::select(x == vf(-std::numeric_limits<float>::infinity()), vf(0.0f), vf(1.0f)));
  }
};

/// Scalar fallback: the same vocabulary over plain floats.
template <>
struct ops<scalar> {
  using vf = float;
  static constexpr int width = 1;
  ATTNKIT_FORCE_INLINE static vf load(const float* p) noexcept { return *p; }
  ATTNKIT_FORCE_INLINE static void store(float* p, vf v) noexcept { *p = v; }
  ATTNKIT_FORCE_INLINE static vf set1(float x) noexcept { return x; }
  // a*b+c, not std::fma: without hardware FMA std::fma is a slow library call.
  ATTNKIT_FORCE_INLINE static vf fma(vf a, vf b, vf c) noexcept { return a * b + c; }
  ATTNKIT_FORCE_INLINE static vf max(vf a, vf b) noexcept { return a > b ? a : b; }
  ATTNKIT_FORCE_INLINE static vf min(vf a, vf b) noexcept { return a < b ? a : b; }
  ATTNKIT_FORCE_INLINE static float reduce_add(vf v) noexcept { return v; }
  ATTNKIT_FORCE_INLINE static bool has_nan(vf v) noexcept { return v != v; }
  ATTNKIT_FORCE_INLINE static float reduce_max(vf v) noexcept { return v; }
  ATTNKIT_FORCE_INLINE static vf iota(float start) noexcept { return start; }
  ATTNKIT_FORCE_INLINE static vf mask_range(vf x, vf idx, float lo, float hi) noexcept {
    return (idx >= lo && idx < hi) ? x : -std::numeric_limits<float>::infinity();
  }
  ATTNKIT_FORCE_INLINE static vf keep_below(vf x, vf idx, float hi) noexcept { return idx < hi ? x : 0.0f; }
  ATTNKIT_FORCE_INLINE static vf exp2_fast(vf x) noexcept {
    using namespace exp2_coef;
    if (x != x) return x;
    if (x < exp2_underflow) return 0.0f;
    const float xc = std::min(x, 126.0f);
    const float n = std::nearbyint(xc);
    const float f = xc - n;
    float p = c6 * f + c5;
    p = p * f + c4;
    p = p * f + c3;
    p = p * f + c2;
    p = p * f + c1;
    p = p * f + 1.0f;
    return std::ldexp(p, static_cast<int>(n));
  }
  ATTNKIT_FORCE_INLINE static vf exp2_precise(vf x) noexcept { return std::exp2(x); }
  ATTNKIT_FORCE_INLINE static vf log1p(vf x) noexcept { return std::log1p(x); }
  ATTNKIT_FORCE_INLINE static vf tanh(vf x) noexcept { return std::tanh(x); }
  ATTNKIT_FORCE_INLINE static vf abs(vf x) noexcept { return std::abs(x); }
  ATTNKIT_FORCE_INLINE static float first_lane(vf x) noexcept { return x; }
  ATTNKIT_FORCE_INLINE static vf mask_bits(vf x, std::uint32_t keep) noexcept {
    return (keep & 1u) ? x : -std::numeric_limits<float>::infinity();
  }
  ATTNKIT_FORCE_INLINE static vf mask_bool(vf x, const std::uint8_t* keep) noexcept {
    return *keep ? x : -std::numeric_limits<float>::infinity();
  }
  ATTNKIT_FORCE_INLINE static float count_finite(vf x) noexcept { return x != -std::numeric_limits<float>::infinity() ? 1.0f : 0.0f; }
};

}  // namespace attnkit::simd
