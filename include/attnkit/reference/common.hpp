#pragma once
/// \file
/// Shared pieces of the float64 reference oracle: the per-row result record, the
/// element mask predicate and the logit builder. Deliberately naive — each head's
/// Lq × Lk logits are materialised (the only place in attnkit that does so), so it
/// stays an independent check of the kernels' tiling, masks and streaming math.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <type_traits>
#include <vector>

#include "../core/checked.hpp"
#include "../core/dropout.hpp"
#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/mask.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../core/validate.hpp"

namespace attnkit::reference {

using attnkit::detail::fail;

/// Optional extra outputs of a reference call.
struct extras {
  /// > 0: fill result::topk_mass with the summed k largest normalised weights per row.
  index_t top_k = 0;
  /// Keep the full [B, Hq, Lq, Lk] weight (and, for quadratic families, logit) tensors.
  bool keep_weights = false;
};

/// Per-row diagnostics of a reference call; every vector is [B, Hq, Lq] row-major
/// (index with row()). Conventions:
/// - `lse`: softmax family only (empty otherwise): log(Σ_j e^{s_j} + e^{sink}), −inf
///   for a row with no visible key and no sink.
/// - `entropy`: H of the weights applied to V, renormalised over the row's visible
///   keys (softmax: the key distribution without the options.sinks outcome).
/// - `norm_entropy`: Ĥ = H / log(n_i), 0 when n_i ≤ 1.
/// - `allowed`: n_i, the visible keys (finite logit; kernelised: the prefix length).
/// - `mass`: Σ_j of the row's raw weights — softmax Σ_j p_j (1, or 1 − sink_prob with
///   sinks, 0 if masked), sigmoid Σ σ(·), linear/LLN Σ φ(q)·φ(k)·λ^… (the
///   denominator without ε).
/// - `first_prob`: probability of key 0 ("attention sink"): softmax e^{s_0 − lse};
///   other families w_0 / Σ_j w_j. 0 when key 0 is not visible.
/// - `sink_prob`: softmax with options.sinks only: e^{sink − lse}; else 0.
/// - `topk_mass`: with extras.top_k > 0, the sum of the k largest normalised weights
///   (softmax p_j, others w_j / Σ w).
/// - `weights`, `logits` ([B, Hq, Lq, Lk], extras.keep_weights): the weights applied
///   to V (softmax p, sigmoid σ, linear w/(Σw+ε) or w) and the final logits (−inf =
///   masked; quadratic families only).
/// With options.dropout, `out` uses the dropped weights (kept ones scaled by
/// 1/(1 − p)); every diagnostic and `weights` describe the weights before dropout.
struct result {
  problem_shape shape{};
  std::vector<double> lse, entropy, norm_entropy, mass, first_prob, sink_prob, topk_mass;
  std::vector<index_t> allowed;
  std::vector<double> weights, logits;

  index_t row(index_t b, index_t h, index_t i) const noexcept { return (b * shape.q_heads + h) * shape.q_len + i; }
  index_t rows() const noexcept { return shape.batch * shape.q_heads * shape.q_len; }
  /// Offset of (b, h, i, j) in weights / logits.
  index_t element(index_t b, index_t h, index_t i, index_t j) const noexcept { return row(b, h, i) * shape.k_len + j; }
};

namespace detail {

inline constexpr double ninf = -std::numeric_limits<double>::infinity();
inline constexpr double qnan = std::numeric_limits<double>::quiet_NaN();

/// Element types the oracle reads: float, double, bfloat16, float16.
template <class T>
concept element = std::is_same_v<std::remove_cv_t<T>, float> || std::is_same_v<std::remove_cv_t<T>, double> ||
                  std::is_same_v<std::remove_cv_t<T>, bfloat16> || std::is_same_v<std::remove_cv_t<T>, float16>;

template <class T>
inline double to_double(T x) noexcept {
  if constexpr (std::is_floating_point_v<std::remove_cv_t<T>>)
    return static_cast<double>(x);
  else
    return static_cast<double>(attnkit::to_float(x));
}

/// Token (b, h, s) of a view as a contiguous double vector (any strides).
template <class T>
inline void load(const tensor_view<T>& t, index_t b, index_t h, index_t s, double* dst) {
  for (index_t d = 0; d < t.dim(); ++d) dst[d] = to_double(t(b, h, s, d));
}

/// Allocates the per-row vectors of a result.
inline result make_result(const problem_shape& sh, bool normalized, const extras& ex) {
  result r;
  r.shape = sh;
  const auto n = static_cast<std::size_t>(sh.batch * sh.q_heads * sh.q_len);
  if (normalized) r.lse.assign(n, ninf);
  r.entropy.assign(n, 0.0);
  r.norm_entropy.assign(n, 0.0);
  r.mass.assign(n, 0.0);
  r.first_prob.assign(n, 0.0);
  r.sink_prob.assign(n, 0.0);
  r.allowed.assign(n, 0);
  if (ex.top_k > 0) r.topk_mass.assign(n, 0.0);
  if (ex.keep_weights) r.weights.assign(n * static_cast<std::size_t>(sh.k_len), 0.0);
  return r;
}

/// Entropy of the row-normalised non-negative weights w (zeros skipped); NaN if a
/// weight is negative or NaN, and for a row without mass (all weights 0: there is no
/// distribution — e.g. a ReLU row whose logits are all negative), as the observer.
inline double entropy_of(std::span<const double> w) noexcept {
  double sum = 0;
  for (double x : w) {
    if (!(x >= 0)) return qnan;
    sum += x;
  }
  if (!(sum > 0)) return qnan;
  double h = 0;
  for (double x : w)
    if (x > 0) {
      const double p = x / sum;
      h -= p * std::log(p);
    }
  return h;
}

inline double normalized_entropy(double h, index_t n) noexcept {
  return n > 1 ? h / std::log(static_cast<double>(n)) : 0.0;
}

/// Sum of the k largest entries of p.
inline double top_sum(std::vector<double> p, index_t k) {
  const auto kk = static_cast<std::size_t>(std::min<index_t>(k, static_cast<index_t>(p.size())));
  std::partial_sort(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(kk), p.end(), std::greater<>());
  double s = 0;
  for (std::size_t x = 0; x < kk; ++x) s += p[x];
  return s;
}

/// Fills H, Ĥ and top-k mass of row r from the weights applied to V (over the
/// visible keys) and the row's normaliser for top-k (1 for softmax, Σw otherwise).
inline void row_entropy(result& res, index_t r, std::span<const double> visible_weights, double topk_norm,
                        const extras& ex) {
  const auto u = static_cast<std::size_t>(r);
  res.entropy[u] = entropy_of(visible_weights);
  res.norm_entropy[u] = normalized_entropy(res.entropy[u], res.allowed[u]);
  if (ex.top_k > 0) {
    std::vector<double> p(visible_weights.begin(), visible_weights.end());
    if (topk_norm > 0)
      for (auto& x : p) x /= topk_norm;
    res.topk_mass[u] = topk_norm > 0 ? top_sum(std::move(p), ex.top_k) : 0.0;
  }
}

/// The options' element mask for query row i, key j of batch b / query head h:
/// key length, causal alignment, local window and boolean mask, written directly
/// from the documented conventions (deliberately not via analytic_range, so the
/// oracle checks it).
inline bool option_allows(const options& opt, const batch_keys& bk, index_t b, index_t h, index_t i, index_t j) {
  if (j >= bk.lk) return false;
  const index_t delta = bk.delta;  // lk − Lq, or positions.query − positions.key
  switch (opt.causal) {
    case causal::none: break;
    case causal::top_left:  // with positions: key position <= query position
      if (j > i + (opt.positions ? delta : 0)) return false;
      break;
    case causal::bottom_right:
      if (j > i + delta) return false;
      break;
  }
  // The window sides may be up to INT64_MAX: saturating bounds compare exactly.
  if (opt.window.left >= 0 && j < attnkit::detail::sat_sub(i + delta, opt.window.left)) return false;
  if (opt.window.right >= 0 && j > attnkit::detail::sat_add(i + delta, opt.window.right)) return false;
  if (opt.mask.data != nullptr && !broadcast_row(opt.mask, b, h, i)[j * opt.mask.stride[3]]) return false;
  return true;
}

/// Logits of head (b, h) into L [Lq × Lk]: τ·q·k, soft-capped c·tanh(s/c), plus
/// bias and ALiBi −m_h·|i + Δ − j|; −inf where the options mask the pair.
template <class TQ, class TK>
void head_logits(const tensor_view<TQ>& q, const tensor_view<TK>& k, const options& opt, const problem_shape& sh,
                 index_t b, index_t h, std::vector<double>& L) {
  const index_t Lq = sh.q_len, Lk = sh.k_len, D = sh.head_dim, g = h / sh.group();
  const batch_keys bk = keys_of_batch(opt, b, Lq, Lk);
  const double tau = resolved_scale(opt, D);
  const double cap = static_cast<double>(opt.softcap);
  const double slope = opt.alibi_slopes.empty() ? 0.0 : static_cast<double>(opt.alibi_slopes[static_cast<std::size_t>(h)]);
  L.assign(static_cast<std::size_t>(Lq * Lk), ninf);
  std::vector<double> qi(static_cast<std::size_t>(D)), kj(static_cast<std::size_t>(D));
  for (index_t i = 0; i < Lq; ++i) {
    load(q, b, h, i, qi.data());
    for (index_t j = 0; j < Lk; ++j) {
      if (!option_allows(opt, bk, b, h, i, j)) continue;
      load(k, b, g, j, kj.data());
      double s = 0;
      for (index_t d = 0; d < D; ++d) s += qi[static_cast<std::size_t>(d)] * kj[static_cast<std::size_t>(d)];
      s *= tau;
      if (cap > 0) s = cap * std::tanh(s / cap);
      if (opt.bias.data != nullptr) s += static_cast<double>(broadcast_row(opt.bias, b, h, i)[j * opt.bias.stride[3]]);
      if (slope != 0) s -= slope * static_cast<double>(std::abs(i + bk.delta - j));
      L[static_cast<std::size_t>(i * Lk + j)] = s;
    }
  }
}

/// Options only the softmax/sigmoid families understand (dropout included);
/// kernelised variants reject them.
inline void reject_elementwise_options(const options& opt, const char* variant) {
  const std::string why = std::string("unset (not supported by ") + variant + ")";
  if (opt.window.active()) fail("options.window", "", why, "a window");
  if (opt.mask.data) fail("options.mask", "", why, "a mask");
  if (opt.bias.data) fail("options.bias", "", why, "a bias");
  if (!opt.alibi_slopes.empty()) fail("options.alibi_slopes", "", why, opt.alibi_slopes.size());
  if (opt.softcap > 0.0f) fail("options.softcap", "", why, opt.softcap);
  if (!opt.sinks.empty()) fail("options.sinks", "", why, opt.sinks.size());
  if (opt.lse) fail("options.lse", "", why, "a pointer");
  attnkit::detail::reject_positions(opt, variant);
  if (opt.dropout.active())
    fail("options.dropout", "p", std::string("0 (") + variant + " has no attention-weight matrix to drop)", opt.dropout.p);
}

}  // namespace detail
}  // namespace attnkit::reference
