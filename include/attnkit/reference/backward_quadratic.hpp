#pragma once
/// \file
/// The float64 backward of the quadratic family (softmax, sigmoid, any weight
/// function) and of the policies built on it (sparse patterns, stochastic
/// permutation). Per head, everything is recomputed in float64 from q, k, v and the
/// options — logits, weights, output — so the result is the exact gradient of the
/// function reference::attention computes; `out` and `lse` are validated, not read.
///
/// Per row i with visible keys J_i, applied weights a_ij (before dropout), dropout
/// factors m_ij (1/(1−p) or 0; 1 without dropout), o_i = Σ_j a_ij m_ij v_j:
///   dv_j  += a_ij m_ij dO_i
///   dA_ij  = m_ij (dO_i · v_j),   D_i = Σ_j a_ij dA_ij  (= dO_i · o_i)
///   softmax: a = e^{s − lse}        ds_ij = a_ij (dA_ij − D_i),  d sink_h += −e^{sink − lse}·D_i
///   sum:     a = w(s)/Z, Z = Σ_j w  ds_ij = w'(s_ij)/Z_i · (dA_ij − D_i)
///   none:    a = w(s)               ds_ij = w'(s_ij) · dA_ij
/// plus λ·∂R/∂s_ij of the regulariser, then the chain rule through the logit
/// builder (backward_common.hpp: logits_backward). Rows with no visible key (or a
/// sum-normalised row whose weights sum to 0) output a constant: their gradient is
/// 0, whatever dout holds there.
#include <vector>

#include "backward_common.hpp"
#include "quadratic.hpp"

namespace attnkit::reference::detail {

/// dS of head (b, h) from its final logits L; adds dv (and d sinks) to the buffers.
template <class W, class TV, class TdO>
void head_dS(const W& pol, const tensor_view<TV>& v, const tensor_view<TdO>& dout, const options& opt,
             const problem_shape& sh, index_t b, index_t h, const std::vector<double>& L, grads& G,
             std::vector<double>& dsinks, std::vector<double>& dS) {
  const index_t Lq = sh.q_len, Lk = sh.k_len, Dv = sh.value_dim, g = h / sh.group();
  const batch_keys bk = keys_of_batch(opt, b, Lq, Lk);
  const auto wp = attnkit::detail::resolve_weight(pol, weight_context{bk.lk, Lq, sh.head_dim});
  const dropout_mask drop(opt.dropout);
  const bool has_sink = !opt.sinks.empty();
  dS.assign(static_cast<std::size_t>(Lq * Lk), 0.0);
  std::vector<double> dO(static_cast<std::size_t>(Dv)), vj(static_cast<std::size_t>(Dv)), a, dA, m;
  for (index_t i = 0; i < Lq; ++i) {
    const double* s = L.data() + i * Lk;
    std::vector<index_t> J;
    for (index_t j = 0; j < Lk; ++j)
      if (!(s[j] == ninf)) J.push_back(j);
    if (J.empty()) continue;  // constant output (0 or NaN): no gradient
    // Applied weights a (before dropout) and the normaliser.
    a.assign(J.size(), 0.0);
    double Z = 1.0, sink_prob = 0.0;
    if constexpr (W::normalization == normalization::softmax) {
      const double sink = has_sink ? static_cast<double>(opt.sinks[static_cast<std::size_t>(h)]) : ninf;
      double mx = sink;
      for (index_t j : J) mx = std::max(mx, s[j]);
      double l = has_sink ? std::exp(sink - mx) : 0.0;
      for (index_t j : J) l += std::exp(s[j] - mx);
      const double lse = mx + std::log(l);
      for (std::size_t x = 0; x < J.size(); ++x) a[x] = std::exp(s[J[x]] - lse);
      if (has_sink) sink_prob = std::exp(sink - lse);
    } else {
      Z = 0.0;
      for (std::size_t x = 0; x < J.size(); ++x) Z += (a[x] = attnkit::detail::eval_weight(pol, s[J[x]], wp));
      if constexpr (W::normalization == normalization::sum) {
        if (Z == 0.0) continue;  // the row outputs the masked-row fill: constant
        for (auto& e : a) e /= Z;
      }
    }
    // dv, dA and D_i.
    load(dout, b, h, i, dO.data());
    dA.assign(J.size(), 0.0);
    m.assign(J.size(), 1.0);
    double Di = 0.0;
    for (std::size_t x = 0; x < J.size(); ++x) {
      m[x] = drop.factor(b, h, i, J[x]);
      load(v, b, g, J[x], vj.data());
      double* gv = G.dv(b, g, J[x]);
      double dov = 0.0;
      for (index_t d = 0; d < Dv; ++d) {
        gv[d] += a[x] * m[x] * dO[static_cast<std::size_t>(d)];
        dov += dO[static_cast<std::size_t>(d)] * vj[static_cast<std::size_t>(d)];
      }
      dA[x] = m[x] * dov;
      Di += a[x] * dA[x];
    }
    // dS of the row.
    double* ds = dS.data() + i * Lk;
    for (std::size_t x = 0; x < J.size(); ++x) {
      const index_t j = J[x];
      if constexpr (W::normalization == normalization::softmax)
        ds[j] = a[x] * (dA[x] - Di);
      else if constexpr (W::normalization == normalization::sum)
        ds[j] = attnkit::detail::eval_derivative(pol, s[j], wp) / Z * (dA[x] - Di);
      else
        ds[j] = attnkit::detail::eval_derivative(pol, s[j], wp) * dA[x];
    }
    if (has_sink) dsinks[static_cast<std::size_t>(h)] -= sink_prob * Di;
  }
}

/// The backward of a quadratic-family call: `restrict(b, h, L)` masks pattern /
/// permutation-window pairs exactly as the forward's run_quadratic does.
template <class W, class TQ, class TK, class TV, class TdO, class Restrict>
backward_result run_quadratic_backward(const W& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                                       const tensor_view<TV>& v, const tensor_view<TdO>& dout, const options& opt,
                                       const backward_options& bo, const problem_shape& sh, grads& G,
                                       Restrict&& restrict) {
  static_assert(attnkit::detail::check_weight_function<W>());
  if constexpr (W::normalization != normalization::softmax)
    static_assert(attnkit::detail::has_member_derivative<W>,
                  "attnkit::reference::attention_backward: the weight function needs "
                  "`template <class V> V derivative(V s[, const Params&]) const` (dw/ds)");
  backward_result res;
  if (!opt.sinks.empty()) res.dsinks.assign(static_cast<std::size_t>(sh.q_heads), 0.0);
  if (opt.bias.data) {
    const auto& e = opt.bias.extent;
    res.dbias.assign(static_cast<std::size_t>(e[0] * e[1] * e[2] * e[3]), 0.0);
  }
  auto logits_of = [&](index_t b, index_t h, std::vector<double>& L) {
    head_logits(q, k, opt, sh, b, h, L);
    restrict(b, h, L);
  };
  std::vector<double> R;  // λ·∂R/∂s of the whole call, [B, Hq, Lq, Lk]
  res.regularizer = regularizer_of_logits(sh, bo.reg, logits_of, bo.reg.active() ? &R : nullptr,
                                          bo.reg.kind == regularizer_kind::entropy_band ? &res.dtheta : nullptr);
  const auto head = static_cast<std::size_t>(sh.q_len * sh.k_len);
  std::vector<double> L, dS;
  for (index_t b = 0; b < sh.batch; ++b)
    for (index_t h = 0; h < sh.q_heads; ++h) {
      logits_of(b, h, L);
      head_dS(pol, v, dout, opt, sh, b, h, L, G, res.dsinks, dS);
      if (!R.empty()) {
        const std::size_t off = static_cast<std::size_t>(b * sh.q_heads + h) * head;
        for (std::size_t x = 0; x < head; ++x) dS[x] += R[off + x];
      }
      logits_backward(q, k, opt, sh, b, h, dS, G, res.dbias);
    }
  return res;
}

}  // namespace attnkit::reference::detail
