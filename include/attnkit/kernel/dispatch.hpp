#pragma once
/// \file
/// The single public entry point: attnkit::attention(policy, q, k, v, out, options
/// [, observer]). It validates everything, then hands the call to the skeleton of
/// the policy's family.
#include <type_traits>

#include "../core/dtype.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/validate.hpp"
#include "../observe/observer.hpp"
#include "../policy/family.hpp"
#include "../policy/softmax.hpp"
#include "../simd/arch.hpp"
#include "decode.hpp"
#include "feature_maps.hpp"
#include "permutation.hpp"
#include "prefill/schedule.hpp"
#include "sparse/run.hpp"

namespace attnkit {

namespace detail {
template <class Arch, class P, class KV, class Observer>
void attention_impl(const P& pol, const tensor_view<const float>& q, const tensor_view<const KV>& k,
                    const tensor_view<const KV>& v, const tensor_view<float>& out, const options& opt, Observer& obs) {
  const problem_shape shape = validate_call(q, k, v, out, opt, true, /*kernel_takes_dropout=*/true);
  workspace_lease lease(opt.workspace);
  workspace& ws = lease.get();
  if constexpr (std::is_same_v<typename P::family, family::quadratic>) {
    static_assert(check_weight_function<P>());
    check_weight_options<P>(opt);
    if constexpr (Observer::enabled) obs.begin(shape, opt);
    if (shape.q_len * shape.group() <= decode_max_rows)
      run_decode<Arch>(pol, shape, q, k, v, out, opt, obs, ws);
    else
      run_quadratic<Arch>(pol, shape, q, k, v, out, opt, obs, ws);
    if constexpr (Observer::enabled) obs.end();
  } else if constexpr (std::is_same_v<typename P::family, family::pattern>) {
    using inner = decltype(pol.inner);
    static_assert(check_weight_function<inner>());
    check_weight_options<inner>(opt);
    reject_positions(opt, "sparse patterns");
    pattern::check_arguments(pol.pattern, shape, opt);  // before the observer hears of the call
    if constexpr (Observer::enabled) obs.begin(shape, opt);
    run_sparse<Arch>(pol, shape, q, k, v, out, opt, obs, ws);
    if constexpr (Observer::enabled) obs.end();
  } else if constexpr (std::is_same_v<typename P::family, family::permutation>) {
    static_assert(std::is_same_v<P, stochastic_permutation>, "attnkit: unknown permutation-family policy");
    reject_positions(opt, "stochastic permutation attention");
    check_permutation_arguments(pol, shape);
    if constexpr (Observer::enabled) obs.begin(shape, opt);
    const auto perms = policy_permutations(pol, shape.k_len, shape.kv_heads, ws);  // kept alive for the call
    run_rank_window<Arch>(pol, *perms, shape, q, k, v, out, opt, obs, ws);
    if constexpr (Observer::enabled) obs.end();
  } else if constexpr (std::is_same_v<typename P::family, family::kernelized>) {
    static_assert(!Observer::enabled,
                  "attnkit: kernelised policies have no fused observer; use reference::attention for their "
                  "O(N^2) entropy diagnostic");
    if (opt.dropout.active())
      fail("options.dropout", "p", "0 (kernelised attention has no attention-weight matrix to drop)", opt.dropout.p);
    if constexpr (std::is_same_v<P, log_normal>)
      run_log_normal<Arch>(pol, shape, q, k, v, out, opt, ws);
    else
      run_linear<Arch>(pol, shape, q, k, v, out, opt, ws);
  } else {
    static_assert(std::is_same_v<typename P::family, family::quadratic>,
                  "attnkit::attention: no kernel skeleton for this policy family yet");
  }
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

}  // namespace attnkit
