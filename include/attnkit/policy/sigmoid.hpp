#pragma once
/// \file
/// Sigmoid attention (Ramapuram et al., "Theory, Analysis, and Best Practices for
/// Sigmoid Self-Attention"): o_i = Σ_j σ(τ q_i·k_j + b) v_j, no row normalisation.
#include <cmath>
#include <cstdint>
#include <optional>

#include "family.hpp"

namespace attnkit {

/// Sigmoid attention policy. `bias` unset = the paper's default b = −ln(Lk), with
/// Lk the key length of the call (per batch when key_lengths is given).
struct sigmoid {
  using family = attnkit::family::quadratic;
  static constexpr bool normalized = false;
  std::optional<float> bias{};

  /// The bias used for a row whose key sequence has length `lk`.
  double resolved_bias(std::int64_t lk) const noexcept {
    if (bias) return *bias;
    return lk > 0 ? -std::log(static_cast<double>(lk)) : 0.0;
  }
};

}  // namespace attnkit
