#pragma once
/// \file
/// Sigmoid attention (Ramapuram et al., "Theory, Analysis, and Best Practices for
/// Sigmoid Self-Attention"): o_i = Σ_j σ(τ q_i·k_j + b) v_j, no row normalisation.
#include <cmath>
#include <cstdint>
#include <optional>

#include "weight.hpp"

namespace attnkit {

/// Sigmoid attention policy: the weight function σ(s + b), rows not normalised.
/// `bias` unset = the paper's default b = −ln(Lk), with Lk the key length of the
/// call (per batch when key_lengths is given).
struct sigmoid {
  using family = attnkit::family::quadratic;
  static constexpr attnkit::normalization normalization = attnkit::normalization::none;
  std::optional<float> bias{};

  struct params {
    double bias;
  };
  params resolve(const weight_context& c) const noexcept { return {resolved_bias(c.key_length)}; }
  template <class V>
  V weight(V s, const params& p) const noexcept {
    return math::sigmoid(s + V(p.bias));
  }
  template <class V>
  V derivative(V s, const params& p) const noexcept {
    const V w = weight(s, p);
    return w * (V(1) - w);
  }

  /// The default bias reads the key length (policy/weight.hpp, weight_uses_key_length).
  bool uses_key_length() const noexcept { return !bias; }

  /// The bias used for a row whose key sequence has length `lk`.
  double resolved_bias(std::int64_t lk) const noexcept {
    if (bias) return *bias;
    return lk > 0 ? -std::log(static_cast<double>(lk)) : 0.0;
  }
};

}  // namespace attnkit
