#pragma once
/// \file
/// The feature map φ of the kernelised family (linear attention, policy/linear.hpp).
/// One definition serves the float64 oracle, the SIMD kernels and the backward. A
/// map has one of two forms.
///
/// **Elementwise**, φ(x)_i = f(x_i) (feature dimension M = D), written once in
/// attnkit::math (simd/math.hpp) and evaluated on `double` by the oracle and on
/// float vectors by the kernels:
///   template <class V> V operator()(V x) const;
///   template <class V> V derivative(V x) const;   // optional: f'(x), for the backward
///
/// **Row**, for maps that mix coordinates or depend on the token's position (FAVOR+,
/// cosFormer, learned Hedgehog-style projections):
///   index_t output_dim(index_t d) const;                                   // M
///   template <class T> void operator()(const T* x, index_t d, const context&, T* out) const;
///   template <class T> void vjp(const T* x, index_t d, const context&, const T* dphi, T* dx) const;
///       // optional: dx[0..d) += Jᵀ·dphi, J = ∂φ(x)/∂x (M × d), for the backward
/// T = double in the oracle, float in the kernels. Written with the row helpers of
/// simd/row_math.hpp (math::dot, math::axpy, math::apply, math::scale), the float
/// instance is vectorised.
///
/// Either form may have
///   void check(const attnkit::feature::call&) const;  // throw (detail::fail) on bad fields
/// which runs before anything is written. A member with one of these names but
/// another signature is a compile error naming the expected one.
///
/// \code
///   struct relu_squared {  // φ(x) = relu(x)²
///     template <class V> V operator()(V x) const { const V r = attnkit::math::max(V(0), x); return r * r; }
///     template <class V> V derivative(V x) const { return V(2) * attnkit::math::max(V(0), x); }
///   };
///   attnkit::attention(attnkit::linear{relu_squared{}}, q, k, v, out);
/// \endcode
#include <concepts>
#include <type_traits>

#include "../core/error.hpp"
#include "../core/hooks.hpp"
#include "../core/tensor_view.hpp"
#include "../simd/row_math.hpp"

ATTNKIT_DETAIL_MEMBER_DETECTOR_IN(attnkit::feature::detail, output_dim)
ATTNKIT_DETAIL_MEMBER_DETECTOR_IN(attnkit::feature::detail, derivative)
ATTNKIT_DETAIL_MEMBER_DETECTOR_IN(attnkit::feature::detail, vjp)
ATTNKIT_DETAIL_MEMBER_DETECTOR_IN(attnkit::feature::detail, check)

namespace attnkit::feature {

/// Where one token vector sits, handed to every row-map call.
///
/// Positions follow ALiBi's convention (core/options.hpp): a key at index j has
/// position j; a query at index i has position i + Δ, Δ = lk − Lq (lk = the
/// batch's valid key length), so a decoding query (Lq = 1) sits after the cache.
struct context {
  index_t position = 0;  ///< position of the token (see above)
  index_t q_len = 0;     ///< Lq of the call
  index_t k_len = 0;     ///< valid key length of the batch (key_lengths[b] or Lk)
  bool query = true;     ///< true: a query vector, false: a key vector
  double scale = 1.0;    ///< τ = options.scale or 1/sqrt(D) (FAVOR+ uses it)
};

/// What a map's optional `check` sees of the call.
struct call {
  index_t head_dim = 0;  ///< D
  bool stream = false;   ///< true for linear_step (token-by-token decoding: no known length)
};

/// An elementwise map: `f(x)` on double and float (and float vectors), no `output_dim`.
template <class F>
concept elementwise_map = std::copyable<F> && !detail::has_member_output_dim<F> && requires(const F& f, double x, float y) {
  { f(x) } -> std::convertible_to<double>;
  { f(y) } -> std::convertible_to<float>;
};

/// A row map usable with element type T (double: the oracle, float: the kernels).
template <class F, class T = double>
concept row_map = std::copyable<F> && requires(const F& f, const T* x, T* out, index_t d, const context& c) {
  { f.output_dim(d) } -> std::convertible_to<index_t>;
  f(x, d, c, out);
};

/// A feature map usable with element type T: either form.
template <class F, class T = double>
concept feature_map = elementwise_map<F> || row_map<F, T>;

/// A feature map the backward can differentiate: an elementwise map with
/// `derivative`, or a row map with `vjp` (at a kink, e.g. relu at 0, the maps use
/// the one-sided derivative of their forward branch).
template <class F, class T = double>
concept differentiable =
    (elementwise_map<F> && requires(const F& f, T x) {
      { f.derivative(x) } -> std::convertible_to<T>;
    }) || (row_map<F, T> && requires(const F& f, const T* x, const T* g, T* dx, index_t d, const context& c) {
      f.vjp(x, d, c, g, dx);
    });

/// Feature dimension M of φ for input dimension d.
template <class F>
index_t output_dim(const F& f, index_t d) {
  if constexpr (elementwise_map<F>)
    return d;
  else
    return static_cast<index_t>(f.output_dim(d));
}

/// out[0..M) = φ(x[0..d)) in either form (elementwise maps: math::apply, vectorised on float).
template <class F, class T>
void evaluate(const F& f, const T* x, index_t d, const context& c, T* out) {
  if constexpr (elementwise_map<F>) {
    (void)c;
    math::apply(f, x, out, d);
  } else {
    f(x, d, c, out);
  }
}

/// dx[0..d) += Jᵀ·dphi in either form (elementwise: dx_i += f'(x_i)·dphi_i).
template <class F, class T>
void vjp(const F& f, const T* x, index_t d, const context& c, const T* dphi, T* dx) {
  static_assert(differentiable<F, T>,
                "attnkit: the backward needs the feature map's derivative: `template <class V> V derivative(V x) "
                "const` (elementwise maps) or `template <class T> void vjp(const T* x, index_t d, const "
                "attnkit::feature::context&, const T* dphi, T* dx) const` (row maps; dx += J^T dphi)");
  if constexpr (elementwise_map<F>) {
    (void)c;
    if constexpr (std::is_same_v<T, float>) {
      simd::fma_lanes<simd::default_arch>([&f](auto v) { return f.derivative(v); }, x, dphi, dx, d);
    } else {
      for (index_t i = 0; i < d; ++i) dx[i] += dphi[i] * f.derivative(x[i]);
    }
  } else {
    f.vjp(x, d, c, dphi, dx);
  }
}

namespace detail {

/// Compile-time checks of a feature map, with a message per mistake.
template <class F>
constexpr bool check_feature_map() {
  static_assert(std::copyable<F>, "attnkit: a feature map must be a copyable value type");
  if constexpr (has_member_output_dim<F>) {
    static_assert(row_map<F, double> || row_map<F, float>,
                  "attnkit: a row feature map (one with `output_dim`) needs `index_t output_dim(index_t d) const` and "
                  "`template <class T> void operator()(const T* x, index_t d, const attnkit::feature::context&, T* "
                  "out) const`, callable with T = float (the kernels) or double (the oracle)");
    if constexpr (has_member_vjp<F>)
      static_assert(differentiable<F, double> || differentiable<F, float>,
                    "attnkit: a feature map's `vjp` must be callable as `vjp(const T* x, index_t d, const "
                    "attnkit::feature::context&, const T* dphi, T* dx) const` (dx += J^T dphi)");
    if constexpr (has_member_derivative<F>)
      static_assert(sizeof(F) == 0,
                    "attnkit: `derivative` belongs to elementwise feature maps; a row map (with `output_dim`) "
                    "differentiates through `vjp`");
  } else {
    static_assert(elementwise_map<F>,
                  "attnkit: a feature map needs either `template <class V> V operator()(V x) const` (elementwise, "
                  "written with attnkit::math so it runs on double, float and float vectors) or `output_dim` and "
                  "`template <class T> void operator()(const T* x, index_t d, const attnkit::feature::context&, T* "
                  "out) const` (a row map)");
    if constexpr (has_member_derivative<F>)
      static_assert(differentiable<F, double> && differentiable<F, float>,
                    "attnkit: an elementwise feature map's `derivative` must be `template <class V> V derivative(V x) "
                    "const`, evaluable on double, float and float vectors (write it with attnkit::math)");
    if constexpr (has_member_vjp<F>)
      static_assert(sizeof(F) == 0,
                    "attnkit: `vjp` belongs to row feature maps (with `output_dim`); an elementwise map "
                    "differentiates through `template <class V> V derivative(V x) const`");
  }
  if constexpr (has_member_check<F>)
    static_assert(requires(const F& f, const call& c) { f.check(c); },
                  "attnkit: a feature map's `check` must be callable as `check(const attnkit::feature::call&) const`");
  return true;
}

/// An elementwise map's value on lane type V (the kernels' float vectors), with a
/// message when it is not written in lane-generic math.
template <class F, class V>
ATTNKIT_FORCE_INLINE V lanes(const F& f, V x) {
  if constexpr (requires { { f(x) } -> std::convertible_to<V>; })
    return f(x);
  else
    static_assert(sizeof(V) == 0,
                  "attnkit: an elementwise feature map must be evaluable on float vectors: write `operator()` as "
                  "`template <class V> V operator()(V x) const` with attnkit::math (max, select, exp, ...)");
}
template <class F, class V>
ATTNKIT_FORCE_INLINE V derivative_lanes(const F& f, V x) {
  if constexpr (requires { { f.derivative(x) } -> std::convertible_to<V>; })
    return f.derivative(x);
  else
    static_assert(sizeof(V) == 0,
                  "attnkit: an elementwise feature map's `derivative` must be evaluable on float vectors: write it "
                  "as `template <class V> V derivative(V x) const` with attnkit::math");
}

}  // namespace detail

/// Runs the map's optional `check` (before anything is written).
template <class F>
void check(const F& f, const call& c) {
  if constexpr (detail::has_member_check<F>) f.check(c);
}

}  // namespace attnkit::feature
