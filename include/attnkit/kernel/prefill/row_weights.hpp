#pragma once
/// \file
/// A strip row's logits → weights inside a chunk, merged into the row's running
/// state: softmax's online maximum and denominator, or the weight function's
/// weights and row sum (kernel/weights.hpp).
#include <algorithm>
#include <cmath>
#include <limits>

#include "../weights.hpp"
#include "call.hpp"
#include "units.hpp"

namespace attnkit::detail {

/// One row's weights over its logits x[0, n) in place (n a multiple of W), merged
/// into the row's running state: softmax takes the chunk's exact maximum (the lanes
/// of `mxv`, gathered by tile_logits_to), rescales the denominator (a vector,
/// summed once in finalize) and returns α, the factor for O; sigmoid returns 1.
template <class Arch, class Pol, class Obs, class Keys>
#if defined(__GNUC__)
[[gnu::always_inline]]
#endif
inline float row_weights(const quadratic_call<Arch, Pol, Keys>& c, block_scratch& sc, int row, float* x, index_t n,
                         const float* mxv, const weight_params_t<Pol>& wp) {
  using O = simd::ops<Arch>;
  using vf = typename O::vf;
  constexpr int W = O::width;
  constexpr bool entropy = Obs::enabled && Obs::wants_entropy;
  if constexpr (online_softmax<Pol>) {
    (void)wp;
    // The maximum leaves NaN logits out (x86 max drops NaN operands). A NaN logit
    // still makes its row NaN, as in the oracle: its weight 2^(NaN − m) is NaN, and
    // so are the denominator and O from then on; a +inf logit (the maximum) gives
    // 2^(inf − inf) = NaN the same way. Only a chunk with nothing else visible needs
    // a look for NaN, before its weights are set to zero. A NaN maximum stays NaN.
    const float m_old = sc.m[row];
    float m_new = std::max(m_old, O::reduce_max(O::load(mxv)));  // m_old NaN: stays NaN
    if (m_new == neg_inf) {
      bool nan = false;
      for (index_t k = 0; k < n; k += W) nan = O::has_nan(O::load(x + k)) || nan;
      if (!nan) {  // nothing visible yet: weights are all zero
        for (index_t k = 0; k < n; k += W) O::store(x + k, O::set1(0.0f));
        return 1.0f;
      }
      m_new = std::numeric_limits<float>::quiet_NaN();
    }
    const float alpha = m_old == m_new ? 1.0f : std::exp2(m_old - m_new);
    const vf mv = O::set1(m_new);
    vf sum = O::set1(0.0f), tv = O::set1(0.0f);
    // The exp choice is hoisted: tested inside, it is reloaded after every store.
    auto weights = [&](auto precise) {
      for (index_t k = 0; k < n; k += W) {
        const vf d = O::load(x + k) - mv;
        const vf p = decltype(precise)::value ? O::exp2_precise(d) : O::exp2_fast(d);
        sum = sum + p;
        if constexpr (entropy) tv = O::fma(p, O::max(d, O::set1(-200.0f)), tv);
        O::store(x + k, p);
      }
    };
    if (use_precise_exp(c.pol))
      weights(std::true_type{});
    else
      weights(std::false_type{});
    float* lv = sc.lvec.data() + row * W;
    if constexpr (entropy) {
      const float l_old = O::reduce_add(O::load(lv));
      const float t_old = l_old > 0.0f ? alpha * (sc.t[row] + l_old * (m_old - m_new)) : 0.0f;
      sc.t[row] = t_old + O::reduce_add(tv);
    }
    O::store(lv, O::fma(O::load(lv), O::set1(alpha), sum));
    sc.m[row] = m_new;
    return alpha;
  } else {
    vf mass = O::set1(0.0f), wlogw = O::set1(0.0f);
    weigh_logits<Arch, Pol, keeps_row_sum<Pol>, entropy>(c.pol, wp, x, n, mass, wlogw);
    if constexpr (keeps_row_sum<Pol> || entropy) {
      float* lv = sc.lvec.data() + row * W;
      O::store(lv, O::load(lv) + mass);
    }
    if constexpr (entropy) sc.t[row] += O::reduce_add(wlogw);
    (void)mxv;
    return 1.0f;
  }
}

}  // namespace attnkit::detail
