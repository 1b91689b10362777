#pragma once
/// \file
/// Feature maps resolved for one call (the `resolved_feature` protocol of
/// skeleton.hpp): linear<F>'s φ, whatever its form, and LLN's exp(α·x − shift).
/// Built-in and user maps take the same path: an elementwise map runs on the
/// call's SIMD vectors, a row map is called in float (its float instance is
/// vectorised by the helpers of simd/row_math.hpp).
#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include "../../policy/feature_map.hpp"
#include "../../simd/row_math.hpp"
#include "skeleton.hpp"

namespace attnkit::detail {

/// linear<F>'s φ, resolved for one call: D, Lq and τ fix each token's context.
template <class Arch, class F>
struct linear_feature {
  const F& phi;
  index_t D = 0, q_len = 0;
  double scale = 1.0;

  index_t dim() const { return feature::output_dim(phi, D); }

  /// The context a row map sees for token t (positions as in feature::context).
  feature::context context_of(const token_ref& t) const {
    return {t.query ? t.index + t.keys.delta : t.index, q_len, t.keys.lk, t.query, scale};
  }

  void map(const float* x, const token_ref& t, float* out) const {
    if constexpr (feature::elementwise_map<F>)
      simd::apply_lanes<Arch>([this](auto v) { return feature::detail::lanes(phi, v); }, x, out, D);
    else
      phi(x, D, context_of(t), out);
  }

  /// dx[0..D) += Jᵀ·dphi.
  void vjp(const float* x, const token_ref& t, const float* dphi, float* dx) const {
    if constexpr (feature::elementwise_map<F>)
      simd::fma_lanes<Arch>([this](auto v) { return feature::detail::derivative_lanes(phi, v); }, x, dphi, dx, D);
    else
      feature::vjp(phi, x, D, context_of(t), dphi, dx);
  }
};

/// LLN's φq(x) = exp(αx − max αx) and φk(x) = exp(βx − shift), the shift being the
/// maximum of β·k over the head's valid keys (a constant of the call).
template <class Arch>
struct lln_feature {
  static constexpr float log2e = std::numbers::log2e_v<float>;
  double coef = 1.0;
  index_t D = 0;
  const std::vector<float>* key_shift = nullptr;  ///< per (batch·Hkv + g); null for queries
  index_t kv_heads = 1;

  index_t dim() const { return D; }

  void map(const float* x, const token_ref& t, float* out) const {
    using O = simd::ops<Arch>;
    constexpr int W = O::width;
    if (!(std::abs(coef) < 1e30)) [[unlikely]] {  // tiny σ (e.g. subnormal inputs): α·x in double
      const double sh = shift_wide(x, t);
      for (index_t d = 0; d < D; ++d) out[d] = static_cast<float>(std::exp(coef * x[d] - sh));
      return;
    }
    const float a = static_cast<float>(coef);
    const float shift = shift_of(x, t);
    index_t d = 0;
    const auto av = O::set1(a * log2e), sv = O::set1(shift * log2e);
    for (; d + W <= D; d += W) O::store(out + d, O::exp2_fast(O::load(x + d) * av - sv));
    for (; d < D; ++d) out[d] = std::exp(a * x[d] - shift);
  }

  /// dx += coef·φ(x) ∘ dphi (the shifts are constants of the call).
  void vjp(const float* x, const token_ref& t, const float* dphi, float* dx) const {
    using O = simd::ops<Arch>;
    constexpr int W = O::width;
    if (!(std::abs(coef) < 1e30)) [[unlikely]] {
      const double sh = shift_wide(x, t);
      for (index_t d = 0; d < D; ++d) dx[d] += static_cast<float>(coef * std::exp(coef * x[d] - sh) * dphi[d]);
      return;
    }
    const float a = static_cast<float>(coef);
    const float shift = shift_of(x, t);
    index_t d = 0;
    const auto av = O::set1(a * log2e), sv = O::set1(shift * log2e), cv = O::set1(a);
    for (; d + W <= D; d += W) {
      const auto phi = O::exp2_fast(O::load(x + d) * av - sv);
      O::store(dx + d, O::fma(cv * phi, O::load(dphi + d), O::load(dx + d)));
    }
    for (; d < D; ++d) dx[d] += a * std::exp(a * x[d] - shift) * dphi[d];
  }

 private:
  /// The key shift of t's head, or the query's own max of α·x (x86 max keeps the
  /// second operand on NaN: NaN skipped).
  float shift_of(const float* x, const token_ref& t) const {
    using O = simd::ops<Arch>;
    constexpr int W = O::width;
    if (key_shift) return (*key_shift)[static_cast<std::size_t>(t.batch * kv_heads + t.head)];
    const float a = static_cast<float>(coef);
    index_t d = 0;
    auto mv = O::set1(-std::numeric_limits<float>::infinity());
    for (; d + W <= D; d += W) mv = O::max(O::load(x + d) * O::set1(a), mv);
    float shift = O::reduce_max(mv);
    for (; d < D; ++d) shift = std::max(shift, a * x[d]);
    return shift;
  }
  double shift_wide(const float* x, const token_ref& t) const {
    if (key_shift) return (*key_shift)[static_cast<std::size_t>(t.batch * kv_heads + t.head)];
    double sh = -std::numeric_limits<double>::infinity();
    for (index_t d = 0; d < D; ++d) sh = std::max(sh, coef * x[d]);
    return sh;
  }
};

}  // namespace attnkit::detail
