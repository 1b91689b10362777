#pragma once
/// \file
/// The policy interface. A policy is a small value type holding only the
/// parameters of a variant; its `family` tag picks the kernel skeleton that runs
/// it (kernel/dispatch.hpp). Adding a variant = one header here + tests.
#include <concepts>
#include <type_traits>

namespace attnkit {

/// Family tags: one per kernel skeleton.
namespace family {
struct quadratic {};    ///< tiled streaming over (query block × key block): softmax, sigmoid
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

/// Quadratic-family policies: a score -> weight map, either normalised over the
/// row (online softmax state) or used as is (weights simply add over key blocks).
template <class P>
concept quadratic_policy = policy<P> && std::same_as<typename P::family, family::quadratic> && requires {
  { P::normalized } -> std::convertible_to<bool>;
};

}  // namespace attnkit
