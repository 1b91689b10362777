#pragma once
/// \file
/// Lane-generic math: the functions a variant's weight function or feature map is
/// written in, so that ONE definition serves the float64 oracle (`double`), scalar
/// kernels (`float`) and the SIMD kernels (`xsimd::batch<float, Arch>`).
///
/// \code
///   template <class V> V weight(V s) const { return attnkit::math::softplus(s); }
/// \endcode
///
/// On `double` and `float` every function is the standard library's (the oracle's
/// accuracy); on batches they are the kernels' implementations (exp through the
/// same ≤ 2 ulp polynomial the softmax kernel uses). Comparisons give `bool` on
/// scalars and a lane mask on batches; `select` takes either.
#include <cmath>
#include <numbers>
#include <type_traits>

#include "vec.hpp"

namespace attnkit::math {

namespace detail {
template <class V>
struct is_batch : std::false_type {};
template <class A>
struct is_batch<xsimd::batch<float, A>> : std::true_type {
  using arch = A;
};
}  // namespace detail

/// `float` or `double`: the scalar lane types.
template <class T>
concept real = std::is_same_v<T, float> || std::is_same_v<T, double>;
/// A float vector of some xsimd architecture.
template <class V>
concept batch = detail::is_batch<V>::value;
/// Any lane type a weight function or feature map is evaluated on.
template <class V>
concept lane = real<V> || batch<V>;

namespace detail {
template <batch V>
using ops_of = simd::ops<typename is_batch<V>::arch>;
}  // namespace detail

// ------------------------------------------------------------------ scalars (std)
template <real T> inline T exp(T x) noexcept { return std::exp(x); }
template <real T> inline T log(T x) noexcept { return std::log(x); }
template <real T> inline T log1p(T x) noexcept { return std::log1p(x); }
template <real T> inline T tanh(T x) noexcept { return std::tanh(x); }
template <real T> inline T abs(T x) noexcept { return std::abs(x); }
template <real T> inline T sqrt(T x) noexcept { return std::sqrt(x); }
template <real T> inline T max(T a, T b) noexcept { return a > b ? a : b; }
template <real T> inline T min(T a, T b) noexcept { return a < b ? a : b; }
template <real T> inline T select(bool c, T a, T b) noexcept { return c ? a : b; }

// ------------------------------------------------------------------ batches (kernels)
/// e^x with the kernels' exp2 polynomial (≤ 2 ulp; exactly 0 below e^−86).
template <batch V> ATTNKIT_FORCE_INLINE V exp(V x) noexcept {
  return detail::ops_of<V>::exp2_fast(x * V(std::numbers::log2e_v<float>));
}
template <batch V> ATTNKIT_FORCE_INLINE V log(V x) noexcept { return xsimd::log(x); }
template <batch V> ATTNKIT_FORCE_INLINE V log1p(V x) noexcept { return xsimd::log1p(x); }
template <batch V> ATTNKIT_FORCE_INLINE V tanh(V x) noexcept { return xsimd::tanh(x); }
template <batch V> ATTNKIT_FORCE_INLINE V abs(V x) noexcept { return xsimd::abs(x); }
template <batch V> ATTNKIT_FORCE_INLINE V sqrt(V x) noexcept { return xsimd::sqrt(x); }
/// Lane-wise max/min as on scalars (a > b ? a : b): a NaN in `b` is kept, one in
/// `a` is not (x86's rule, on every arch: simd::isa::max).
#if XSIMD_WITH_NEON
template <batch V> ATTNKIT_FORCE_INLINE V max(V a, V b) noexcept { return detail::ops_of<V>::max(a, b); }
template <batch V> ATTNKIT_FORCE_INLINE V min(V a, V b) noexcept { return detail::ops_of<V>::min(a, b); }
#else
template <batch V> ATTNKIT_FORCE_INLINE V max(V a, V b) noexcept { return xsimd::max(a, b); }
template <batch V> ATTNKIT_FORCE_INLINE V min(V a, V b) noexcept { return xsimd::min(a, b); }
#endif
template <batch V> ATTNKIT_FORCE_INLINE V select(typename V::batch_bool_type c, V a, V b) noexcept {
  return xsimd::select(c, a, b);
}

// ------------------------------------------------------------------ composites (any lane)
/// σ(x) = 1 / (1 + e^−x).
template <lane V> ATTNKIT_FORCE_INLINE V sigmoid(V x) noexcept { return V(1) / (V(1) + exp(V(0) - x)); }

/// log(1 + u) for u ∈ [0, 1] with full relative accuracy: 2·atanh(z), z = u/(2+u) ≤ 1/3,
/// as an odd series (7 terms: the z^15 term is below float's ulp). Scalars use log1p.
template <lane V> ATTNKIT_FORCE_INLINE V log1p_unit(V u) noexcept {
  if constexpr (real<V>) {
    return std::log1p(u);
  } else {
    const V z = u / (V(2) + u), z2 = z * z;
    V p = V(1.0f / 13);
    p = xsimd::fma(p, z2, V(1.0f / 11));
    p = xsimd::fma(p, z2, V(1.0f / 9));
    p = xsimd::fma(p, z2, V(1.0f / 7));
    p = xsimd::fma(p, z2, V(1.0f / 5));
    p = xsimd::fma(p, z2, V(1.0f / 3));
    p = xsimd::fma(p, z2, V(1.0f));
    return V(2) * z * p;
  }
}

/// softplus(x) = log(1 + e^x), stably: max(x, 0) + log1p(e^−|x|).
template <lane V> ATTNKIT_FORCE_INLINE V softplus(V x) noexcept {
  return max(x, V(0)) + log1p_unit(exp(V(0) - abs(x)));
}

}  // namespace attnkit::math
