#pragma once
/// \file
/// The float64 backward of the kernelised family on the materialised weights.
///
/// Linear attention: W_ij = φ(q_i)·φ(k_j)·λ^{p_i−1−j} for j < p_i, A = W/(Z + ε)
/// (Z_i = Σ_j W_ij) or A = W, o_i = Σ_j A_ij v_j. With dA_ij = dO_i·v_j:
///   dv_j += A_ij dO_i
///   dW_ij = (dA_ij − Σ_k A_ik dA_ik)/(Z_i + ε)   (normalised; dW = dA otherwise)
///   dφ(q_i) = Σ_j dW_ij λ^{…} φ(k_j),   dφ(k_j) = Σ_i dW_ij λ^{…} φ(q_i)
/// and dq_i, dk_j by the feature map's vector-Jacobian product (`vjp`). The decay λ,
/// the positions and FAVOR+'s projection are constants (no gradient for them).
///
/// Log-normal attention: φ_q(q_i)_d = exp(α q_id − m_i), φ_k(k_j)_d = exp(β k_jd − m_k),
/// so ∂φ_q/∂q_id = α φ_q, ∂φ_k/∂k_jd = β φ_k. α and β (moment-matched from q and k
/// when unset) and the max shifts m_i, m_k are treated as constants of the call:
/// the gradient is exact for given α, β (the shifts only move ε's relative weight).
/// LLN+Diag adds the block-diagonal softmax half: ds = P (dP − Σ P dP), dP = ½ dA.
#include <vector>

#include "backward_common.hpp"
#include "kernelized.hpp"

namespace attnkit::reference::detail {

/// dx += Jᵀ·dphi of a feature map (either form: feature::vjp), in double if it
/// supports double, else through float.
template <class F>
void apply_feature_vjp(const F& f, const double* x, index_t d, const feature::context& c, const double* dphi,
                       index_t M, double* dx) {
  static_assert(feature::differentiable<F, double> || feature::differentiable<F, float>,
                "attnkit::reference::attention_backward: the feature map needs its derivative: `template <class V> V "
                "derivative(V x) const` (elementwise maps) or `template <class T> void vjp(const T* x, index_t d, "
                "const attnkit::feature::context&, const T* dphi, T* dx) const` (row maps; dx += J^T dphi)");
  if constexpr (feature::differentiable<F, double>) {
    (void)M;
    feature::vjp(f, x, d, c, dphi, dx);
  } else {
    std::vector<float> xf(static_cast<std::size_t>(d)), gf(static_cast<std::size_t>(M)), df(static_cast<std::size_t>(d), 0.0f);
    for (index_t i = 0; i < d; ++i) xf[static_cast<std::size_t>(i)] = static_cast<float>(x[i]);
    for (index_t m = 0; m < M; ++m) gf[static_cast<std::size_t>(m)] = static_cast<float>(dphi[m]);
    feature::vjp(f, xf.data(), d, c, gf.data(), df.data());
    for (index_t i = 0; i < d; ++i) dx[i] += df[static_cast<std::size_t>(i)];
  }
}

/// dA_ij = dO_i·v_j of head (b, h) over each row's prefix; adds dv_j += A_ij dO_i
/// for the applied weights A.
template <class TV, class TdO>
std::vector<double> head_dA(const std::vector<double>& A, const std::vector<index_t>& prefix, const tensor_view<TV>& v,
                            const tensor_view<TdO>& dout, const problem_shape& sh, index_t b, index_t h, grads& G) {
  const index_t Lq = sh.q_len, Lk = sh.k_len, Dv = sh.value_dim, g = h / sh.group();
  std::vector<double> dA(static_cast<std::size_t>(Lq * Lk), 0.0), dO(static_cast<std::size_t>(Dv)),
      vj(static_cast<std::size_t>(Dv));
  for (index_t i = 0; i < Lq; ++i) {
    const index_t p = prefix[static_cast<std::size_t>(i)];
    if (p == 0) continue;  // no key: the output is 0, a constant
    load(dout, b, h, i, dO.data());
    for (index_t j = 0; j < p; ++j) {
      const auto e = static_cast<std::size_t>(i * Lk + j);
      load(v, b, g, j, vj.data());
      double* gv = G.dv(b, g, j);
      double dov = 0.0;
      for (index_t d = 0; d < Dv; ++d) {
        gv[d] += A[e] * dO[static_cast<std::size_t>(d)];
        dov += dO[static_cast<std::size_t>(d)] * vj[static_cast<std::size_t>(d)];
      }
      dA[e] = dov;
    }
  }
  return dA;
}

/// dW of the kernel weights from the gradient of Â = W/(Z + ε) (or Â = W) weighted
/// by c in the applied weights (c = ½ for LLN+Diag): dÂ = c·dA,
/// dW_ij = (dÂ_ij − Σ_k Â_ik dÂ_ik)/(Z_i + ε).
inline std::vector<double> normalizer_backward(const std::vector<double>& Ahat, const std::vector<double>& W,
                                               const std::vector<index_t>& prefix, index_t Lk, bool normalize,
                                               double eps, double c, const std::vector<double>& dA) {
  std::vector<double> dW(dA.size(), 0.0);
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    const std::size_t row = i * static_cast<std::size_t>(Lk), p = static_cast<std::size_t>(prefix[i]);
    double Z = 0.0, Di = 0.0;
    for (std::size_t j = 0; j < p; ++j) {
      Z += W[row + j];
      Di += Ahat[row + j] * c * dA[row + j];
    }
    for (std::size_t j = 0; j < p; ++j)
      dW[row + j] = normalize ? (c * dA[row + j] - Di) / (Z + eps) : c * dA[row + j];
  }
  return dW;
}

/// dφ(q_i) and dφ(k_j) [rows × M] from dW: W_ij = φq_i·φk_j·λ^{p_i−1−j}.
inline void features_backward(const std::vector<double>& dW, const std::vector<double>& phq,
                              const std::vector<double>& phk, const std::vector<index_t>& prefix, index_t Lk, index_t M,
                              double lambda, std::vector<double>& dphq, std::vector<double>& dphk) {
  dphq.assign(phq.size(), 0.0);
  dphk.assign(phk.size(), 0.0);
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    const index_t p = prefix[i];
    for (index_t j = 0; j < p; ++j) {
      double w = dW[i * static_cast<std::size_t>(Lk) + static_cast<std::size_t>(j)];
      if (w == 0.0) continue;
      if (lambda != 1.0) w *= std::pow(lambda, static_cast<double>(p - 1 - j));
      for (index_t m = 0; m < M; ++m) {
        const auto qm = i * static_cast<std::size_t>(M) + static_cast<std::size_t>(m);
        const auto km = static_cast<std::size_t>(j * M + m);
        dphq[qm] += w * phk[km];
        dphk[km] += w * phq[qm];
      }
    }
  }
}

}  // namespace attnkit::reference::detail
