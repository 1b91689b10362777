#pragma once
/// \file
/// Exact softmax attention: o_i = Σ_j softmax_j(s_ij) v_j, computed in one
/// streaming pass (online max and sum), never materialising the N×N matrix.
#include "weight.hpp"

namespace attnkit {

/// Softmax attention policy: the weight function e^s with rows normalised
/// (normalization::softmax). `exp` selects the exponential implementation.
struct softmax {
  using family = attnkit::family::quadratic;
  static constexpr attnkit::normalization normalization = attnkit::normalization::softmax;
  exp_mode exp = exp_mode::fast;
};

}  // namespace attnkit
