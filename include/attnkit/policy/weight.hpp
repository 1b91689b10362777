#pragma once
/// \file
/// The weight function of the quadratic family: how a logit s_ij becomes the weight
/// of key j in row i, and how a row's weights make its output. softmax and sigmoid
/// are two instances; a user's variant (softplus, ReLU, ReLU², ...) is another, and
/// runs through the same kernels, oracle and observers.
///
/// A weight function is a small value type with
///   using family = attnkit::family::quadratic;
///   static constexpr attnkit::normalization normalization = ...;   // see below
///   template <class V> V weight(V s [, const Params&]) const;      // not for softmax
/// and, optionally,
///   Params resolve(const attnkit::weight_context&) const;          // per-call parameters
///   template <class V> V derivative(V s [, const Params&]) const;  // dw/ds, for the backward
/// `weight` and `derivative` are written once in attnkit::math (simd/math.hpp) and
/// evaluated on `double` by the float64 oracle and on float vectors by the kernels.
/// The logit s is in natural units: s = τ·q·k (soft-capped) + bias − ALiBi.
///
/// \code
///   struct relu_attention {                    // Wortsman et al. 2023: relu(s) / Lk
///     using family = attnkit::family::quadratic;
///     static constexpr auto normalization = attnkit::normalization::none;
///     struct params { double inv_len; };
///     params resolve(const attnkit::weight_context& c) const { return {1.0 / double(c.key_length)}; }
///     template <class V> V weight(V s, const params& p) const { return attnkit::math::max(s, V(0)) * V(p.inv_len); }
///   };
/// \endcode
#include <concepts>
#include <cstdint>
#include <type_traits>

#include "../core/error.hpp"
#include "../core/hooks.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../simd/math.hpp"
#include "family.hpp"

ATTNKIT_DETAIL_MEMBER_DETECTOR(resolve)
ATTNKIT_DETAIL_MEMBER_DETECTOR(weight)
ATTNKIT_DETAIL_MEMBER_DETECTOR(derivative)
ATTNKIT_DETAIL_MEMBER_DETECTOR(exp)
ATTNKIT_DETAIL_MEMBER_DETECTOR(uses_key_length)

namespace attnkit {

/// How a row's weights w_ij make its output o_i.
enum class normalization : std::uint8_t {
  /// w = e^s, o_i = Σ w v / Σ w: the streaming softmax with an online maximum (LSE
  /// output, attention sinks, masked_rows). `weight` is not used: the kernel's exp is.
  softmax,
  /// w = weight(s) ≥ 0, o_i = Σ w v / Σ w (ℓ1-normalised rows, e.g. softplus). A row
  /// whose weights sum to 0 gives 0; a row with no visible key follows masked_rows.
  sum,
  /// w = weight(s), o_i = Σ w v: no normalisation (sigmoid, ReLU). Masked keys weigh
  /// 0; a row with no visible key gives 0.
  none,
};

/// What a weight function's parameters may depend on, per call and batch.
struct weight_context {
  index_t key_length = 0;    ///< valid keys of the batch (options.key_lengths[b], else k.seq)
  index_t query_length = 0;  ///< Lq of the call
  index_t head_dim = 0;      ///< D
};

/// Optional base of a weight function: the defaults of its optional members. A
/// variant with data members it wants brace-initialised may skip it (aggregate
/// initialisation of a derived class warns under -Wextra); the defaults are the same.
struct weight_base {
  using family = attnkit::family::quadratic;
  /// Parameters of a weight function that has none.
  struct no_params {};
  constexpr no_params resolve(const weight_context&) const noexcept { return {}; }
};

/// A quadratic-family policy: a weight function with its normalization.
template <class P>
concept quadratic_weight = policy<P> && std::same_as<typename P::family, family::quadratic> && requires {
  { P::normalization } -> std::convertible_to<normalization>;
};

namespace detail {

/// The per-call parameters of P (weight_base::no_params when P has no `resolve`).
template <class P>
auto resolve_weight(const P& p, const weight_context& c) {
  if constexpr (has_member_resolve<P>) {
    static_assert(requires { p.resolve(c); },
                  "attnkit: a weight function's `resolve` must be callable as `resolve(const attnkit::weight_context&) const`");
    return p.resolve(c);
  } else {
    return weight_base::no_params{};
  }
}
template <class P>
using weight_params_t = decltype(resolve_weight(std::declval<const P&>(), std::declval<const weight_context&>()));

/// Whether this call's parameters of p depend on weight_context.key_length — the
/// optional hook `bool uses_key_length() const` (sigmoid's default bias −ln Lk
/// does); false without it.
template <class P>
bool weight_uses_key_length(const P& p) {
  if constexpr (has_member_uses_key_length<P>)
    return p.uses_key_length();
  else
    return false;
}

/// P whose parameters are resolved with one stated key length for every batch and
/// call shape (the KV-cache entry states it once per sequence, so prefill and
/// token-by-token decoding resolve alike).
template <class P>
struct with_key_length : P {
  index_t key_length = 0;
  with_key_length(const P& p, index_t length) : P(p), key_length(length) {}
  auto resolve(const weight_context& c) const {
    weight_context stated = c;
    stated.key_length = key_length;
    return resolve_weight(static_cast<const P&>(*this), stated);
  }
};

/// weight(s [, params]) of P on lane type V.
template <class P, class V>
ATTNKIT_FORCE_INLINE V eval_weight(const P& p, V s, const weight_params_t<P>& a) {
  if constexpr (requires { { p.weight(s, a) } -> std::convertible_to<V>; })
    return p.weight(s, a);
  else if constexpr (requires { { p.weight(s) } -> std::convertible_to<V>; })
    return p.weight(s);
  else
    static_assert(sizeof(V) == 0,
                  "attnkit: a weight function needs `template <class V> V weight(V s[, const Params&]) const`, "
                  "evaluable on double, float and float vectors (write it with attnkit::math)");
}

/// dweight/ds (s [, params]) of P on lane type V.
template <class P, class V>
V eval_derivative(const P& p, V s, const weight_params_t<P>& a) {
  if constexpr (requires { { p.derivative(s, a) } -> std::convertible_to<V>; })
    return p.derivative(s, a);
  else if constexpr (requires { { p.derivative(s) } -> std::convertible_to<V>; })
    return p.derivative(s);
  else
    static_assert(sizeof(V) == 0,
                  "attnkit: the backward pass needs `template <class V> V derivative(V s[, const Params&]) const` "
                  "(dw/ds) on the weight function");
}

/// Compile-time checks of a weight function, with a message per mistake.
template <class P>
constexpr bool check_weight_function() {
  static_assert(quadratic_weight<P>,
                "attnkit: a quadratic-family policy needs `using family = attnkit::family::quadratic;` and "
                "`static constexpr attnkit::normalization normalization`");
  if constexpr (P::normalization != normalization::softmax) {
    static_assert(has_member_weight<P>, "attnkit: a weight function with normalization sum/none needs a `weight` member");
    using params = weight_params_t<P>;
    static_assert(requires(const P& p, double s, const params& a) { eval_weight(p, s, a); });
    static_assert(requires(const P& p, float s, const params& a) { eval_weight(p, s, a); });
  }
  if constexpr (has_member_exp<P>)
    static_assert(std::is_same_v<std::remove_cvref_t<decltype(std::declval<const P&>().exp)>, exp_mode>,
                  "attnkit: a policy member named `exp` must be an attnkit::exp_mode (softmax's exp precision)");
  return true;
}

/// Options only softmax-normalised policies accept (the kernel and the oracle both
/// call this, so they accept exactly the same calls).
template <class P>
void check_weight_options(const options& opt) {
  if constexpr (P::normalization != normalization::softmax) {
    if (opt.lse) fail("options.lse", "", "nullptr (LSE exists only for softmax-normalised policies)", "a pointer");
    if (!opt.sinks.empty())
      fail("options.sinks", "", "empty (sinks are a softmax feature)", opt.sinks.size());
  }
}

/// The exp precision a softmax-normalised policy asks for (fast unless it says so).
template <class P>
constexpr exp_mode exp_mode_of(const P& p) noexcept {
  if constexpr (has_member_exp<P>)
    return p.exp;
  else
    return exp_mode::fast;
}

}  // namespace detail
}  // namespace attnkit
