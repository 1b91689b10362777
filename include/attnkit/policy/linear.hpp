#pragma once
/// \file
/// Linear (kernelised) attention: o_i = φ(q_i)ᵀS_i / (φ(q_i)ᵀz_i + ε) with
/// S_i = Σ_{j∈A_i} w_ij φ(k_j)v_jᵀ and z_i = Σ_{j∈A_i} w_ij φ(k_j). Non-causal: A_i =
/// all valid keys, w = 1. Causal (either alignment): A_i = the prefix [0, p_i) with
/// the current token included (p_i = i+1 top-left, i+Δ+1 bottom-right), and with a
/// per-head decay λ the weights are w_ij = λ^{p_i−1−j}, i.e. the recurrence
/// S_i = λ S_{i−1} + φ(k_i)v_iᵀ (Lightning/RetNet style). Decay needs causal masking.
/// Feature maps are value types in one of the two forms of policy/feature_map.hpp:
/// elementwise (elu+1, relu, identity, or a user's f written in attnkit::math) or
/// row maps (FAVOR+, cosFormer, learned Hedgehog-style maps); built-in and user maps
/// take the same path through kernels, oracle and backward.
#include <algorithm>
#include <cmath>
#include <concepts>
#include <cstdint>
#include <numbers>
#include <span>
#include <string>
#include <vector>

#include "../core/error.hpp"
#include "../core/tensor_view.hpp"
#include "family.hpp"
#include "feature_map.hpp"
#include "random.hpp"

namespace attnkit {
namespace feature {

/// φ(x) = elu(x) + 1 (Katharopoulos et al. 2020). No 1/sqrt(D): options.scale is ignored.
struct elu_plus_one {
  template <class V>
  V operator()(V x) const noexcept {
    return math::select(x > V(0), x + V(1), math::exp(x));
  }
  /// φ'(x) = 1 for x > 0, e^x otherwise.
  template <class V>
  V derivative(V x) const noexcept {
    return math::select(x > V(0), V(1), math::exp(x));
  }
};

/// φ(x) = max(x, 0); NaN stays NaN. options.scale is ignored.
struct relu {
  template <class V>
  V operator()(V x) const noexcept {
    return math::max(V(0), x);  // x second: a NaN x is kept
  }
  /// φ'(x) = 1 for x > 0, 0 otherwise.
  template <class V>
  V derivative(V x) const noexcept {
    return math::select(x > V(0), V(1), V(0));
  }
};

/// φ(x) = x (weights may be negative; use with normalize = false or with care).
/// options.scale is ignored.
struct identity {
  template <class V>
  V operator()(V x) const noexcept {
    return x;
  }
  template <class V>
  V derivative(V) const noexcept {
    return V(1);
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
  /// φ_m = exp(s·w_m·x − s²|x|²/2)/sqrt(M), s = τ^{1/2}: M dot products of length d.
  template <class T>
  void operator()(const T* x, index_t d, const context& c, T* out) const noexcept {
    const T s = static_cast<T>(std::sqrt(c.scale));
    const T half_sq = T(0.5) * static_cast<T>(c.scale) * math::dot(x, x, d);
    const T norm = static_cast<T>(1.0 / std::sqrt(static_cast<double>(num_features)));
    for (index_t m = 0; m < num_features; ++m)
      out[m] = math::exp(static_cast<T>(math::dot(projection + m * d, x, d)) * s - half_sq) * norm;
  }
  /// ∂φ_m/∂x = φ_m·(s·w_m − s²·x): dx += s·Σ_m g_m w_m − s²·x·Σ_m g_m, g_m = dphi_m·φ_m.
  template <class T>
  void vjp(const T* x, index_t d, const context& c, const T* dphi, T* dx) const noexcept {
    const T s = static_cast<T>(std::sqrt(c.scale));
    const T half_sq = T(0.5) * static_cast<T>(c.scale) * math::dot(x, x, d);
    const T norm = static_cast<T>(1.0 / std::sqrt(static_cast<double>(num_features)));
    T gsum = 0;
    for (index_t m = 0; m < num_features; ++m) {
      const T gm = dphi[m] * math::exp(static_cast<T>(math::dot(projection + m * d, x, d)) * s - half_sq) * norm;
      gsum += gm;
      math::axpy(s * gm, projection + m * d, dx, d);
    }
    math::axpy(-static_cast<T>(c.scale) * gsum, x, dx, d);
  }
  /// The projection must exist (checked before anything is written).
  void check(const call&) const {
    if (num_features <= 0 || projection == nullptr)
      attnkit::detail::fail("policy.phi", "projection", "num_features > 0 and a non-null [num_features, D] matrix",
                            num_features);
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
    const double a = angle(c);
    math::apply([](auto v) { return math::max(decltype(v)(0), v); }, x, out, d);
    math::scale(out, static_cast<T>(std::sin(a)), out + d, d);
    math::scale(out, static_cast<T>(std::cos(a)), out, d);
  }
  /// The position is a constant: dx_i += relu'(x_i)·(dphi_i·cos + dphi_{d+i}·sin).
  template <class T>
  void vjp(const T* x, index_t d, const context& c, const T* dphi, T* dx) const noexcept {
    const double a = angle(c);
    const T cs = static_cast<T>(std::cos(a)), sn = static_cast<T>(std::sin(a));
    for (index_t i = 0; i < d; ++i)
      if (x[i] > T(0)) dx[i] += dphi[i] * cs + dphi[d + i] * sn;
  }
  /// A stream (linear_step) has no known length: it needs max_len.
  void check(const call& c) const {
    if (c.stream && max_len <= 0)
      attnkit::detail::fail("policy.phi.max_len", "", "> 0 (a stream has no known length for cosFormer's M)", max_len);
  }

 private:
  double angle(const context& c) const noexcept {
    const index_t M = max_len > 0 ? max_len : std::max(c.q_len, c.k_len);
    return std::numbers::pi * static_cast<double>(c.position) / (2.0 * static_cast<double>(std::max<index_t>(M, 1)));
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

/// Linear attention policy. `phi` (a feature map, policy/feature_map.hpp) is
/// applied to queries and keys alike; `eps` is added to the denominator;
/// `normalize = false` drops the denominator (TransNormer / Lightning style);
/// `decay` holds one λ per query head (causal only, empty = none) and must outlive
/// the call.
template <class F>
struct linear {
  static_assert(feature::detail::check_feature_map<F>());
  using family = attnkit::family::kernelized;
  F phi{};
  double eps = 1e-6;
  bool normalize = true;
  std::span<const float> decay{};
};

/// `attnkit::linear{attnkit::feature::elu_plus_one{}}` deduces linear<elu_plus_one>.
template <class F, class... Rest>
linear(F, Rest...) -> linear<F>;

namespace detail {
/// linear<F>'s own fields, checked by the kernels and the oracle alike before
/// anything is written: one decay per query head, and decay only with causal
/// masking (or in a stream, linear_step); eps >= 0; the feature map's own `check`;
/// a positive feature dimension.
template <class F>
void check_linear_fields(const linear<F>& pol, index_t q_heads, index_t head_dim, bool causal, bool stream) {
  if (!pol.decay.empty()) {
    if (static_cast<index_t>(pol.decay.size()) != q_heads)
      fail("policy.decay", "size", std::to_string(q_heads) + " (= q.heads)", pol.decay.size());
    if (!causal && !stream)
      fail("policy.decay", "", "empty unless options.causal is set (decay is causal only)", pol.decay.size());
  }
  if (!(pol.eps >= 0)) fail("policy.eps", "", ">= 0", pol.eps);
  feature::check(pol.phi, feature::call{head_dim, stream});
  const index_t M = feature::output_dim(pol.phi, head_dim);
  if (M <= 0) fail("policy.phi", "output_dim", "> 0", M);
}
}  // namespace detail

/// True for every linear<F>.
template <class P>
inline constexpr bool is_linear_v = false;
template <class F>
inline constexpr bool is_linear_v<linear<F>> = true;

}  // namespace attnkit
