#pragma once
/// \file
/// The float64 backward oracle: exact gradients of the functions reference::attention
/// computes, for every variant, with the argument order of the backward contract
/// (docs/training.md):
///
/// \code
///   auto r = attnkit::reference::attention_backward(attnkit::softmax{}, q, k, v, out, lse, dout,
///                                                   dq, dk, dv, opt, bopt);
/// \endcode
///
/// - q, k, v, out, dout: views of float, double, bfloat16 or float16, any strides;
///   dq, dk, dv: float or double views with the extents of q, k, v, overwritten
///   (added with backward_options::accumulate). GQA: dk, dv sum over the group.
/// - lse: the forward's options.lse ([B, Hq, Lq]) for softmax-normalised policies,
///   nullptr for the others. The oracle recomputes logits, LSE and output in float64
///   from q, k, v and the options: `out` and `lse` are validated (shape, presence,
///   aliasing), not read, so the result does not inherit a kernel's rounding.
/// - Every element of dq, dk, dv is written; rows with no visible key, keys no query
///   sees and padded keys get exactly 0.
/// - Not differentiated (constants of the call): masks, key lengths, causal/window
///   bounds, ALiBi slopes, the dropout mask, data-dependent selections (top_k,
///   flex_prefill blocks) and permutations, linear decay and feature-map positions /
///   projections, LLN's α, β and max shifts. d sinks and d bias are returned (and
///   written to backward_options.dsinks / dbias when given).
/// - backward_options::reg adds ∂(λR)/∂s (regularizer_value gives λR).
#include <string>
#include <vector>

#include "backward_common.hpp"
#include "backward_kernelized.hpp"
#include "backward_quadratic.hpp"
#include "kernelized.hpp"
#include "quadratic.hpp"

namespace attnkit::reference {

namespace detail {
template <class TQ, class TK, class TV, class TO, class TdO, class GQ, class GK, class GV>
problem_shape validate_backward(const backward_policy_facts& f, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                                const tensor_view<TV>& v, const tensor_view<TO>& out, const float* lse,
                                const tensor_view<TdO>& dout, const tensor_view<GQ>& dq, const tensor_view<GK>& dk,
                                const tensor_view<GV>& dv, const options& opt, const backward_options& bo) {
  static_assert(std::is_same_v<GQ, float> || std::is_same_v<GQ, double>, "dq must be a float or double view");
  static_assert(std::is_same_v<GK, float> || std::is_same_v<GK, double>, "dk must be a float or double view");
  static_assert(std::is_same_v<GV, float> || std::is_same_v<GV, double>, "dv must be a float or double view");
  return validate_backward_call(q, k, v, out, lse, dout, dq, dk, dv, opt, bo, f, /*require_contiguous_dim=*/false);
}

/// Runs a quadratic-family backward after validation and writes the outputs.
template <class W, class TQ, class TK, class TV, class TdO, class GQ, class GK, class GV, class Restrict>
backward_result quadratic_backward(const W& pol, const problem_shape& sh, const tensor_view<TQ>& q,
                                   const tensor_view<TK>& k, const tensor_view<TV>& v, const tensor_view<TdO>& dout,
                                   const tensor_view<GQ>& dq, const tensor_view<GK>& dk, const tensor_view<GV>& dv,
                                   const options& opt, const backward_options& bo, Restrict&& restrict) {
  attnkit::detail::check_weight_options<W>(opt);
  grads G(sh);
  backward_result res = run_quadratic_backward(pol, q, k, v, dout, opt, bo, sh, G, restrict);
  write_gradients(G, dq, dk, dv, bo, res);
  return res;
}
}  // namespace detail

/// Backward of a quadratic-family policy: softmax, sigmoid, or a user's weight
/// function (which then needs `derivative`).
template <quadratic_weight W, detail::element TQ, detail::element TK, detail::element TV, detail::element TO,
          detail::element TdO, class GQ, class GK, class GV>
backward_result attention_backward(const W& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                                   const tensor_view<TV>& v, const tensor_view<TO>& out, const float* lse,
                                   const tensor_view<TdO>& dout, const tensor_view<GQ>& dq, const tensor_view<GK>& dk,
                                   const tensor_view<GV>& dv, const options& opt = {},
                                   const backward_options& bo = {}) {
  const problem_shape sh =
      detail::validate_backward(detail::facts_of<W>("this weight function"), q, k, v, out, lse, dout, dq, dk, dv, opt, bo);
  return detail::quadratic_backward(pol, sh, q, k, v, dout, dq, dk, dv, opt, bo,
                                    [](index_t, index_t, std::vector<double>&) {});
}

/// Backward of sparse attention. Static patterns: their allowed set is a constant.
/// top_k and flex_prefill: the selection is recomputed as the forward makes it and
/// treated as a constant (the gradient of the selected keys' attention; no gradient
/// flows through the choice, which is piecewise constant).
template <class P, class Inner, detail::element TQ, detail::element TK, detail::element TV, detail::element TO,
          detail::element TdO, class GQ, class GK, class GV>
backward_result attention_backward(const sparse<P, Inner>& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                                   const tensor_view<TV>& v, const tensor_view<TO>& out, const float* lse,
                                   const tensor_view<TdO>& dout, const tensor_view<GQ>& dq, const tensor_view<GK>& dk,
                                   const tensor_view<GV>& dv, const options& opt = {},
                                   const backward_options& bo = {}) {
  const problem_shape sh = detail::validate_backward(detail::facts_of<sparse<P, Inner>>("sparse attention"), q, k, v,
                                                     out, lse, dout, dq, dk, dv, opt, bo);
  pattern::check_arguments(pol.pattern, sh, opt);
  return detail::quadratic_backward(pol.inner, sh, q, k, v, dout, dq, dk, dv, opt, bo,
                                    [&](index_t b, index_t h, std::vector<double>& L) {
                                      detail::restrict_to_pattern(pol.pattern, q, k, opt, sh, b, h, L);
                                    });
}

/// Backward of stochastic permutation attention with explicit permutations (one per
/// kv head, or one shared); the permutations are constants.
template <detail::element TQ, detail::element TK, detail::element TV, detail::element TO, detail::element TdO,
          class GQ, class GK, class GV>
backward_result attention_backward(const stochastic_permutation& pol, const std::vector<std::vector<index_t>>& perms,
                                   const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                                   const tensor_view<TO>& out, const float* lse, const tensor_view<TdO>& dout,
                                   const tensor_view<GQ>& dq, const tensor_view<GK>& dk, const tensor_view<GV>& dv,
                                   const options& opt = {}, const backward_options& bo = {}) {
  const problem_shape sh = detail::validate_backward(detail::facts_of<stochastic_permutation>("stochastic permutation"),
                                                     q, k, v, out, lse, dout, dq, dk, dv, opt, bo);
  attnkit::detail::check_permutation_arguments(pol, sh);
  detail::check_permutations(perms, sh);
  return detail::quadratic_backward(softmax{}, sh, q, k, v, dout, dq, dk, dv, opt, bo,
                                    [&](index_t, index_t h, std::vector<double>& L) {
                                      const auto& p = perms.size() == 1 ? perms[0] : perms[static_cast<std::size_t>(h / sh.group())];
                                      detail::rank_window(p, pol.kind, pol.window, sh.k_len, L);
                                    });
}

/// Backward of stochastic permutation attention with the policy's seeded permutations.
template <detail::element TQ, detail::element TK, detail::element TV, detail::element TO, detail::element TdO,
          class GQ, class GK, class GV>
backward_result attention_backward(const stochastic_permutation& pol, const tensor_view<TQ>& q,
                                   const tensor_view<TK>& k, const tensor_view<TV>& v, const tensor_view<TO>& out,
                                   const float* lse, const tensor_view<TdO>& dout, const tensor_view<GQ>& dq,
                                   const tensor_view<GK>& dk, const tensor_view<GV>& dv, const options& opt = {},
                                   const backward_options& bo = {}) {
  return attention_backward(pol, permutations_of(pol, k.seq(), k.heads()), q, k, v, out, lse, dout, dq, dk, dv, opt, bo);
}

/// Backward of linear attention (every feature map with a `vjp`; see
/// backward_kernelized.hpp for the formulas and the constants).
template <class F, detail::element TQ, detail::element TK, detail::element TV, detail::element TO,
          detail::element TdO, class GQ, class GK, class GV>
backward_result attention_backward(const linear<F>& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                                   const tensor_view<TV>& v, const tensor_view<TO>& out, const float* lse,
                                   const tensor_view<TdO>& dout, const tensor_view<GQ>& dq, const tensor_view<GK>& dk,
                                   const tensor_view<GV>& dv, const options& opt = {},
                                   const backward_options& bo = {}) {
  const problem_shape sh = detail::validate_backward(detail::facts_of<linear<F>>("linear attention"), q, k, v, out, lse,
                                                     dout, dq, dk, dv, opt, bo);
  detail::check_linear(pol, opt, sh);
  const index_t M = detail::feature_dim(pol.phi, sh.head_dim), Lq = sh.q_len, Lk = sh.k_len, D = sh.head_dim;
  const double tau = resolved_scale(opt, D);
  detail::grads G(sh);
  std::vector<double> phq, phk, W, dphq, dphk, x(static_cast<std::size_t>(D));
  std::vector<index_t> prefix;
  for (index_t b = 0; b < sh.batch; ++b)
    for (index_t h = 0; h < sh.q_heads; ++h) {
      const index_t g = h / sh.group();
      const batch_keys bk = keys_of_batch(opt, b, Lq, Lk);
      const double lambda = pol.decay.empty() ? 1.0 : static_cast<double>(pol.decay[static_cast<std::size_t>(h)]);
      detail::linear_features(pol.phi, q, k, opt, sh, b, h, M, phq, phk);
      detail::kernel_weights(phq, phk, M, opt, bk, Lq, Lk, lambda, W, prefix);
      const auto A = detail::normalize_rows(W, prefix, Lk, pol.normalize, pol.eps);
      const auto dA = detail::head_dA(A, prefix, v, dout, sh, b, h, G);
      const auto dW = detail::normalizer_backward(A, W, prefix, Lk, pol.normalize, pol.eps, 1.0, dA);
      detail::features_backward(dW, phq, phk, prefix, Lk, M, lambda, dphq, dphk);
      for (index_t i = 0; i < Lq; ++i) {
        detail::load(q, b, h, i, x.data());
        detail::apply_feature_vjp(pol.phi, x.data(), D, feature::context{i + bk.delta, Lq, bk.lk, true, tau},
                                  dphq.data() + i * M, M, G.dq(b, h, i));
      }
      for (index_t j = 0; j < bk.lk; ++j) {
        detail::load(k, b, g, j, x.data());
        detail::apply_feature_vjp(pol.phi, x.data(), D, feature::context{j, Lq, bk.lk, false, tau},
                                  dphk.data() + j * M, M, G.dk(b, g, j));
      }
    }
  backward_result res;
  detail::write_gradients(G, dq, dk, dv, bo, res);
  return res;
}

namespace detail {
/// LLN+Diag's block-diagonal softmax half of head (b, h): adds ½·P to A (the applied
/// weights) when dA is null; otherwise back-propagates dP = ½·dA into dq, dk.
template <class TQ, class TK>
void lln_diag(const tensor_view<TQ>& q, const tensor_view<TK>& k, const options& opt, const problem_shape& sh,
              index_t b, index_t h, const std::vector<index_t>& prefix, std::vector<double>* A,
              const std::vector<double>* dA, grads* G) {
  const index_t Lq = sh.q_len, Lk = sh.k_len, D = sh.head_dim, g = h / sh.group();
  const batch_keys bk = keys_of_batch(opt, b, Lq, Lk);
  const double tau = resolved_scale(opt, D);
  std::vector<double> x(static_cast<std::size_t>(D)), y(static_cast<std::size_t>(D));
  for (index_t i = 0; i < Lq; ++i) {
    const index_t blk = floor_div(i + bk.delta, D), p = prefix[static_cast<std::size_t>(i)];
    load(q, b, h, i, x.data());
    std::vector<double> s(static_cast<std::size_t>(Lk), ninf), P(static_cast<std::size_t>(Lk), 0.0);
    double m = ninf;
    for (index_t j = 0; j < p; ++j) {
      if (j / D != blk) continue;
      load(k, b, g, j, y.data());
      double t = 0;
      for (index_t d = 0; d < D; ++d) t += x[static_cast<std::size_t>(d)] * y[static_cast<std::size_t>(d)];
      s[static_cast<std::size_t>(j)] = tau * t;
      m = std::max(m, tau * t);
    }
    if (m == ninf) continue;  // no key in the block: this half adds 0
    double l = 0;
    for (index_t j = 0; j < p; ++j)
      if (s[static_cast<std::size_t>(j)] != ninf) l += std::exp(s[static_cast<std::size_t>(j)] - m);
    double Di = 0;
    for (index_t j = 0; j < p; ++j) {
      const auto u = static_cast<std::size_t>(j);
      if (s[u] == ninf) continue;
      P[u] = std::exp(s[u] - m) / l;
      if (A) (*A)[static_cast<std::size_t>(i * Lk + j)] += 0.5 * P[u];
      if (dA) Di += P[u] * 0.5 * (*dA)[static_cast<std::size_t>(i * Lk + j)];
    }
    if (!dA) continue;
    double* gq = G->dq(b, h, i);
    for (index_t j = 0; j < p; ++j) {
      const auto u = static_cast<std::size_t>(j);
      if (s[u] == ninf) continue;
      const double ds = P[u] * (0.5 * (*dA)[static_cast<std::size_t>(i * Lk + j)] - Di);
      load(k, b, g, j, y.data());
      double* gk = G->dk(b, g, j);
      for (index_t d = 0; d < D; ++d) {
        gq[d] += tau * ds * y[static_cast<std::size_t>(d)];
        gk[d] += tau * ds * x[static_cast<std::size_t>(d)];
      }
    }
  }
}
}  // namespace detail

/// Backward of log-normal attention (LLN, LLN+Diag). α and β — the policy's, or
/// moment-matched from q and k — and the max shifts are constants of the call.
template <detail::element TQ, detail::element TK, detail::element TV, detail::element TO, detail::element TdO,
          class GQ, class GK, class GV>
backward_result attention_backward(const log_normal& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                                   const tensor_view<TV>& v, const tensor_view<TO>& out, const float* lse,
                                   const tensor_view<TdO>& dout, const tensor_view<GQ>& dq, const tensor_view<GK>& dk,
                                   const tensor_view<GV>& dv, const options& opt = {},
                                   const backward_options& bo = {}) {
  const problem_shape sh = detail::validate_backward(detail::facts_of<log_normal>("log-normal attention"), q, k, v, out,
                                                     lse, dout, dq, dk, dv, opt, bo);
  detail::reject_elementwise_options(opt, "log-normal attention");
  const lln_coefficients c = lln_coefficients_of(pol, q, k);
  const index_t Lq = sh.q_len, Lk = sh.k_len, D = sh.head_dim;
  detail::grads G(sh);
  std::vector<double> phq, phk, W, dphq, dphk;
  std::vector<index_t> prefix;
  for (index_t b = 0; b < sh.batch; ++b)
    for (index_t h = 0; h < sh.q_heads; ++h) {
      const index_t g = h / sh.group();
      const batch_keys bk = keys_of_batch(opt, b, Lq, Lk);
      detail::lln_features(c, q, k, sh, b, h, bk, phq, phk);
      detail::kernel_weights(phq, phk, D, opt, bk, Lq, Lk, 1.0, W, prefix);
      const auto Ahat = detail::normalize_rows(W, prefix, Lk, true, pol.eps);
      auto A = Ahat;  // the applied weights: Â, or ½Â + ½P for LLN+Diag
      const double half = pol.diag ? 0.5 : 1.0;
      if (pol.diag) {
        for (auto& e : A) e *= 0.5;
        detail::lln_diag(q, k, opt, sh, b, h, prefix, &A, nullptr, nullptr);
      }
      const auto dA = detail::head_dA(A, prefix, v, dout, sh, b, h, G);
      const auto dW = detail::normalizer_backward(Ahat, W, prefix, Lk, true, pol.eps, half, dA);
      detail::features_backward(dW, phq, phk, prefix, Lk, D, 1.0, dphq, dphk);
      for (index_t i = 0; i < Lq; ++i)  // ∂φ_q/∂q = α φ_q
        for (index_t d = 0; d < D; ++d)
          G.dq(b, h, i)[d] += c.alpha * phq[static_cast<std::size_t>(i * D + d)] * dphq[static_cast<std::size_t>(i * D + d)];
      for (index_t j = 0; j < bk.lk; ++j)  // ∂φ_k/∂k = β φ_k
        for (index_t d = 0; d < D; ++d)
          G.dk(b, g, j)[d] += c.beta * phk[static_cast<std::size_t>(j * D + d)] * dphk[static_cast<std::size_t>(j * D + d)];
      if (pol.diag) detail::lln_diag(q, k, opt, sh, b, h, prefix, nullptr, &dA, &G);
    }
  backward_result res;
  detail::write_gradients(G, dq, dk, dv, bo, res);
  return res;
}

namespace detail {
/// Validates the logits-only call of regularizer_value (v := k, a scratch output).
template <class P, class TQ, class TK>
problem_shape validate_logits_call(const tensor_view<TQ>& q, const tensor_view<TK>& k, const options& opt,
                                   const regularizer& reg, std::vector<double>& scratch) {
  scratch.assign(static_cast<std::size_t>(std::max<index_t>(q.batch(), 0) * std::max<index_t>(q.heads(), 0) *
                                          std::max<index_t>(q.seq(), 0) * std::max<index_t>(k.dim(), 0)),
                 0.0);
  const problem_shape sh =
      validate_call(q, k, k, bhsd(scratch.data(), q.batch(), q.heads(), q.seq(), k.dim()), opt, false);
  attnkit::detail::check_regularizer(reg, sh, facts_of<P>("this policy"));
  return sh;
}
}  // namespace detail

/// λ·R of the regulariser `reg` for a call of a softmax-normalised quadratic or
/// sparse policy — the term attention_backward's gradient includes — from the
/// logits the forward builds: for finite-difference checks of loss + λR and for
/// logging. Masked and padded keys are not categories, sinks are not counted, rows
/// with no visible key are left out (observe/regularizer.hpp; NaN for mean_entropy
/// and negative_entropy when no row has a key).
template <class P, detail::element TQ, detail::element TK>
  requires(quadratic_weight<P> || std::is_same_v<typename P::family, family::pattern>)
double regularizer_value(const P& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k, const options& opt,
                         const regularizer& reg) {
  std::vector<double> scratch;
  const problem_shape sh = detail::validate_logits_call<P>(q, k, opt, reg, scratch);
  if constexpr (quadratic_weight<P>) {
    attnkit::detail::check_weight_options<P>(opt);
  } else {
    attnkit::detail::check_weight_options<std::remove_cvref_t<decltype(pol.inner)>>(opt);
    pattern::check_arguments(pol.pattern, sh, opt);
  }
  return detail::regularizer_of_logits(sh, reg, [&](index_t b, index_t h, std::vector<double>& L) {
    detail::head_logits(q, k, opt, sh, b, h, L);
    if constexpr (!quadratic_weight<P>) detail::restrict_to_pattern(pol.pattern, q, k, opt, sh, b, h, L);
  }, nullptr);
}

/// λ·R for stochastic permutation attention with explicit permutations.
template <detail::element TQ, detail::element TK>
double regularizer_value(const stochastic_permutation& pol, const std::vector<std::vector<index_t>>& perms,
                         const tensor_view<TQ>& q, const tensor_view<TK>& k, const options& opt,
                         const regularizer& reg) {
  std::vector<double> scratch;
  const problem_shape sh = detail::validate_logits_call<stochastic_permutation>(q, k, opt, reg, scratch);
  attnkit::detail::check_permutation_arguments(pol, sh);
  detail::check_permutations(perms, sh);
  return detail::regularizer_of_logits(sh, reg, [&](index_t b, index_t h, std::vector<double>& L) {
    detail::head_logits(q, k, opt, sh, b, h, L);
    detail::rank_window(perms.size() == 1 ? perms[0] : perms[static_cast<std::size_t>(h / sh.group())], pol.kind,
                        pol.window, sh.k_len, L);
  }, nullptr);
}

/// λ·R for stochastic permutation attention with the policy's seeded permutations.
template <detail::element TQ, detail::element TK>
double regularizer_value(const stochastic_permutation& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                         const options& opt, const regularizer& reg) {
  return regularizer_value(pol, permutations_of(pol, k.seq(), k.heads()), q, k, opt, reg);
}

}  // namespace attnkit::reference
