#pragma once
/// \file
/// The single public entry point: attnkit::attention(policy, q, k, v, out, options
/// [, observer]). It validates everything, then hands the call to the skeleton of
/// the policy's family.
#include <type_traits>

#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/validate.hpp"
#include "../observe/observer.hpp"
#include "../policy/family.hpp"
#include "../policy/softmax.hpp"
#include "../simd/arch.hpp"
#include "decode.hpp"
#include "quadratic.hpp"

namespace attnkit {

/// Computes attention of `policy` over q [B,Hq,Lq,D], k [B,Hkv,Lk,D], v [B,Hkv,Lk,Dv]
/// into out [B,Hq,Lq,Dv]. Hq % Hkv == 0 (GQA/MQA: query head h reads kv head
/// h / (Hq/Hkv)). Throws invalid_argument_error before writing anything if an
/// argument is invalid. `Arch` is the xsimd architecture the kernel is compiled
/// for (default: the best one the compiler targets) or attnkit::simd::scalar.
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
  const problem_shape shape = validate_call(q, k, v, out, opt);
  if constexpr (std::is_same_v<typename P::family, family::quadratic>) {
    static_assert(quadratic_policy<P>, "attnkit: a quadratic-family policy must define `static constexpr bool normalized`");
    if constexpr (!P::normalized)
      if (opt.lse) detail::fail("options.lse", "", "nullptr (LSE exists only for normalised policies)", "a pointer");
    if constexpr (!std::is_same_v<P, softmax>)
      if (!opt.sinks.empty()) detail::fail("options.sinks", "", "empty (sinks are a softmax feature)", opt.sinks.size());
    if constexpr (std::remove_cvref_t<Observer>::enabled) obs.begin(shape, opt);
    if (shape.q_len * shape.group() <= detail::decode_max_rows)
      detail::run_decode<Arch>(pol, shape, q, k, v, out, opt, obs);
    else
      detail::run_quadratic<Arch>(pol, shape, q, k, v, out, opt, obs);
    if constexpr (std::remove_cvref_t<Observer>::enabled) obs.end();
  } else {
    static_assert(std::is_same_v<typename P::family, family::quadratic>,
                  "attnkit::attention: no kernel skeleton for this policy family yet");
  }
}

}  // namespace attnkit
