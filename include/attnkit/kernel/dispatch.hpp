#pragma once
/// \file
/// The single public entry point: attnkit::attention(policy, q, k, v, out, options
/// [, observer]). It validates everything, then hands the call to the skeleton of
/// the policy's family.
#include <type_traits>

#include "../core/dtype.hpp"
#include "../core/dtype_rules.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/validate.hpp"
#include "../observe/observer.hpp"
#include "../policy/family.hpp"
#include "../policy/softmax.hpp"
#include "../simd/arch.hpp"
#include "decode.hpp"
#include "kernelized/forward.hpp"
#include "permutation.hpp"
#include "prefill/schedule.hpp"
#include "sparse/run.hpp"
#include "staging.hpp"

namespace attnkit {

namespace detail {

/// The checks of a call that need no data: the views and options (validate_call)
/// and the policy's own against the shape. attention() runs them before anything
/// else; attention_varlen runs them for every sequence before the first one runs.
/// (Kernelised policies check their options and fields first thing in their
/// kernels; those checks do not depend on the sequence lengths.)
template <class P, class Q, class KV, class O>
problem_shape check_call(const P& pol, const tensor_view<const Q>& q, const tensor_view<const KV>& k,
                         const tensor_view<const KV>& v, const tensor_view<O>& out, const options& opt) {
  const problem_shape shape = validate_call(q, k, v, out, opt, true, /*kernel_takes_dropout=*/true);
  if constexpr (std::is_same_v<typename P::family, family::quadratic>) {
    static_assert(check_weight_function<P>());
    check_weight_options<P>(opt);
  } else if constexpr (std::is_same_v<typename P::family, family::pattern>) {
    static_assert(check_weight_function<decltype(pol.inner)>());
    check_weight_options<decltype(pol.inner)>(opt);
    reject_positions(opt, "sparse patterns");
    pattern::check_arguments(pol.pattern, shape, opt);
  } else if constexpr (std::is_same_v<typename P::family, family::permutation>) {
    static_assert(std::is_convertible_v<const P&, const stochastic_permutation&>,
                  "attnkit: the permutation family has one skeleton, for stochastic_permutation");
    reject_positions(opt, "stochastic permutation attention");
    check_permutation_arguments(pol, shape);
  }
  return shape;
}

/// A validated call, in the workspace `ws`, handed to the skeleton of the policy's family.
template <class Arch, class P, class KV, class Observer>
void attention_run(const P& pol, const problem_shape& shape, const tensor_view<const float>& q,
                   const tensor_view<const KV>& k, const tensor_view<const KV>& v, const tensor_view<float>& out,
                   const options& opt, Observer& obs, workspace& ws) {
  if constexpr (std::is_same_v<typename P::family, family::quadratic>) {
    if constexpr (Observer::enabled) obs.begin(shape, opt);
    if (shape.q_len * shape.group() <= decode_max_rows)
      run_decode<Arch>(pol, shape, q, k, v, out, opt, obs, ws);
    else
      run_quadratic<Arch>(pol, shape, q, k, v, out, opt, obs, ws);
    if constexpr (Observer::enabled) obs.end();
  } else if constexpr (std::is_same_v<typename P::family, family::pattern>) {
    if constexpr (Observer::enabled) obs.begin(shape, opt);
    run_sparse<Arch>(pol, shape, q, k, v, out, opt, obs, ws);
    if constexpr (Observer::enabled) obs.end();
  } else if constexpr (std::is_same_v<typename P::family, family::permutation>) {
    const auto perms = policy_permutations(pol, shape.k_len, shape.kv_heads, ws);  // validated; kept alive for the call
    if constexpr (Observer::enabled) obs.begin(shape, opt);
    run_rank_window<Arch>(pol, *perms, shape, q, k, v, out, opt, obs, ws);
    if constexpr (Observer::enabled) obs.end();
  } else if constexpr (std::is_same_v<typename P::family, family::kernelized>) {
    static_assert(!Observer::enabled,
                  "attnkit: kernelised policies have no fused observer; use reference::attention for their "
                  "O(N^2) entropy diagnostic");
    if (opt.dropout.active())
      fail("options.dropout", "p", "0 (kernelised attention has no attention-weight matrix to drop)", opt.dropout.p);
    run_kernelized_forward<Arch>(pol, shape, q, k, v, out, opt, ws);  // the policy's engine (kernelized/engine.hpp)
  } else {
    static_assert(std::is_same_v<typename P::family, family::quadratic>,
                  "attnkit::attention: no kernel skeleton for this policy family yet");
  }
}

template <class Arch, class P, class KV, class Observer>
void attention_impl(const P& pol, const tensor_view<const float>& q, const tensor_view<const KV>& k,
                    const tensor_view<const KV>& v, const tensor_view<float>& out, const options& opt, Observer& obs) {
  const problem_shape shape = check_call(pol, q, k, v, out, opt);
  workspace_lease lease(opt.workspace);
  attention_run<Arch>(pol, shape, q, k, v, out, opt, obs, lease.get());
}

/// q, k, v of one 16-bit type T, out T or float: validated as given, then q is
/// widened and the float kernel runs (K/V stay 16-bit; see staging.hpp).
template <class Arch, class P, class T, class O, class Observer>
void attention_half_impl(const P& pol, const tensor_view<const T>& q, const tensor_view<const T>& k,
                         const tensor_view<const T>& v, const tensor_view<O>& out, const options& opt, Observer& obs) {
  const problem_shape shape = check_call(pol, q, k, v, out, opt);
  workspace_lease lease(opt.workspace);
  workspace& ws = lease.get();
  auto& staged = ws.shared().get<staging_buffers<2>>();
  const tensor_view<const float> qf = widened(q, staged.slot[0]);
  const tensor_view<float> of = float_out(out, staged.slot[1]);
  attention_run<Arch>(pol, shape, qf, k, v, of, opt, obs, ws);
  finish_out(of, out);
}
}  // namespace detail

/// Computes attention of `policy` over q [B,Hq,Lq,D], k [B,Hkv,Lk,D], v [B,Hkv,Lk,Dv]
/// into out [B,Hq,Lq,Dv]. Hq % Hkv == 0 (GQA/MQA: query head h reads kv head
/// h / (Hq/Hkv)). Throws invalid_argument_error before writing anything if an
/// argument is invalid. `Arch` is the xsimd architecture the kernel is compiled
/// for (default: the best one the compiler targets) or attnkit::simd::scalar.
/// K and V may be float, bfloat16 or float16 (accumulation is always float).
///
/// \code
///   attnkit::options opt;
///   opt.causal = attnkit::causal::bottom_right;
///   attnkit::attention(attnkit::softmax{}, q, k, v, out, opt);
/// \endcode
template <class Arch = simd::default_arch, policy P, class Observer = null_observer>
  requires observer<Observer>
void attention(const P& pol, tensor_view<const float> q, tensor_view<const float> k, tensor_view<const float> v,
               tensor_view<float> out, const options& opt = {}, Observer&& obs = {}) {
  detail::attention_impl<Arch>(pol, q, k, v, out, opt, obs);
}

/// K/V stored as bfloat16 (fp32 accumulation).
template <class Arch = simd::default_arch, policy P, class Observer = null_observer>
  requires observer<Observer>
void attention(const P& pol, tensor_view<const float> q, tensor_view<const bfloat16> k,
               tensor_view<const bfloat16> v, tensor_view<float> out, const options& opt = {}, Observer&& obs = {}) {
  detail::attention_impl<Arch>(pol, q, k, v, out, opt, obs);
}

/// K/V stored as IEEE float16 (fp32 accumulation).
template <class Arch = simd::default_arch, policy P, class Observer = null_observer>
  requires observer<Observer>
void attention(const P& pol, tensor_view<const float> q, tensor_view<const float16> k,
               tensor_view<const float16> v, tensor_view<float> out, const options& opt = {}, Observer&& obs = {}) {
  detail::attention_impl<Arch>(pol, q, k, v, out, opt, obs);
}

/// q, k and v all bfloat16 or all float16; out of that type or float. The kernel
/// computes in float (q is widened once, K/V are read as 16-bit like above) and
/// out is rounded once, to nearest even, after the kernel has finished.
template <class Arch = simd::default_arch, policy P, class Q, class K, class V, class O,
          class Observer = null_observer>
  requires observer<Observer> && detail::half_dtypes<Q, K, V, O>
void attention(const P& pol, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> out,
               const options& opt = {}, Observer&& obs = {}) {
  using T = std::remove_const_t<Q>;
  detail::attention_half_impl<Arch>(pol, tensor_view<const T>(q), tensor_view<const T>(k), tensor_view<const T>(v),
                                    out, opt, obs);
}

/// Any other element types: a compile error that states the rule in one line
/// (core/dtype_rules.hpp). Never viable for a valid call, so it cannot take one.
template <class Arch = simd::default_arch, policy P, class Q, class K, class V, class O,
          class Observer = null_observer>
  requires(!detail::io_dtypes<Q, K, V, O>)
void attention(const P&, tensor_view<Q>, tensor_view<K>, tensor_view<V>, tensor_view<O>, const options& = {},
               Observer&& = {}) {
  detail::reject_io_dtypes<Q, K, V, O>();
}

}  // namespace attnkit
