#pragma once
/// \file
/// Row helpers for feature maps (policy/feature_map.hpp): the loops a map that
/// mixes coordinates is written in (dot products, axpy, an elementwise function
/// over a row), so that ONE templated definition runs in double in the float64
/// oracle and vectorised in float in the kernels.
///
/// \code
///   template <class T>
///   void operator()(const T* x, attnkit::index_t d, const attnkit::feature::context&, T* out) const {
///     for (attnkit::index_t m = 0; m < features; ++m) out[m] = attnkit::math::dot(W + m * d, x, d);
///   }
/// \endcode
///
/// On `double` every helper is a plain loop accumulating in double. On `float` it
/// is a SIMD loop of `simd::default_arch`, the best architecture the translation
/// unit is compiled for (a map cannot know which arch its caller was instantiated
/// for; `simd::apply_lanes<Arch>` and `simd::fma_lanes<Arch>` take it explicitly).
#include <cstdint>
#include <type_traits>

#include "math.hpp"
#include "microkernel.hpp"

namespace attnkit::simd {

/// out[i] = f(x[i]) for i < n, f evaluated on Arch's float vectors: every lane,
/// the tail included, goes through the same vector code (the tail is padded with
/// zeros in a register-sized buffer), so a value does not depend on its position.
template <class Arch, class F>
ATTNKIT_FORCE_INLINE void apply_lanes(const F& f, const float* x, float* out, long n) {
  using O = ops<Arch>;
  constexpr int W = O::width;
  long i = 0;
  for (; i + W <= n; i += W) O::store(out + i, f(O::load(x + i)));
  if (i < n) {
    alignas(64) float t[W] = {};
    for (long j = 0; j < n - i; ++j) t[j] = x[i + j];
    O::store(t, f(O::load(t)));
    for (long j = 0; j < n - i; ++j) out[i + j] = t[j];
  }
}

/// acc[i] += g[i] · f(x[i]) for i < n, on Arch's float vectors (tail as in apply_lanes):
/// the backward of an elementwise map, dx += φ'(x) ∘ dφ.
template <class Arch, class F>
ATTNKIT_FORCE_INLINE void fma_lanes(const F& f, const float* x, const float* g, float* acc, long n) {
  using O = ops<Arch>;
  constexpr int W = O::width;
  long i = 0;
  for (; i + W <= n; i += W) O::store(acc + i, O::fma(O::load(g + i), f(O::load(x + i)), O::load(acc + i)));
  if (i < n) {
    alignas(64) float tx[W] = {}, tg[W] = {}, ta[W] = {};
    for (long j = 0; j < n - i; ++j) tx[j] = x[i + j], tg[j] = g[i + j], ta[j] = acc[i + j];
    O::store(ta, O::fma(O::load(tg), f(O::load(tx)), O::load(ta)));
    for (long j = 0; j < n - i; ++j) acc[i + j] = ta[j];
  }
}

}  // namespace attnkit::simd

namespace attnkit::math {

namespace detail {
template <class A, class B>
inline constexpr bool wide_pair = (std::is_same_v<A, double> && (std::is_same_v<B, double> || std::is_same_v<B, float>)) ||
                                  (std::is_same_v<A, float> && std::is_same_v<B, double>);
}  // namespace detail

/// Σ a[i]·b[i] in float, vectorised.
inline float dot(const float* a, const float* b, std::int64_t n) noexcept { return simd::dot<simd::default_arch>(a, b, n); }
/// Σ a[i]·b[i] in double (either operand double: e.g. a float matrix against a double row).
template <class A, class B>
  requires detail::wide_pair<A, B>
inline double dot(const A* a, const B* b, std::int64_t n) noexcept {
  double s = 0;
  for (std::int64_t i = 0; i < n; ++i) s += static_cast<double>(a[i]) * static_cast<double>(b[i]);
  return s;
}

/// y[i] += a·x[i] in float, vectorised.
inline void axpy(float a, const float* x, float* y, std::int64_t n) noexcept { simd::axpy<simd::default_arch>(a, x, y, n); }
/// y[i] += a·x[i] in double (x float or double).
template <class X>
  requires(std::is_same_v<X, float> || std::is_same_v<X, double>)
inline void axpy(double a, const X* x, double* y, std::int64_t n) noexcept {
  for (std::int64_t i = 0; i < n; ++i) y[i] += a * static_cast<double>(x[i]);
}

/// out[i] = f(x[i]) with f a lane-generic function (`[](auto v) { return attnkit::math::max(v, decltype(v)(0)); }`):
/// on float rows, vectorised; on double rows, a loop.
template <class F>
inline void apply(const F& f, const float* x, float* out, std::int64_t n) {
  simd::apply_lanes<simd::default_arch>(f, x, out, n);
}
template <class F>
inline void apply(const F& f, const double* x, double* out, std::int64_t n) {
  for (std::int64_t i = 0; i < n; ++i) out[i] = f(x[i]);
}

/// y[i] = s·x[i] (x and y may be the same row).
inline void scale(const float* x, float s, float* y, std::int64_t n) noexcept { simd::scale_copy<simd::default_arch>(x, s, y, n); }
inline void scale(const double* x, double s, double* y, std::int64_t n) noexcept {
  for (std::int64_t i = 0; i < n; ++i) y[i] = s * x[i];
}

}  // namespace attnkit::math
