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
///   attention(), ring_attention():          q and out float; k and v both float,
///                                           both bfloat16 or both float16.
///   attention_varlen(), linear_step(),
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

/// q, k, v, out of attention(): see the file comment.
template <class Q, class K, class V, class O>
concept attention_dtypes = is_float_input_v<Q> && is_kv_storage_v<std::remove_const_t<K>> &&
                           std::is_same_v<std::remove_const_t<K>, std::remove_const_t<V>> && std::is_same_v<O, float>;

/// q, k, v, out of the fp32-only entries (attention_varlen, linear_step, ...).
template <class Q, class K, class V, class O>
concept fp32_dtypes = is_float_input_v<Q> && is_float_input_v<K> && is_float_input_v<V> && std::is_same_v<O, float>;

/// Body of attention()'s catch-all: one static_assert, for the first argument that
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

/// Body of the catch-all of attention_varlen, linear_step, attention_gated and
/// kernelized_entropy (O = float where the entry has no out).
template <class Q, class K, class V, class O>
constexpr void reject_fp32_dtypes() {
  if constexpr (!is_float_input_v<Q> || !is_float_input_v<K> || !is_float_input_v<V>)
    static_assert(dependent_false_v<Q>,
                  "attnkit: attention_varlen, linear_step, attention_gated and kernelized_entropy take float q, "
                  "k and v only (16-bit k and v: attention())");
  else
    static_assert(dependent_false_v<O>, "attnkit: out must be a mutable view of float, tensor_view<float>");
}

}  // namespace attnkit::detail
