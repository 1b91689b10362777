#pragma once
/// \file
/// Float64 references of the kernelised family: linear attention with any feature
/// map (materialised weights w_ij = φ(q_i)·φ(k_j)·λ^{p_i−1−j}, plus the independent
/// recurrent form), and log-normal attention (LLN, LLN+Diag).
///
/// Options these variants understand: causal (both alignments: row i sees the key
/// prefix [0, p_i), current token included), key_lengths, scale (FAVOR+ only; LLN
/// and the other built-in maps ignore it), masked_rows is not used (a row with no
/// key outputs 0, as the kernel does). window, mask, bias, ALiBi, softcap, sinks and
/// lse are rejected with invalid_argument_error.
#include <utility>

#include "../policy/linear.hpp"
#include "../policy/log_normal.hpp"
#include "common.hpp"

namespace attnkit::reference {
namespace detail {

/// p_i: the number of keys (a prefix) query row i sees in a kernelised call.
inline index_t kernelized_prefix(const options& opt, const batch_keys& bk, index_t i) {
  index_t p = bk.lk;
  if (opt.causal == causal::top_left && i + 1 < p) p = i + 1;
  if (opt.causal == causal::bottom_right && i + bk.delta + 1 < p) p = i + bk.delta + 1;
  return p < 0 ? 0 : p;
}

/// Evaluates a feature map (either form) in double if it supports double, else through float.
template <class F>
void apply_feature(const F& f, const double* x, index_t d, const feature::context& c, double* out, index_t M) {
  if constexpr (feature::feature_map<F, double>) {
    (void)M;
    feature::evaluate(f, x, d, c, out);
  } else {
    std::vector<float> xf(static_cast<std::size_t>(d)), of(static_cast<std::size_t>(M));
    for (index_t i = 0; i < d; ++i) xf[static_cast<std::size_t>(i)] = static_cast<float>(x[i]);
    f(xf.data(), d, c, of.data());
    for (index_t m = 0; m < M; ++m) out[m] = of[static_cast<std::size_t>(m)];
  }
}

template <class F>
index_t feature_dim(const F& f, index_t d) {
  return feature::output_dim(f, d);
}

/// Features of head (b, h): phq [Lq × M] and phk [Lk × M] (keys ≥ lk left 0).
template <class F, class TQ, class TK>
void linear_features(const F& phi, const tensor_view<TQ>& q, const tensor_view<TK>& k, const options& opt,
                     const problem_shape& sh, index_t b, index_t h, index_t M, std::vector<double>& phq,
                     std::vector<double>& phk) {
  const index_t Lq = sh.q_len, Lk = sh.k_len, D = sh.head_dim, g = h / sh.group();
  const batch_keys bk = keys_of_batch(opt, b, Lq, Lk);
  const double tau = resolved_scale(opt, D);
  std::vector<double> x(static_cast<std::size_t>(D));
  phq.assign(static_cast<std::size_t>(Lq * M), 0.0);
  phk.assign(static_cast<std::size_t>(Lk * M), 0.0);
  for (index_t i = 0; i < Lq; ++i) {
    load(q, b, h, i, x.data());
    apply_feature(phi, x.data(), D, feature::context{i + bk.delta, Lq, bk.lk, true, tau}, phq.data() + i * M, M);
  }
  for (index_t j = 0; j < bk.lk; ++j) {
    load(k, b, g, j, x.data());
    apply_feature(phi, x.data(), D, feature::context{j, Lq, bk.lk, false, tau}, phk.data() + j * M, M);
  }
}

/// Raw kernelised weights of one head: W[i][j] = φq_i·φk_j·λ^{p_i−1−j} for j < p_i.
inline void kernel_weights(const std::vector<double>& phq, const std::vector<double>& phk, index_t M,
                           const options& opt, const batch_keys& bk, index_t Lq, index_t Lk, double lambda,
                           std::vector<double>& W, std::vector<index_t>& prefix) {
  W.assign(static_cast<std::size_t>(Lq * Lk), 0.0);
  prefix.assign(static_cast<std::size_t>(Lq), 0);
  for (index_t i = 0; i < Lq; ++i) {
    const index_t p = kernelized_prefix(opt, bk, i);
    prefix[static_cast<std::size_t>(i)] = p;
    for (index_t j = 0; j < p; ++j) {
      double s = 0;
      for (index_t m = 0; m < M; ++m) s += phq[static_cast<std::size_t>(i * M + m)] * phk[static_cast<std::size_t>(j * M + m)];
      if (lambda != 1.0) s *= std::pow(lambda, static_cast<double>(p - 1 - j));
      W[static_cast<std::size_t>(i * Lk + j)] = s;
    }
  }
}

/// out = A·V for the applied weights A (row i over its prefix), plus diagnostics;
/// `raw` is the unnormalised W (row mass).
template <class TV, class TO>
void kernelized_finish(const std::vector<double>& A, const std::vector<double>& raw, const std::vector<index_t>& prefix,
                       const tensor_view<TV>& v, const tensor_view<TO>& out, const problem_shape& sh, index_t b,
                       index_t h, result& res, const extras& ex) {
  const index_t Lq = sh.q_len, Lk = sh.k_len, Dv = sh.value_dim, g = h / sh.group();
  std::vector<double> acc(static_cast<std::size_t>(Dv)), vj(static_cast<std::size_t>(Dv));
  for (index_t i = 0; i < Lq; ++i) {
    const index_t r = res.row(b, h, i), p = prefix[static_cast<std::size_t>(i)];
    const auto u = static_cast<std::size_t>(r);
    std::fill(acc.begin(), acc.end(), 0.0);
    const double* a = A.data() + i * Lk;
    double mass = 0, asum = 0;
    for (index_t j = 0; j < p; ++j) {
      load(v, b, g, j, vj.data());
      for (index_t d = 0; d < Dv; ++d) acc[static_cast<std::size_t>(d)] += a[j] * vj[static_cast<std::size_t>(d)];
      mass += raw[static_cast<std::size_t>(i * Lk + j)];
      asum += a[j];
    }
    for (index_t d = 0; d < Dv; ++d) out(b, h, i, d) = static_cast<std::remove_cv_t<TO>>(acc[static_cast<std::size_t>(d)]);
    res.allowed[u] = p;
    res.mass[u] = mass;
    if (p > 0) res.first_prob[u] = asum != 0 ? a[0] / asum : 0.0;
    row_entropy(res, r, std::span<const double>(a, static_cast<std::size_t>(p)), asum, ex);
    if (ex.keep_weights)
      for (index_t j = 0; j < p; ++j) res.weights[static_cast<std::size_t>(res.element(b, h, i, j))] = a[j];
  }
}

/// A = W / (ΣW + ε) row-wise over the prefix (or W itself).
inline std::vector<double> normalize_rows(const std::vector<double>& W, const std::vector<index_t>& prefix, index_t Lk,
                                          bool normalize, double eps) {
  std::vector<double> A = W;
  if (!normalize) return A;
  for (std::size_t i = 0; i < prefix.size(); ++i) {
    double s = 0;
    for (index_t j = 0; j < prefix[i]; ++j) s += W[i * static_cast<std::size_t>(Lk) + static_cast<std::size_t>(j)];
    for (index_t j = 0; j < prefix[i]; ++j) A[i * static_cast<std::size_t>(Lk) + static_cast<std::size_t>(j)] /= (s + eps);
  }
  return A;
}

template <class F>
void check_linear(const linear<F>& pol, const options& opt, const problem_shape& sh) {
  reject_elementwise_options(opt, "linear attention");
  attnkit::detail::check_linear_fields(pol, sh.q_heads, sh.head_dim, opt.causal != causal::none, false);
}

/// Sample standard deviation (denominator count − 1) of every entry of a view.
template <class T>
double sample_std(const tensor_view<T>& t) {
  double n = 0, mean = 0;
  for (index_t b = 0; b < t.batch(); ++b)
    for (index_t h = 0; h < t.heads(); ++h)
      for (index_t s = 0; s < t.seq(); ++s)
        for (index_t d = 0; d < t.dim(); ++d) {
          mean += to_double(t(b, h, s, d));
          n += 1;
        }
  if (n < 2) return 0.0;
  mean /= n;
  double ss = 0;
  for (index_t b = 0; b < t.batch(); ++b)
    for (index_t h = 0; h < t.heads(); ++h)
      for (index_t s = 0; s < t.seq(); ++s)
        for (index_t d = 0; d < t.dim(); ++d) {
          const double x = to_double(t(b, h, s, d)) - mean;
          ss += x * x;
        }
  return std::sqrt(ss / (n - 1));
}

/// LLN features of head (b, h): phq [Lq × D] = exp(α q_i − max_d α q_id), phk
/// [Lk × D] = exp(β k_j − max_{j'<lk, d} β k_j'd) for j < lk (the rest 0).
template <class TQ, class TK>
void lln_features(const lln_coefficients& c, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                  const problem_shape& sh, index_t b, index_t h, const batch_keys& bk, std::vector<double>& phq,
                  std::vector<double>& phk) {
  const index_t Lq = sh.q_len, Lk = sh.k_len, D = sh.head_dim, g = h / sh.group();
  std::vector<double> x(static_cast<std::size_t>(D));
  phq.assign(static_cast<std::size_t>(Lq * D), 0.0);
  phk.assign(static_cast<std::size_t>(Lk * D), 0.0);
  for (index_t i = 0; i < Lq; ++i) {
    load(q, b, h, i, x.data());
    double m = ninf;
    for (index_t d = 0; d < D; ++d) m = std::max(m, c.alpha * x[static_cast<std::size_t>(d)]);
    for (index_t d = 0; d < D; ++d) phq[static_cast<std::size_t>(i * D + d)] = std::exp(c.alpha * x[static_cast<std::size_t>(d)] - m);
  }
  double mk = ninf;
  for (index_t j = 0; j < bk.lk; ++j) {
    load(k, b, g, j, x.data());
    for (index_t d = 0; d < D; ++d) mk = std::max(mk, c.beta * x[static_cast<std::size_t>(d)]);
  }
  for (index_t j = 0; j < bk.lk; ++j) {
    load(k, b, g, j, x.data());
    for (index_t d = 0; d < D; ++d) phk[static_cast<std::size_t>(j * D + d)] = std::exp(c.beta * x[static_cast<std::size_t>(d)] - mk);
  }
}

inline index_t floor_div(index_t a, index_t b) noexcept { return a >= 0 ? a / b : -((-a + b - 1) / b); }

}  // namespace detail

/// Linear attention reference (materialised N×N weights). See policy/linear.hpp.
template <class F, detail::element TQ, detail::element TK, detail::element TV, class TO>
result attention(const linear<F>& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                 const tensor_view<TO>& out, const options& opt = {}, const extras& ex = {}) {
  const problem_shape sh = validate_call(q, k, v, out, opt, false);
  detail::check_linear(pol, opt, sh);
  result res = detail::make_result(sh, false, ex);
  const index_t M = detail::feature_dim(pol.phi, sh.head_dim);
  std::vector<double> phq, phk, W;
  std::vector<index_t> prefix;
  for (index_t b = 0; b < sh.batch; ++b)
    for (index_t h = 0; h < sh.q_heads; ++h) {
      const batch_keys bk = keys_of_batch(opt, b, sh.q_len, sh.k_len);
      const double lambda = pol.decay.empty() ? 1.0 : static_cast<double>(pol.decay[static_cast<std::size_t>(h)]);
      detail::linear_features(pol.phi, q, k, opt, sh, b, h, M, phq, phk);
      detail::kernel_weights(phq, phk, M, opt, bk, sh.q_len, sh.k_len, lambda, W, prefix);
      const auto A = detail::normalize_rows(W, prefix, sh.k_len, pol.normalize, pol.eps);
      detail::kernelized_finish(A, W, prefix, v, out, sh, b, h, res, ex);
    }
  return res;
}

/// Linear attention by the recurrence (S, z) ← λ(S, z) + φ(k_j)(v_j, 1), absorbing
/// keys as the rows' prefixes grow: the token-by-token decoding form, an
/// independent formulation of attention(linear…) (same options, no diagnostics).
template <class F, detail::element TQ, detail::element TK, detail::element TV, class TO>
void linear_recurrent(const linear<F>& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k,
                      const tensor_view<TV>& v, const tensor_view<TO>& out, const options& opt = {}) {
  const problem_shape sh = validate_call(q, k, v, out, opt, false);
  detail::check_linear(pol, opt, sh);
  const index_t M = detail::feature_dim(pol.phi, sh.head_dim), Dv = sh.value_dim;
  std::vector<double> phq, phk, S, z, vj(static_cast<std::size_t>(Dv));
  for (index_t b = 0; b < sh.batch; ++b)
    for (index_t h = 0; h < sh.q_heads; ++h) {
      const batch_keys bk = keys_of_batch(opt, b, sh.q_len, sh.k_len);
      const double lambda = pol.decay.empty() ? 1.0 : static_cast<double>(pol.decay[static_cast<std::size_t>(h)]);
      detail::linear_features(pol.phi, q, k, opt, sh, b, h, M, phq, phk);
      S.assign(static_cast<std::size_t>(M * Dv), 0.0);
      z.assign(static_cast<std::size_t>(M), 0.0);
      index_t absorbed = 0;
      for (index_t i = 0; i < sh.q_len; ++i) {
        const index_t p = detail::kernelized_prefix(opt, bk, i);
        // Prefixes never shrink with i, so the state only moves forward.
        for (; absorbed < p; ++absorbed) {
          detail::load(v, b, h / sh.group(), absorbed, vj.data());
          for (index_t m = 0; m < M; ++m) {
            const double f = phk[static_cast<std::size_t>(absorbed * M + m)];
            z[static_cast<std::size_t>(m)] = lambda * z[static_cast<std::size_t>(m)] + f;
            for (index_t d = 0; d < Dv; ++d)
              S[static_cast<std::size_t>(m * Dv + d)] = lambda * S[static_cast<std::size_t>(m * Dv + d)] + f * vj[static_cast<std::size_t>(d)];
          }
        }
        double den = 0;
        for (index_t m = 0; m < M; ++m) den += phq[static_cast<std::size_t>(i * M + m)] * z[static_cast<std::size_t>(m)];
        for (index_t d = 0; d < Dv; ++d) {
          double num = 0;
          for (index_t m = 0; m < M; ++m) num += phq[static_cast<std::size_t>(i * M + m)] * S[static_cast<std::size_t>(m * Dv + d)];
          out(b, h, i, d) = static_cast<std::remove_cv_t<TO>>(pol.normalize ? num / (den + pol.eps) : num);
        }
      }
    }
}

/// α and β an LLN call uses: the policy's values, or moment matching on the sample
/// standard deviations of all entries of q and k.
template <class TQ, class TK>
lln_coefficients lln_coefficients_of(const log_normal& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k) {
  if (pol.alpha && pol.beta) return {*pol.alpha, *pol.beta};
  return pol.resolve(detail::sample_std(q), detail::sample_std(k));
}

/// Log-normal attention reference. φq(q_i) = exp(α q_i − max_d α q_id) (row max),
/// φk(k_j) = exp(β k_j − max_{j'<lk, d} β k_j'd) (per (batch, kv head) max over the
/// valid keys), o_i = Σ_j w_ij v_j / (Σ_j w_ij + ε). With `diag`: the average of that
/// and block-diagonal softmax (query position p = i + Δ, block floor(p/D) == j/D,
/// τ = options.scale or 1/sqrt(D), intersected with the causal prefix; a row whose
/// block has no visible key adds 0). Diagnostics describe the applied weights A
/// (for diag: ½·LLN weights + ½·block softmax probabilities); mass = Σ_j w_ij.
template <detail::element TQ, detail::element TK, detail::element TV, class TO>
result attention(const log_normal& pol, const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                 const tensor_view<TO>& out, const options& opt = {}, const extras& ex = {}) {
  const problem_shape sh = validate_call(q, k, v, out, opt, false);
  detail::reject_elementwise_options(opt, "log-normal attention");
  const lln_coefficients c = lln_coefficients_of(pol, q, k);
  result res = detail::make_result(sh, false, ex);
  const index_t Lq = sh.q_len, Lk = sh.k_len, D = sh.head_dim;
  const double tau = attnkit::resolved_scale(opt, D);
  std::vector<double> phq, phk, W, x(static_cast<std::size_t>(D)), y(static_cast<std::size_t>(D));
  std::vector<index_t> prefix;
  for (index_t b = 0; b < sh.batch; ++b)
    for (index_t h = 0; h < sh.q_heads; ++h) {
      const index_t g = h / sh.group();
      const batch_keys bk = keys_of_batch(opt, b, Lq, Lk);
      detail::lln_features(c, q, k, sh, b, h, bk, phq, phk);
      detail::kernel_weights(phq, phk, D, opt, bk, Lq, Lk, 1.0, W, prefix);
      auto A = detail::normalize_rows(W, prefix, Lk, true, pol.eps);
      if (pol.diag) {
        for (index_t i = 0; i < Lq; ++i) {
          const index_t blk = detail::floor_div(i + bk.delta, D), p = prefix[static_cast<std::size_t>(i)];
          detail::load(q, b, h, i, x.data());
          std::vector<double> s(static_cast<std::size_t>(Lk), detail::ninf);
          double m = detail::ninf;
          for (index_t j = 0; j < p; ++j) {
            if (j / D != blk) continue;
            detail::load(k, b, g, j, y.data());
            double t = 0;
            for (index_t d = 0; d < D; ++d) t += x[static_cast<std::size_t>(d)] * y[static_cast<std::size_t>(d)];
            s[static_cast<std::size_t>(j)] = tau * t;
            m = std::max(m, tau * t);
          }
          double l = 0;
          for (index_t j = 0; j < p; ++j)
            if (s[static_cast<std::size_t>(j)] != detail::ninf) l += std::exp(s[static_cast<std::size_t>(j)] - m);
          for (index_t j = 0; j < p; ++j) {
            double& a = A[static_cast<std::size_t>(i * Lk + j)];
            a *= 0.5;
            if (s[static_cast<std::size_t>(j)] != detail::ninf) a += 0.5 * std::exp(s[static_cast<std::size_t>(j)] - m) / l;
          }
        }
      }
      detail::kernelized_finish(A, W, prefix, v, out, sh, b, h, res, ex);
    }
  return res;
}

}  // namespace attnkit::reference
