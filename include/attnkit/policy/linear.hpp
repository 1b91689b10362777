#pragma once
/// \file
/// Linear (kernelised) attention: o_i = φ(q_i)ᵀS_i / (φ(q_i)ᵀz_i + ε) with
/// S_i = Σ_{j∈A_i} w_ij φ(k_j)v_jᵀ and z_i = Σ_{j∈A_i} w_ij φ(k_j). Non-causal: A_i =
/// all valid keys, w = 1. Causal (either alignment): A_i = the prefix [0, p_i) with
/// the current token included (p_i = i+1 top-left, i+Δ+1 bottom-right), and with a
/// per-head decay λ the weights are w_ij = λ^{p_i−1−j}, i.e. the recurrence
/// S_i = λ S_{i−1} + φ(k_i)v_iᵀ (Lightning/RetNet style). Decay needs causal masking.
/// Feature maps are value types; user functors (e.g. learned Hedgehog maps) satisfy
/// the `feature_map` concept, and for the backward pass the `differentiable` one
/// (a `vjp` member).
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <numbers>
#include <span>
#include <vector>

#include "../core/tensor_view.hpp"
#include "family.hpp"
#include "random.hpp"

namespace attnkit {
namespace feature {

/// Where one token vector sits, handed to every feature-map call.
///
/// Positions follow ALiBi's convention (core/options.hpp): a key at index j has
/// position j; a query at index i has position i + Δ, Δ = lk − Lq (lk = the
/// batch's valid key length), so a decoding query (Lq = 1) sits after the cache.
struct context {
  index_t position = 0;  ///< position of the token (see above)
  index_t q_len = 0;     ///< Lq of the call
  index_t k_len = 0;     ///< valid key length of the batch (key_lengths[b] or Lk)
  bool query = true;     ///< true: a query vector, false: a key vector
  double scale = 1.0;    ///< τ = options.scale or 1/sqrt(D) (FAVOR+ uses it)
};

/// A feature map usable with element type T (double in the reference, float in the
/// SIMD kernels — implement `operator()` as a template to serve both):
///   index_t output_dim(index_t d) const                  — feature dimension M for input dim d
///   void operator()(const T* x, index_t d, const context&, T* out) const
///       maps one contiguous token vector x[0..d) to out[0..M).
template <class F, class T = double>
concept feature_map = std::copyable<F> && requires(const F& f, const T* x, T* out, index_t d, const context& c) {
  { f.output_dim(d) } -> std::convertible_to<index_t>;
  f(x, d, c, out);
};

/// A feature map the backward pass can differentiate: it also has
///   void vjp(const T* x, index_t d, const context&, const T* dphi, T* dx) const
///       dx[0..d) += Jᵀ·dphi, J = ∂φ(x)/∂x the M × d Jacobian at x (dphi: M values).
/// Every built-in map has it; a user's map needs it for attention_backward (the
/// oracle reference::attention_backward says so at compile time). The context is
/// the forward's (positions, τ) and is a constant of the call. At a kink (relu at
/// 0) the maps use the one-sided derivative of their `operator()` branch.
template <class F, class T = double>
concept differentiable = feature_map<F, T> && requires(const F& f, const T* x, const T* g, T* dx, index_t d,
                                                       const context& c) { f.vjp(x, d, c, g, dx); };

/// φ(x) = elu(x) + 1 (Katharopoulos et al. 2020). No 1/sqrt(D): options.scale is ignored.
struct elu_plus_one {
  index_t output_dim(index_t d) const noexcept { return d; }
  template <class T>
  void operator()(const T* x, index_t d, const context&, T* out) const noexcept {
    for (index_t i = 0; i < d; ++i) out[i] = x[i] > T(0) ? x[i] + T(1) : std::exp(x[i]);
  }
  /// φ'(x) = 1 for x > 0, e^x otherwise.
  template <class T>
  void vjp(const T* x, index_t d, const context&, const T* dphi, T* dx) const noexcept {
    for (index_t i = 0; i < d; ++i) dx[i] += dphi[i] * (x[i] > T(0) ? T(1) : std::exp(x[i]));
  }
};

/// φ(x) = max(x, 0). options.scale is ignored.
struct relu {
  index_t output_dim(index_t d) const noexcept { return d; }
  template <class T>
  void operator()(const T* x, index_t d, const context&, T* out) const noexcept {
    for (index_t i = 0; i < d; ++i) out[i] = x[i] > T(0) ? x[i] : T(0);
  }
  /// φ'(x) = 1 for x > 0, 0 otherwise.
  template <class T>
  void vjp(const T* x, index_t d, const context&, const T* dphi, T* dx) const noexcept {
    for (index_t i = 0; i < d; ++i)
      if (x[i] > T(0)) dx[i] += dphi[i];
  }
};

/// φ(x) = x (weights may be negative; use with normalize = false or with care).
/// options.scale is ignored.
struct identity {
  index_t output_dim(index_t d) const noexcept { return d; }
  template <class T>
  void operator()(const T* x, index_t d, const context&, T* out) const noexcept {
    for (index_t i = 0; i < d; ++i) out[i] = x[i];
  }
  template <class T>
  void vjp(const T*, index_t d, const context&, const T* dphi, T* dx) const noexcept {
    for (index_t i = 0; i < d; ++i) dx[i] += dphi[i];
  }
};

/// FAVOR+ positive random features (Choromanski et al. 2021):
/// φ(x) = exp(W x' − |x'|²/2) / sqrt(M), x' = x·τ^{1/2}, so E[φ(q)·φ(k)] = exp(τ q·k).
/// `projection` is row-major [num_features, D] (e.g. from orthogonal_projection) and
/// must outlive the call.
struct favor_plus {
  const float* projection = nullptr;
  index_t num_features = 0;

  index_t output_dim(index_t) const noexcept { return num_features; }
  template <class T>
  void operator()(const T* x, index_t d, const context& c, T* out) const noexcept {
    const double s = std::sqrt(c.scale);
    double sq = 0;
    for (index_t i = 0; i < d; ++i) sq += (s * x[i]) * (s * x[i]);
    const double norm = 1.0 / std::sqrt(static_cast<double>(num_features));
    for (index_t m = 0; m < num_features; ++m) {
      const float* w = projection + m * d;
      double dot = 0;
      for (index_t i = 0; i < d; ++i) dot += static_cast<double>(w[i]) * (s * x[i]);
      out[m] = static_cast<T>(std::exp(dot - 0.5 * sq) * norm);
    }
  }
  /// ∂φ_m/∂x = φ_m·(s·w_m − s²·x), s = τ^{1/2}: dx += s·Σ_m g_m w_m − s²·x·Σ_m g_m, g_m = dphi_m·φ_m.
  template <class T>
  void vjp(const T* x, index_t d, const context& c, const T* dphi, T* dx) const noexcept {
    const double s = std::sqrt(c.scale);
    double sq = 0;
    for (index_t i = 0; i < d; ++i) sq += (s * x[i]) * (s * x[i]);
    const double norm = 1.0 / std::sqrt(static_cast<double>(num_features));
    std::vector<double> acc(static_cast<std::size_t>(d), 0.0);
    double gsum = 0;
    for (index_t m = 0; m < num_features; ++m) {
      const float* w = projection + m * d;
      double dot = 0;
      for (index_t i = 0; i < d; ++i) dot += static_cast<double>(w[i]) * (s * x[i]);
      const double gm = static_cast<double>(dphi[m]) * std::exp(dot - 0.5 * sq) * norm;
      gsum += gm;
      for (index_t i = 0; i < d; ++i) acc[static_cast<std::size_t>(i)] += gm * static_cast<double>(w[i]);
    }
    for (index_t i = 0; i < d; ++i)
      dx[i] += static_cast<T>(s * acc[static_cast<std::size_t>(i)] - s * s * static_cast<double>(x[i]) * gsum);
  }
};

/// cosFormer re-weighting (Qin et al. 2022) on a ReLU base:
/// φ(x) = [relu(x)·cos(π·pos/(2M)), relu(x)·sin(π·pos/(2M))] (dimension 2D), so
/// φ(q_i)·φ(k_j) = relu(q_i)·relu(k_j)·cos(π(pos_i − pos_j)/(2M)).
/// M = `max_len` if > 0, else max(Lq, lk) of the call. options.scale is ignored.
struct cosformer {
  index_t max_len = 0;

  index_t output_dim(index_t d) const noexcept { return 2 * d; }
  template <class T>
  void operator()(const T* x, index_t d, const context& c, T* out) const noexcept {
    const index_t M = max_len > 0 ? max_len : std::max(c.q_len, c.k_len);
    const double a = std::numbers::pi * static_cast<double>(c.position) / (2.0 * static_cast<double>(std::max<index_t>(M, 1)));
    const T cs = static_cast<T>(std::cos(a)), sn = static_cast<T>(std::sin(a));
    for (index_t i = 0; i < d; ++i) {
      const T r = x[i] > T(0) ? x[i] : T(0);
      out[i] = r * cs;
      out[d + i] = r * sn;
    }
  }
  /// The position is a constant: dx_i += relu'(x_i)·(dphi_i·cos + dphi_{d+i}·sin).
  template <class T>
  void vjp(const T* x, index_t d, const context& c, const T* dphi, T* dx) const noexcept {
    const index_t M = max_len > 0 ? max_len : std::max(c.q_len, c.k_len);
    const double a = std::numbers::pi * static_cast<double>(c.position) / (2.0 * static_cast<double>(std::max<index_t>(M, 1)));
    const T cs = static_cast<T>(std::cos(a)), sn = static_cast<T>(std::sin(a));
    for (index_t i = 0; i < d; ++i)
      if (x[i] > T(0)) dx[i] += dphi[i] * cs + dphi[d + i] * sn;
  }
};

/// Gaussian orthogonal random features, Performer-style, row-major [num_features, dim]:
/// blocks of `dim` rows are orthonormalised Gaussian vectors (Gram–Schmidt in double),
/// each row rescaled by the norm of an independent Gaussian `dim`-vector so that its
/// length is distributed like an unstructured Gaussian row. Deterministic from `seed`
/// (counter-based, identical on every standard library).
inline std::vector<float> orthogonal_projection(index_t num_features, index_t dim, std::uint64_t seed) {
  std::vector<float> w(static_cast<std::size_t>(std::max<index_t>(num_features, 0) * std::max<index_t>(dim, 0)));
  if (num_features <= 0 || dim <= 0) return w;
  std::uint64_t counter = 0;
  std::vector<double> blk(static_cast<std::size_t>(dim * dim));
  for (index_t r0 = 0; r0 < num_features; r0 += dim) {
    const index_t rows = std::min(dim, num_features - r0);
    for (auto& e : blk) e = random::normal(seed, 0x0f0a11ULL, 0, counter++);
    for (index_t r = 0; r < dim; ++r) {  // modified Gram–Schmidt on the rows
      double* x = blk.data() + r * dim;
      for (index_t p = 0; p < r; ++p) {
        const double* y = blk.data() + p * dim;
        double dot = 0;
        for (index_t i = 0; i < dim; ++i) dot += x[i] * y[i];
        for (index_t i = 0; i < dim; ++i) x[i] -= dot * y[i];
      }
      double n = 0;
      for (index_t i = 0; i < dim; ++i) n += x[i] * x[i];
      n = std::sqrt(n);
      for (index_t i = 0; i < dim; ++i) x[i] = n > 0 ? x[i] / n : 0.0;
    }
    for (index_t r = 0; r < rows; ++r) {
      double len = 0;
      for (index_t i = 0; i < dim; ++i) {
        const double g = random::normal(seed, 0x0f0a11ULL, 1, counter++);
        len += g * g;
      }
      len = std::sqrt(len);
      for (index_t i = 0; i < dim; ++i)
        w[static_cast<std::size_t>((r0 + r) * dim + i)] = static_cast<float>(blk[static_cast<std::size_t>(r * dim + i)] * len);
    }
  }
  return w;
}

}  // namespace feature

/// Linear attention policy. `phi` is applied to queries and keys alike; `eps` is
/// added to the denominator; `normalize = false` drops the denominator
/// (TransNormer / Lightning style); `decay` holds one λ per query head (causal only,
/// empty = none) and must outlive the call.
template <class F>
  requires(feature::feature_map<F, double> || feature::feature_map<F, float>)
struct linear {
  using family = attnkit::family::kernelized;
  F phi{};
  double eps = 1e-6;
  bool normalize = true;
  std::span<const float> decay{};
};

/// `attnkit::linear{attnkit::feature::elu_plus_one{}}` deduces linear<elu_plus_one>.
template <class F, class... Rest>
linear(F, Rest...) -> linear<F>;

/// True for every linear<F>.
template <class P>
inline constexpr bool is_linear_v = false;
template <class F>
inline constexpr bool is_linear_v<linear<F>> = true;

}  // namespace attnkit
