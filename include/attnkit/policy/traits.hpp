#pragma once
/// \file
/// Facts about a policy that calls around the forward need — the backward's
/// arguments (does it take an LSE? may it regularise the entropy or drop weights?)
/// — read from the policy's family and weight function, never from its name.
#include <type_traits>

#include "family.hpp"
#include "weight.hpp"

namespace attnkit {

/// True when the policy's rows are softmax-normalised, i.e. its forward writes an
/// LSE (options.lse) and its backward takes one: softmax and other
/// normalization::softmax weight functions, sparse{…} around one, stochastic
/// permutation (softmax inside the window).
template <class P>
constexpr bool softmax_normalized() noexcept {
  using F = typename P::family;
  if constexpr (std::is_same_v<F, family::quadratic>)
    return P::normalization == normalization::softmax;
  else if constexpr (std::is_same_v<F, family::pattern>)
    return std::remove_cvref_t<decltype(std::declval<const P&>().inner)>::normalization == normalization::softmax;
  else
    return std::is_same_v<F, family::permutation>;
}

/// True for the kernelised family (linear, log-normal): no attention-weight matrix.
template <class P>
inline constexpr bool is_kernelized_v = std::is_same_v<typename P::family, family::kernelized>;

}  // namespace attnkit
