#pragma once
/// \file
/// Which element types the public entry points accept, as concepts, and the
/// diagnostics for everything else. Each entry has its valid overloads plus one
/// catch-all overload, constrained to the *invalid* combinations, whose body is
/// one of the reject_* functions below: a dtype mistake is then a single
/// "static assertion failed: attnkit: ..." line that states the rule, instead of
/// a page of overload-resolution notes ("cannot convert ... tensor_view<const float>").
///
/// The rules today:
///   attention(), attention_varlen(), linear_step(), attention_backward() and
///   attention_with_kv_cache() (for q and out; the cache has its own types):
///     either q float, k and v both float, both bfloat16 or both float16, out float;
///     or q, k and v all bfloat16 or all float16, out float or q's type
///     (a 16-bit call computes in float: kernel/staging.hpp).
///   ring_attention():                       q and out float; k and v both float,
///                                           both bfloat16 or both float16.
///   attention_gated(), kernelized_entropy(): q, k, v (and out, gates) float.
/// Inputs may be views of const or mutable elements; out must be mutable.
#include <type_traits>

#include "dtype.hpp"
#include "tensor_view.hpp"

namespace attnkit::detail {

template <class... T>
inline constexpr bool dependent_false_v = false;

template <class T>
inline constexpr bool is_float_input_v = std::is_same_v<std::remove_const_t<T>, float>;

/// q, k, v, out of a call with a float q (attention(), ring_attention()): see the file comment.
template <class Q, class K, class V, class O>
concept attention_dtypes = is_float_input_v<Q> && is_kv_storage_v<std::remove_const_t<K>> &&
                           std::is_same_v<std::remove_const_t<K>, std::remove_const_t<V>> && std::is_same_v<O, float>;

template <class T>
inline constexpr bool is_half_v = std::is_same_v<T, bfloat16> || std::is_same_v<T, float16>;

/// q, k, v, out of a call whose q is 16-bit: q, k, v one 16-bit type; out float or that type.
template <class Q, class K, class V, class O>
concept half_dtypes = is_half_v<std::remove_const_t<Q>> && std::is_same_v<std::remove_const_t<Q>, std::remove_const_t<K>> &&
                      std::is_same_v<std::remove_const_t<Q>, std::remove_const_t<V>> &&
                      (std::is_same_v<O, float> || std::is_same_v<O, std::remove_const_t<Q>>);

/// Every valid combination of attention() and the entries that share its rule.
template <class Q, class K, class V, class O>
concept io_dtypes = attention_dtypes<Q, K, V, O> || half_dtypes<Q, K, V, O>;

/// The rule of io_dtypes, quoted by every diagnostic below (string literals concatenate).
#define ATTNKIT_IO_RULE                                                                                    \
  " (rule: q, k, v float; or q float with k and v both bfloat16 or both float16; or q, k, v all bfloat16 " \
  "or all float16; out float, or q's type when q is 16-bit)"

/// Body of the catch-all of attention(), attention_varlen(), linear_step(),
/// attention_backward() and attention_with_kv_cache() (K = V = Q there): one
/// static_assert for the first argument that breaks io_dtypes.
template <class Q, class K, class V, class O>
constexpr void reject_io_dtypes() {
  using q_t = std::remove_const_t<Q>;
  if constexpr (!is_float_input_v<Q> && !is_half_v<q_t>)
    static_assert(dependent_false_v<Q>, "attnkit: q must be a view of float, bfloat16 or float16" ATTNKIT_IO_RULE);
  else if constexpr (!is_kv_storage_v<std::remove_const_t<K>> || !is_kv_storage_v<std::remove_const_t<V>>)
    static_assert(dependent_false_v<K>, "attnkit: k and v must be views of float, bfloat16 or float16" ATTNKIT_IO_RULE);
  else if constexpr (!std::is_same_v<std::remove_const_t<K>, std::remove_const_t<V>>)
    static_assert(dependent_false_v<K>, "attnkit: k and v must have the same element type" ATTNKIT_IO_RULE);
  else if constexpr (is_half_v<q_t> && !std::is_same_v<q_t, std::remove_const_t<K>>)
    static_assert(dependent_false_v<K>, "attnkit: a 16-bit q needs k and v of its own type" ATTNKIT_IO_RULE);
  else if constexpr (is_half_v<q_t>)
    static_assert(dependent_false_v<O>,
                  "attnkit: out must be a mutable view of float or of q's 16-bit type" ATTNKIT_IO_RULE);
  else
    static_assert(dependent_false_v<O>, "attnkit: out must be a mutable view of float, tensor_view<float>" ATTNKIT_IO_RULE);
}

/// q, k, v, out of the fp32-only entries (attention_varlen, linear_step, ...).
template <class Q, class K, class V, class O>
concept fp32_dtypes = is_float_input_v<Q> && is_float_input_v<K> && is_float_input_v<V> && std::is_same_v<O, float>;

/// Body of ring_attention()'s catch-all: one static_assert, for the first argument that
/// breaks the rule (the others are discarded branches and never instantiated).
template <class Q, class K, class V, class O>
constexpr void reject_attention_dtypes() {
  if constexpr (!is_float_input_v<Q>)
    static_assert(dependent_false_v<Q>,
                  "attnkit: q must be a view of float (rule: q and out float; k and v both float, both bfloat16 "
                  "or both float16)");
  else if constexpr (!is_kv_storage_v<std::remove_const_t<K>> || !is_kv_storage_v<std::remove_const_t<V>>)
    static_assert(dependent_false_v<K>,
                  "attnkit: k and v must be views of float, bfloat16 or float16 (rule: q and out float; k and v "
                  "both float, both bfloat16 or both float16)");
  else if constexpr (!std::is_same_v<std::remove_const_t<K>, std::remove_const_t<V>>)
    static_assert(dependent_false_v<K>,
                  "attnkit: k and v must have the same element type (rule: q and out float; k and v both float, "
                  "both bfloat16 or both float16)");
  else
    static_assert(dependent_false_v<O>,
                  "attnkit: out must be a mutable view of float, tensor_view<float> (rule: q and out float; k and "
                  "v both float, both bfloat16 or both float16)");
}

/// Body of the catch-all of attention_gated and kernelized_entropy (O = float
/// where the entry has no out).
template <class Q, class K, class V, class O>
constexpr void reject_fp32_dtypes() {
  if constexpr (!is_float_input_v<Q> || !is_float_input_v<K> || !is_float_input_v<V>)
    static_assert(dependent_false_v<Q>,
                  "attnkit: attention_gated and kernelized_entropy take float q, k and v only (16-bit inputs: "
                  "attention(), attention_varlen(), linear_step())");
  else
    static_assert(dependent_false_v<O>, "attnkit: out must be a mutable view of float, tensor_view<float>");
}

}  // namespace attnkit::detail
