#pragma once
/// \file
/// Entropy regularisers on attention logits: value and gradient w.r.t. the logits,
/// row-wise, O(n) per row, in double precision whatever the storage type.
///
/// For one row with logits s_j over its allowed keys, p = softmax(s):
///   H = −Σ_j p_j log p_j = LSE − s̄,   s̄ = Σ_j p_j s_j,
///   ∂H/∂s_j = −p_j (s_j − s̄).
/// Masked keys (mask false, or logit −inf) are not categories; their gradient is 0.
/// Rows with no allowed key have H = NaN, are left out of every mean, and get a zero
/// gradient.
///
/// Losses provided (λ ≥ 0 is the caller's weight):
///  * mean_entropy_loss      λ · mean_i H_i          — minimising it sharpens
///    attention (attention-entropy minimisation, "AEM").
///  * negative_entropy_loss  −λ · mean_i H_i         — minimising it spreads attention
///    (entropy-based attention regularisation, "EAR", Attanasio et al. 2022).
///  * entropy_band_penalty   the head-wise band penalty of Jha & Reagen ("Entropy-
///    guided attention for private LLMs", 2025, Algorithm 1), see band_config.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <limits>
#include <span>
#include <utility>
#include <stdexcept>
#include <vector>

#include "../core/tensor_view.hpp"

namespace attnkit {

/// Result of one row.
struct row_entropy_value {
  double entropy = std::numeric_limits<double>::quiet_NaN();  ///< H (NaN: no allowed key)
  double lse = -std::numeric_limits<double>::infinity();      ///< log-sum-exp of the allowed logits
  index_t allowed = 0;                                        ///< n_i
};

namespace detail {
template <class T>
row_entropy_value softmax_row_entropy_impl(const T* s, index_t n, const bool* mask, T* grad, double grad_scale) {
  constexpr double ninf = -std::numeric_limits<double>::infinity();
  auto ok = [&](index_t j) { return (mask == nullptr || mask[j]) && static_cast<double>(s[j]) != ninf; };
  row_entropy_value r;
  double m = ninf;
  for (index_t j = 0; j < n; ++j)
    if (ok(j)) {
      ++r.allowed;
      m = std::max(m, static_cast<double>(s[j]));
    }
  if (r.allowed == 0) {
    if (grad)
      for (index_t j = 0; j < n; ++j) grad[j] = T(0);
    return r;
  }
  // l = Σ e^{s−m}, u = Σ e^{s−m}(s−m): s̄ − m = u/l, H = log l − u/l (both terms ≥ 0).
  double l = 0, u = 0;
  for (index_t j = 0; j < n; ++j)
    if (ok(j)) {
      const double x = static_cast<double>(s[j]) - m, e = std::exp(x);
      l += e;
      u += e * x;
    }
  r.lse = m + std::log(l);
  r.entropy = std::log(l) - u / l;
  if (grad) {
    const double sbar = u / l;  // relative to m
    for (index_t j = 0; j < n; ++j) {
      if (!ok(j)) {
        grad[j] = T(0);
        continue;
      }
      const double x = static_cast<double>(s[j]) - m;
      grad[j] = static_cast<T>(-grad_scale * std::exp(x - std::log(l)) * (x - sbar));
    }
  }
  return r;
}
}  // namespace detail

/// Softmax entropy of one row of logits; when `grad` is non-empty (same size) it is
/// overwritten with grad_scale · ∂H/∂s_j (0 on masked keys). `mask`: empty = all
/// keys allowed, else the same size (true = allowed). Logits of −inf are masked.
inline row_entropy_value softmax_row_entropy(std::span<const double> logits, std::span<const bool> mask = {},
                                             std::span<double> grad = {}, double grad_scale = 1.0) {
  if ((!mask.empty() && mask.size() != logits.size()) || (!grad.empty() && grad.size() != logits.size()))
    throw std::invalid_argument("attnkit::softmax_row_entropy: mask/grad size differs from the logits");
  return detail::softmax_row_entropy_impl(logits.data(), static_cast<index_t>(logits.size()),
                                          mask.empty() ? nullptr : mask.data(), grad.empty() ? nullptr : grad.data(),
                                          grad_scale);
}
inline row_entropy_value softmax_row_entropy(std::span<const float> logits, std::span<const bool> mask = {},
                                             std::span<float> grad = {}, double grad_scale = 1.0) {
  if ((!mask.empty() && mask.size() != logits.size()) || (!grad.empty() && grad.size() != logits.size()))
    throw std::invalid_argument("attnkit::softmax_row_entropy: mask/grad size differs from the logits");
  return detail::softmax_row_entropy_impl(logits.data(), static_cast<index_t>(logits.size()),
                                          mask.empty() ? nullptr : mask.data(), grad.empty() ? nullptr : grad.data(),
                                          grad_scale);
}

/// A block of logit rows (e.g. one head: Lq rows × Lk keys), row-major.
template <class T>
struct logit_rows {
  std::span<const T> logits;      ///< rows × n
  index_t n = 0;                  ///< keys per row
  std::span<const bool> mask{};   ///< empty: all allowed; n: one row broadcast; rows × n
  std::span<T> grad{};            ///< empty: no gradient; else rows × n, overwritten
  index_t rows() const noexcept { return n > 0 ? static_cast<index_t>(logits.size()) / n : 0; }
};

namespace detail {
template <class T>
void check_rows(const logit_rows<T>& x) {
  if (x.n <= 0 || x.logits.size() % static_cast<std::size_t>(x.n) != 0)
    throw std::invalid_argument("attnkit: logit_rows.n must be > 0 and divide logits.size()");
  if (!x.mask.empty() && x.mask.size() != static_cast<std::size_t>(x.n) && x.mask.size() != x.logits.size())
    throw std::invalid_argument("attnkit: logit_rows.mask must be empty, n, or rows × n");
  if (!x.grad.empty() && x.grad.size() != x.logits.size())
    throw std::invalid_argument("attnkit: logit_rows.grad must be empty or rows × n");
}

/// Mean entropy over the counted rows of x; if `grad_coef` is finite, writes
/// grad_coef / N · ∂H_i/∂s into x.grad. Returns {mean H, N}.
template <class T>
std::pair<double, index_t> mean_entropy(const logit_rows<T>& x, double grad_coef) {
  check_rows(x);
  const index_t R = x.rows(), n = x.n;
  auto mask_row = [&](index_t i) -> const bool* {
    if (x.mask.empty()) return nullptr;
    return x.mask.size() == static_cast<std::size_t>(n) ? x.mask.data() : x.mask.data() + i * n;
  };
  // Pass 1: count and sum (N is needed before the gradient scale is known).
  double sum = 0;
  index_t N = 0;
  for (index_t i = 0; i < R; ++i) {
    const row_entropy_value v = softmax_row_entropy_impl<T>(x.logits.data() + i * n, n, mask_row(i), nullptr, 0.0);
    if (v.allowed > 0) sum += v.entropy, ++N;
  }
  const double mean = N ? sum / static_cast<double>(N) : std::numeric_limits<double>::quiet_NaN();
  if (!x.grad.empty()) {
    const double scale = N ? grad_coef / static_cast<double>(N) : 0.0;
    for (index_t i = 0; i < R; ++i)
      softmax_row_entropy_impl<T>(x.logits.data() + i * n, n, mask_row(i), x.grad.data() + i * n, scale);
  }
  return {mean, N};
}
}  // namespace detail

/// AEM-style loss λ · mean_i H_i over the rows with n_i ≥ 1; gradient (if x.grad is
/// set) λ/N · ∂H_i/∂s_ij. NaN (and zero gradient) if no row has an allowed key.
template <class T>
double mean_entropy_loss(const logit_rows<T>& x, double lambda = 1.0) {
  return lambda * detail::mean_entropy(x, lambda).first;
}

/// EAR-style loss −λ · mean_i H_i (minimising it raises the entropy); gradient
/// −λ/N · ∂H_i/∂s_ij.
template <class T>
double negative_entropy_loss(const logit_rows<T>& x, double lambda = 1.0) {
  return -lambda * detail::mean_entropy(x, -lambda).first;
}

/// Head-wise entropy band penalty of Jha & Reagen (2025, Algorithm 1, and their
/// reference implementation). For each head h of one layer:
///   E_h = mean_i H_i                      (mean over the head's rows with n_i ≥ 1)
///   δ_h = E_h − θ_h                       (θ_h: the head's threshold, in nats; the
///                                          paper learns θ_h = w_h · E_max)
///   pen_h = δ_h² · 1(|δ_h| > γ · E_max)   (squared: the paper's form; default)
///   pen_h = max(0, |δ_h| − γ · E_max)     (hinge: continuous alternative)
///   P = λ · mean_h pen_h
/// with tolerance γ (default 0.2) and E_max = log n (n keys per row: the maximum
/// entropy of the context; `max_entropy` > 0 overrides). The paper then averages P
/// over layers: call once per layer and average. Note the squared form jumps at
/// |δ| = γ·E_max (it is not continuous there): finite differences must stay away.
struct band_config {
  double lambda = 1.0;
  double gamma = 0.2;
  double max_entropy = 0.0;  ///< E_max; 0: log(n) of the first head
  enum class shape { squared, hinge } form = shape::squared;
};

/// Band penalty over the heads of one layer (one logit_rows per head, θ per head).
/// Gradients w.r.t. the logits go to each head's grad (if set); ∂P/∂θ_h to
/// theta_grad (if non-empty, size = heads). Heads with no allowed row contribute 0.
template <class T>
double entropy_band_penalty(std::span<const logit_rows<T>> heads, std::span<const double> theta,
                            const band_config& cfg = {}, std::span<double> theta_grad = {}) {
  if (theta.size() != heads.size())
    throw std::invalid_argument("attnkit::entropy_band_penalty: theta must have one value per head");
  if (!theta_grad.empty() && theta_grad.size() != heads.size())
    throw std::invalid_argument("attnkit::entropy_band_penalty: theta_grad must be empty or one per head");
  if (heads.empty()) return 0.0;
  const double emax = cfg.max_entropy > 0 ? cfg.max_entropy : std::log(static_cast<double>(heads[0].n));
  const double margin = cfg.gamma * emax;
  const double per_head = cfg.lambda / static_cast<double>(heads.size());
  double total = 0;
  for (std::size_t h = 0; h < heads.size(); ++h) {
    logit_rows<T> value_only = heads[h];
    value_only.grad = {};
    const auto [E, N] = detail::mean_entropy(value_only, 0.0);
    double pen = 0, dpen = 0;  // penalty and d pen / d E
    if (N > 0) {
      const double d = E - theta[h];
      if (cfg.form == band_config::shape::squared) {
        if (std::abs(d) > margin) pen = d * d, dpen = 2 * d;
      } else {
        if (std::abs(d) > margin) pen = std::abs(d) - margin, dpen = d > 0 ? 1.0 : -1.0;
      }
    }
    total += per_head * pen;
    if (!theta_grad.empty()) theta_grad[h] = -per_head * dpen;
    if (!heads[h].grad.empty()) detail::mean_entropy(heads[h], per_head * dpen);
  }
  return total;
}

/// Convenience overload for a vector of heads.
template <class T>
double entropy_band_penalty(const std::vector<logit_rows<T>>& heads, std::span<const double> theta,
                            const band_config& cfg = {}, std::span<double> theta_grad = {}) {
  return entropy_band_penalty(std::span<const logit_rows<T>>(heads), theta, cfg, theta_grad);
}

}  // namespace attnkit
