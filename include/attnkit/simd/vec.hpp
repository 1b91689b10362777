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
#include "isa.hpp"

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
  /// max/min return b when either operand is NaN (x86 semantics, on every arch),
  /// so pass the value that may be NaN second when NaN must propagate.
#if XSIMD_WITH_NEON
  // NEON's fmax/fmin return NaN for a NaN in either operand: isa::max keeps x86's rule.
  ATTNKIT_FORCE_INLINE static vf max(vf a, vf b) noexcept { return isa::max(a, b, Arch{}); }
  ATTNKIT_FORCE_INLINE static vf min(vf a, vf b) noexcept { return isa::min(a, b, Arch{}); }
#else
  ATTNKIT_FORCE_INLINE static vf max(vf a, vf b) noexcept { return xsimd::max(a, b); }
  ATTNKIT_FORCE_INLINE static vf min(vf a, vf b) noexcept { return xsimd::min(a, b); }
#endif
  ATTNKIT_FORCE_INLINE static float reduce_add(vf v) noexcept { return xsimd::hadd(v); }
  /// True iff any lane is NaN. Not `v != v`: xsimd 8.1's != is the *ordered*
  /// compare (_CMP_NEQ_OQ), false for NaN lanes.
  ATTNKIT_FORCE_INLINE static bool has_nan(vf v) noexcept { return !xsimd::all(v == v); }
  /// Horizontal max; NaN if any lane is NaN.
  ATTNKIT_FORCE_INLINE static float reduce_max(vf v) noexcept {
    if (has_nan(v)) return std::numeric_limits<float>::quiet_NaN();
    return isa::reduce_max(v, Arch{});
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
    // Constant first: x86 min/max return the second operand when either is NaN,
    // so a NaN stays NaN through the clamp. Lanes below the underflow bound (−inf
    // among them) come out as exact zeros from scale_by_exp2.
    const vf xc = xsimd::min(vf(126.0f), xsimd::max(vf(-126.0f), x));
    const vf n = xsimd::nearbyint(xc);
    return isa::scale_by_exp2(exp2_poly(xc - n), n, x, exp2_underflow, Arch{});
  }
  ATTNKIT_FORCE_INLINE static vf exp2_precise(vf x) noexcept { return xsimd::exp2(x); }
  ATTNKIT_FORCE_INLINE static vf log1p(vf x) noexcept { return xsimd::log1p(x); }
  ATTNKIT_FORCE_INLINE static vf tanh(vf x) noexcept { return xsimd::tanh(x); }
  ATTNKIT_FORCE_INLINE static vf abs(vf x) noexcept { return xsimd::abs(x); }
  ATTNKIT_FORCE_INLINE static float first_lane(vf x) noexcept { return x.get(0); }
  /// x where bit l of `keep` is set (lane l), else −inf.
  ATTNKIT_FORCE_INLINE static vf mask_bits(vf x, std::uint32_t keep) noexcept { return isa::mask_bits(x, keep, Arch{}); }
  /// x where keep[lane] != 0, else −inf (boolean attention mask, true = attend).
  ATTNKIT_FORCE_INLINE static vf mask_bool(vf x, const std::uint8_t* keep) noexcept {
    return isa::mask_bytes(x, keep, Arch{});
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
