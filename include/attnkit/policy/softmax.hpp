#pragma once
/// \file
/// Exact softmax attention: o_i = Σ_j softmax_j(s_ij) v_j, computed in one
/// streaming pass (online max and sum), never materialising the N×N matrix.
#include "family.hpp"

namespace attnkit {

/// How the kernel evaluates exp(). `fast`: degree-5 minimax polynomial (≤ 2 ulp on
/// the range the kernel uses). `precise`: xsimd::exp2 / std::exp2.
enum class exp_mode : unsigned char { fast, precise };

/// Softmax attention policy. `exp` selects the exponential implementation.
struct softmax {
  using family = attnkit::family::quadratic;
  static constexpr bool normalized = true;
  exp_mode exp = exp_mode::fast;
};

}  // namespace attnkit
