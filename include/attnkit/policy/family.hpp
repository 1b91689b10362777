#pragma once
/// \file
/// The policy interface. A policy is a small value type holding only the
/// parameters of a variant; its `family` tag picks the kernel skeleton that runs
/// it (api/attention.hpp). Each family's contract is a concept in its own header:
///   quadratic  — a weight function (policy/weight.hpp): softmax, sigmoid, yours;
///   pattern    — a key-set pattern around a weight function (policy/pattern.hpp);
///   kernelized — a feature map in the linear-attention skeleton (policy/linear.hpp);
///   permutation — permute → windowed attention → unpermute.
#include <concepts>
#include <type_traits>

namespace attnkit {

/// Family tags: one per kernel skeleton.
namespace family {
struct quadratic {};    ///< tiled streaming over (query block × key block): a weight function
struct kernelized {};   ///< feature maps + running state: linear, log-normal
struct pattern {};      ///< block/element selection wrapped around a quadratic policy: sparse
struct permutation {};  ///< permute -> windowed attention -> unpermute
}  // namespace family

/// Any attention policy: a copyable value type naming its family.
template <class P>
concept policy = std::copyable<P> && requires { typename P::family; };

/// Trait form of `policy`, for static_assert and SFINAE users.
template <class P>
inline constexpr bool is_policy_v = policy<P>;

/// How the kernels evaluate softmax's exp(). `fast`: degree-5 minimax polynomial
/// (≤ 2 ulp on the range the kernel uses). `precise`: xsimd::exp2 / std::exp2.
enum class exp_mode : unsigned char { fast, precise };

}  // namespace attnkit
