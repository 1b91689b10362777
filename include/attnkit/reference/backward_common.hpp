#pragma once
/// \file
/// Shared pieces of the float64 backward oracle: the gradient buffers of a call and
/// how they are written out, the chain rule from the logits' gradient dS back to q,
/// k and the bias, and the entropy regulariser (value and ∂(λR)/∂s) evaluated by
/// observe/regularizer.hpp on the materialised logits.
#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <vector>

#include "../core/backward_options.hpp"
#include "../core/validate_backward.hpp"
#include "../observe/regularizer.hpp"
#include "../policy/traits.hpp"
#include "common.hpp"

namespace attnkit::reference {

/// What attention_backward returns besides dq, dk, dv, in float64.
struct backward_result {
  /// d loss / d options.sinks, [Hq] (empty without sinks); also written to
  /// backward_options.dsinks when given.
  std::vector<double> dsinks;
  /// d loss / d options.bias, contiguous with options.bias's extents (broadcast axes
  /// summed; empty without a bias); also written to backward_options.dbias when given.
  std::vector<double> dbias;
  /// λ·R of the call: the regulariser's value whose gradient was added (0 without one).
  double regularizer = 0.0;
  /// entropy_band only: ∂(λR)/∂θ_h, [Hq] (for learned thresholds θ_h = w_h·E_max).
  std::vector<double> dtheta;
};

namespace detail {

/// The float64 gradients of one call, contiguous BHSD, zero until accumulated.
struct grads {
  problem_shape sh;
  std::vector<double> q, k, v;
  explicit grads(const problem_shape& s)
      : sh(s),
        q(static_cast<std::size_t>(s.batch * s.q_heads * s.q_len * s.head_dim), 0.0),
        k(static_cast<std::size_t>(s.batch * s.kv_heads * s.k_len * s.head_dim), 0.0),
        v(static_cast<std::size_t>(s.batch * s.kv_heads * s.k_len * s.value_dim), 0.0) {}
  /// Row (b, h, i) of dq, row (b, g, j) of dk and dv: D or Dv contiguous doubles.
  double* dq(index_t b, index_t h, index_t i) { return q.data() + ((b * sh.q_heads + h) * sh.q_len + i) * sh.head_dim; }
  double* dk(index_t b, index_t g, index_t j) { return k.data() + ((b * sh.kv_heads + g) * sh.k_len + j) * sh.head_dim; }
  double* dv(index_t b, index_t g, index_t j) { return v.data() + ((b * sh.kv_heads + g) * sh.k_len + j) * sh.value_dim; }
};

/// Writes (or adds, with accumulate) a contiguous BHSD double buffer to a view of
/// the same extents: every element of the view is written.
template <class T>
void store(const std::vector<double>& src, const tensor_view<T>& dst, bool accumulate) {
  std::size_t x = 0;
  for (index_t b = 0; b < dst.batch(); ++b)
    for (index_t h = 0; h < dst.heads(); ++h)
      for (index_t s = 0; s < dst.seq(); ++s)
        for (index_t d = 0; d < dst.dim(); ++d, ++x) {
          T& e = dst(b, h, s, d);
          e = static_cast<T>(accumulate ? static_cast<double>(e) + src[x] : src[x]);
        }
}

/// Offset of logit (b, h, i, j)'s bias element in a contiguous buffer with the
/// bias's extents (broadcast axes collapse to index 0, so their terms sum).
inline std::size_t bias_index(const bias_view& bias, index_t b, index_t h, index_t i, index_t j) {
  const auto& e = bias.extent;
  const index_t bb = e[0] == 1 ? 0 : b, hb = e[1] == 1 ? 0 : h, ib = e[2] == 1 ? 0 : i;
  return static_cast<std::size_t>(((bb * e[1] + hb) * e[2] + ib) * e[3] + j);
}

/// Chain rule through head_logits for head (b, h): the logit s = c(τ·q·k) + bias −
/// ALiBi (c = soft-cap c·tanh(x/c) or identity) receives dS [Lq × Lk]; adds
/// τ·c'(τ·q·k)·dS to dq_i·k_j and dk_j·q_i, and dS to the bias element (ALiBi slopes
/// and the masks are constants). dS is 0 wherever the logit is masked.
template <class TQ, class TK>
void logits_backward(const tensor_view<TQ>& q, const tensor_view<TK>& k, const options& opt, const problem_shape& sh,
                     index_t b, index_t h, const std::vector<double>& dS, grads& G, std::vector<double>& dbias) {
  const index_t Lq = sh.q_len, Lk = sh.k_len, D = sh.head_dim, g = h / sh.group();
  const double tau = resolved_scale(opt, D), cap = static_cast<double>(opt.softcap);
  std::vector<double> qi(static_cast<std::size_t>(D)), kj(static_cast<std::size_t>(D));
  for (index_t i = 0; i < Lq; ++i) {
    load(q, b, h, i, qi.data());
    double* gq = G.dq(b, h, i);
    for (index_t j = 0; j < Lk; ++j) {
      const double ds = dS[static_cast<std::size_t>(i * Lk + j)];
      if (ds == 0.0) continue;  // masked, or no gradient: contributes nothing
      if (opt.bias.data != nullptr) dbias[bias_index(opt.bias, b, h, i, j)] += ds;
      load(k, b, g, j, kj.data());
      double draw = ds;  // gradient of τ·q·k
      if (cap > 0) {
        double x = 0;
        for (index_t d = 0; d < D; ++d) x += qi[static_cast<std::size_t>(d)] * kj[static_cast<std::size_t>(d)];
        const double t = std::tanh(tau * x / cap);
        draw *= 1.0 - t * t;
      }
      double* gk = G.dk(b, g, j);
      for (index_t d = 0; d < D; ++d) {
        gq[d] += tau * draw * kj[static_cast<std::size_t>(d)];
        gk[d] += tau * draw * qi[static_cast<std::size_t>(d)];
      }
    }
  }
}

/// The call's regulariser from its logits: `logits_of(b, h, L)` fills head (b, h)'s
/// final logits (−inf = masked) exactly as the forward builds them. Returns λ·R as
/// observe/regularizer.hpp defines it over the call's rows (see regularizer); when
/// `grad` is non-null, fills it [B, Hq, Lq, Lk] with ∂(λR)/∂s (0 on masked logits),
/// and `dtheta` (if non-null, band only) with ∂(λR)/∂θ.
template <class Logits>
double regularizer_of_logits(const problem_shape& sh, const regularizer& reg, Logits&& logits_of,
                             std::vector<double>* grad, std::vector<double>* dtheta = nullptr) {
  const index_t Lq = sh.q_len, Lk = sh.k_len, H = sh.q_heads, B = sh.batch;
  const auto head = static_cast<std::size_t>(Lq * Lk);
  if (grad) grad->assign(static_cast<std::size_t>(B * H) * head, 0.0);
  if (!reg.active()) return 0.0;
  const bool no_rows = B * H * Lq == 0 || Lk == 0;
  if (dtheta && reg.kind == regularizer_kind::entropy_band) dtheta->assign(static_cast<std::size_t>(H), 0.0);
  if (no_rows) return reg.kind == regularizer_kind::entropy_band ? 0.0 : std::numeric_limits<double>::quiet_NaN();
  std::vector<double> all(static_cast<std::size_t>(B * H) * head), L;  // [B, Hq, Lq, Lk]
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h) {
      logits_of(b, h, L);
      std::copy(L.begin(), L.end(), all.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(b * H + h) * head));
    }
  if (reg.kind != regularizer_kind::entropy_band) {
    logit_rows<double> rows{all, Lk};
    if (grad) rows.grad = *grad;
    return reg.kind == regularizer_kind::mean_entropy ? mean_entropy_loss(rows, reg.lambda)
                                                      : negative_entropy_loss(rows, reg.lambda);
  }
  // Band: head h's rows are (b, i) for every batch b; gather them per head.
  std::vector<std::vector<double>> hl(static_cast<std::size_t>(H)), hg(static_cast<std::size_t>(H));
  std::vector<logit_rows<double>> heads;
  for (index_t h = 0; h < H; ++h) {
    auto& x = hl[static_cast<std::size_t>(h)];
    for (index_t b = 0; b < B; ++b) {
      const auto from = all.begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(b * H + h) * head);
      x.insert(x.end(), from, from + static_cast<std::ptrdiff_t>(head));
    }
    hg[static_cast<std::size_t>(h)].assign(x.size(), 0.0);
    heads.push_back({x, Lk, {}, grad ? std::span<double>(hg[static_cast<std::size_t>(h)]) : std::span<double>{}});
  }
  if (dtheta) dtheta->assign(static_cast<std::size_t>(H), 0.0);
  const double value =
      entropy_band_penalty(heads, reg.theta, reg.band(), dtheta ? std::span<double>(*dtheta) : std::span<double>{});
  if (grad)
    for (index_t h = 0; h < H; ++h)
      for (index_t b = 0; b < B; ++b)
        std::copy_n(hg[static_cast<std::size_t>(h)].begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(b) * head),
                    head, grad->begin() + static_cast<std::ptrdiff_t>(static_cast<std::size_t>(b * H + h) * head));
  return value;
}

/// Writes the float64 results of a backward call into the caller's outputs (every
/// element of dq, dk, dv; dsinks and dbias when asked) and fills `res`.
template <class GQ, class GK, class GV>
void write_gradients(const grads& G, const tensor_view<GQ>& dq, const tensor_view<GK>& dk, const tensor_view<GV>& dv,
                     const backward_options& bo, const backward_result& res) {
  store(G.q, dq, bo.accumulate);
  store(G.k, dk, bo.accumulate);
  store(G.v, dv, bo.accumulate);
  if (bo.dsinks)
    for (std::size_t h = 0; h < res.dsinks.size(); ++h)
      bo.dsinks[h] = static_cast<float>(bo.accumulate ? static_cast<double>(bo.dsinks[h]) + res.dsinks[h] : res.dsinks[h]);
  if (bo.dbias.data) {
    std::size_t x = 0;
    for (index_t b = 0; b < bo.dbias.batch(); ++b)
      for (index_t h = 0; h < bo.dbias.heads(); ++h)
        for (index_t i = 0; i < bo.dbias.seq(); ++i)
          for (index_t j = 0; j < bo.dbias.dim(); ++j, ++x) {
            float& e = bo.dbias(b, h, i, j);
            e = static_cast<float>(bo.accumulate ? static_cast<double>(e) + res.dbias[x] : res.dbias[x]);
          }
  }
}

/// The validation facts of policy P.
template <class P>
backward_policy_facts facts_of(const char* name) {
  return {softmax_normalized<P>(), is_kernelized_v<P>, name};
}

}  // namespace detail
}  // namespace attnkit::reference
