#pragma once
/// \file
/// Units and traits the prefill and decode skeletons share: logits are kept in
/// log2 units for softmax (exp2 is the cheap exponential; τ·log2 e is folded into
/// Q) and in natural units for every other weight function, which the kernels
/// evaluate as its author wrote it.
#include <limits>
#include <numbers>

#include "../../policy/weight.hpp"

namespace attnkit::detail {

inline constexpr float log2e = std::numbers::log2e_v<float>;
inline constexpr float ln2 = std::numbers::ln2_v<float>;
inline constexpr float neg_inf = -std::numeric_limits<float>::infinity();

/// Softmax rows keep an online maximum (and LSE); every other weight function
/// evaluates weight(s) as written.
template <class Pol>
inline constexpr bool online_softmax = Pol::normalization == normalization::softmax;
/// Rows that keep the sum of their weights (the divisor of normalised rows).
template <class Pol>
inline constexpr bool keeps_row_sum = Pol::normalization != normalization::none;
/// Units of the kernel's logits: log2 for softmax (exp2 is the cheap exponential;
/// τ·log2 e is folded into Q), natural for every other weight function.
template <class Pol>
inline constexpr float logit_unit = online_softmax<Pol> ? std::numbers::log2e_v<float> : 1.0f;

template <class Pol>
constexpr bool use_precise_exp(const Pol& pol) {
  return exp_mode_of(pol) == exp_mode::precise;
}

}  // namespace attnkit::detail
