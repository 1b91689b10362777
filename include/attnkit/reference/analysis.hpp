#pragma once
/// \file
/// Float64 references of the analysis tools: the softmax partial merge, entropy of
/// weights, the entropy gradient and per-head entropy statistics.
#include "common.hpp"

namespace attnkit::reference {

/// Exact merge of two softmax partial results over disjoint key sets:
/// lse = logaddexp(lse1, lse2), o = e^{lse1−lse}·o1 + e^{lse2−lse}·o2. LSEs are
/// [B, H, L] row-major; a side with LSE −inf contributes nothing (even if its output
/// is NaN); both −inf gives 0 and −inf. Writes `out`, returns the merged LSE.
template <class T1, class T2, class TO>
std::vector<double> merge(const tensor_view<T1>& o1, std::span<const double> lse1, const tensor_view<T2>& o2,
                          std::span<const double> lse2, const tensor_view<TO>& out) {
  for (int a = 0; a < 4; ++a) {
    if (o2.extent[a] != o1.extent[a])
      fail("o2", std::string("extent '") + attnkit::detail::axis_name(a) + "'", o1.extent[a], o2.extent[a]);
    if (out.extent[a] != o1.extent[a])
      fail("out", std::string("extent '") + attnkit::detail::axis_name(a) + "'", o1.extent[a], out.extent[a]);
  }
  const auto rows = static_cast<std::size_t>(o1.batch() * o1.heads() * o1.seq());
  if (lse1.size() != rows) fail("lse1", "size", rows, lse1.size());
  if (lse2.size() != rows) fail("lse2", "size", rows, lse2.size());
  std::vector<double> lse(rows, detail::ninf);
  for (index_t b = 0; b < o1.batch(); ++b)
    for (index_t h = 0; h < o1.heads(); ++h)
      for (index_t i = 0; i < o1.seq(); ++i) {
        const auto r = static_cast<std::size_t>((b * o1.heads() + h) * o1.seq() + i);
        const double a = lse1[r], c = lse2[r], m = std::max(a, c);
        double w1 = 0, w2 = 0;
        if (m != detail::ninf) {
          lse[r] = m + std::log(std::exp(a - m) + std::exp(c - m));
          w1 = std::exp(a - lse[r]);
          w2 = std::exp(c - lse[r]);
        }
        for (index_t d = 0; d < o1.dim(); ++d) {
          const double x = w1 != 0 ? w1 * detail::to_double(o1(b, h, i, d)) : 0.0;
          const double y = w2 != 0 ? w2 * detail::to_double(o2(b, h, i, d)) : 0.0;
          out(b, h, i, d) = static_cast<std::remove_cv_t<TO>>(x + y);
        }
      }
  return lse;
}

/// Entropy of the row-normalised non-negative weights w (unnormalised variants:
/// sigmoid, linear, LLN). Zero weights are skipped; a row without mass (all zero) has no entropy (NaN);
/// a negative or NaN weight gives NaN.
inline double entropy_from_weights(std::span<const double> w) noexcept { return detail::entropy_of(w); }

/// Softmax entropy of one row of logits and its gradient.
struct entropy_gradient_result {
  double entropy = 0;         ///< H = −Σ p log p
  std::vector<double> grad;   ///< ∂H/∂s_j = −p_j (s_j − s̄), s̄ = Σ p s; 0 for masked keys
};

/// H and ∂H/∂s of p = softmax(s) for one row (−inf = masked key). The gradient sums
/// to 0 and vanishes for a uniform row (regularisers: AEM, EAR, entropic overload).
inline entropy_gradient_result entropy_gradient(std::span<const double> s) {
  entropy_gradient_result r;
  r.grad.assign(s.size(), 0.0);
  double m = detail::ninf;
  for (double x : s) m = std::max(m, x);
  if (m == detail::ninf) return r;
  double l = 0;
  for (double x : s)
    if (x != detail::ninf) l += std::exp(x - m);
  const double lse = m + std::log(l);
  double sbar = 0;
  for (double x : s)
    if (x != detail::ninf) {
      const double p = std::exp(x - lse);
      sbar += p * x;
      r.entropy -= p * (x - lse);
    }
  for (std::size_t j = 0; j < s.size(); ++j)
    if (s[j] != detail::ninf) r.grad[j] = -std::exp(s[j] - lse) * (s[j] - sbar);
  return r;
}

/// Thresholds of the per-head statistics.
struct stats_config {
  double sink_eps = 0.3;        ///< a row / head is a sink if its key-0 probability > sink_eps
  double collapse_below = 0.1;  ///< collapse flag: mean Ĥ < collapse_below
  double overload_above = 0.8;  ///< overload flag: mean Ĥ > overload_above (1 − γ, γ = 0.2)
};

/// Statistics of one query head over all batches and rows with at least one visible
/// key (fully-masked rows are excluded; `rows` counts the included ones). The Ĥ
/// statistics and the collapse / overload flags use only the `norm_rows` rows with
/// n_i ≥ 2 (Ĥ = H / log n_i is undefined for n_i = 1); NaN / false when there are none.
struct head_summary {
  index_t head = 0;
  index_t rows = 0;
  index_t norm_rows = 0;
  double mean_entropy = 0, min_entropy = 0, max_entropy = 0;
  double mean_norm_entropy = 0, min_norm_entropy = 0, max_norm_entropy = 0;
  double sink_mass = 0;       ///< mean key-0 probability
  double sink_row_rate = 0;   ///< share of rows with key-0 probability > sink_eps
  double topk_mass = 0;       ///< mean top-k cumulative mass (NaN if not computed)
  bool sink = false;          ///< sink_mass > sink_eps
  bool collapse = false;
  bool overload = false;
};

struct stats_summary {
  std::vector<head_summary> heads;
  double norm_entropy_spread = 0;  ///< population std of the heads' mean Ĥ (heads with norm_rows > 0)
  double sink_rate = 0;            ///< share of heads with sink_mass > sink_eps
};

/// Per-head statistics of a reference result.
inline stats_summary statistics(const result& res, const stats_config& cfg = {}) {
  stats_summary out;
  const problem_shape& sh = res.shape;
  double sum_mean = 0, sum_mean2 = 0, sinks = 0;
  index_t counted_heads = 0, norm_heads = 0;
  for (index_t h = 0; h < sh.q_heads; ++h) {
    head_summary hs;
    hs.head = h;
    hs.min_entropy = hs.min_norm_entropy = std::numeric_limits<double>::infinity();
    hs.max_entropy = hs.max_norm_entropy = -std::numeric_limits<double>::infinity();
    double topk = 0, sink_rows = 0;
    for (index_t b = 0; b < sh.batch; ++b)
      for (index_t i = 0; i < sh.q_len; ++i) {
        const auto r = static_cast<std::size_t>(res.row(b, h, i));
        if (res.allowed[r] < 1) continue;
        ++hs.rows;
        const double H = res.entropy[r], Hn = res.norm_entropy[r];
        hs.mean_entropy += H;
        hs.min_entropy = std::min(hs.min_entropy, H);
        hs.max_entropy = std::max(hs.max_entropy, H);
        if (res.allowed[r] >= 2) {
          ++hs.norm_rows;
          hs.mean_norm_entropy += Hn;
          hs.min_norm_entropy = std::min(hs.min_norm_entropy, Hn);
          hs.max_norm_entropy = std::max(hs.max_norm_entropy, Hn);
        }
        hs.sink_mass += res.first_prob[r];
        if (res.first_prob[r] > cfg.sink_eps) sink_rows += 1;
        if (!res.topk_mass.empty()) topk += res.topk_mass[r];
      }
    if (hs.rows > 0) {
      const auto n = static_cast<double>(hs.rows);
      hs.mean_entropy /= n;
      hs.sink_mass /= n;
      hs.sink_row_rate = sink_rows / n;
      hs.topk_mass = res.topk_mass.empty() ? detail::qnan : topk / n;
      hs.sink = hs.sink_mass > cfg.sink_eps;
      sinks += hs.sink ? 1 : 0;
      ++counted_heads;
      if (hs.norm_rows > 0) {
        hs.mean_norm_entropy /= static_cast<double>(hs.norm_rows);
        hs.collapse = hs.mean_norm_entropy < cfg.collapse_below;
        hs.overload = hs.mean_norm_entropy > cfg.overload_above;
        sum_mean += hs.mean_norm_entropy;
        sum_mean2 += hs.mean_norm_entropy * hs.mean_norm_entropy;
        ++norm_heads;
      } else {
        hs.mean_norm_entropy = hs.min_norm_entropy = hs.max_norm_entropy = detail::qnan;
      }
    } else {
      hs.min_entropy = hs.max_entropy = hs.min_norm_entropy = hs.max_norm_entropy = 0;
      hs.topk_mass = detail::qnan;
    }
    out.heads.push_back(hs);
  }
  if (counted_heads > 0) out.sink_rate = sinks / static_cast<double>(counted_heads);
  if (norm_heads > 0) {
    const auto n = static_cast<double>(norm_heads);
    const double mean = sum_mean / n;
    out.norm_entropy_spread = std::sqrt(std::max(0.0, sum_mean2 / n - mean * mean));
  }
  return out;
}

}  // namespace attnkit::reference
