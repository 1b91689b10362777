// Variants written OUTSIDE the library against its open interfaces (docs/extending.md):
// each is one small struct; the kernels, the float64 oracle and the entropy observer
// (for feature maps: the exact entropy diagnostic) all take it as it is. Shared by examples/custom_variants.cpp (checks each against
// the oracle) and bench/bench_custom.cpp (times each beside the built-in variant
// doing the same work).
#pragma once

#include <attnkit/attnkit.hpp>

#include <cmath>
#include <cstdint>
#include <vector>

namespace custom {

using attnkit::index_t;

/// Softplus attention with a length scale, ℓ1-normalised rows ("Softplus Attention
/// with Re-weighting Boosts Length Extrapolation", LSSA): w = softplus(log(Lk)·s),
/// o_i = Σ w v / Σ w. Lk is the batch's key length (our reading of the paper's
/// length factor; a per-row length would need per-row parameters).
struct softplus_attention {
  using family = attnkit::family::quadratic;
  static constexpr auto normalization = attnkit::normalization::sum;
  struct params {
    double scale;
  };
  params resolve(const attnkit::weight_context& c) const {
    return {std::log(static_cast<double>(c.key_length > 1 ? c.key_length : 2))};
  }
  template <class V>
  V weight(V s, const params& p) const {
    return attnkit::math::softplus(s * V(p.scale));
  }
  template <class V>
  V derivative(V s, const params& p) const {  // dw/ds = scale·σ(scale·s)
    return V(p.scale) * attnkit::math::sigmoid(s * V(p.scale));
  }
};

/// ReLU attention (Wortsman et al. 2023, "Replacing softmax with ReLU in Vision
/// Transformers"): w = relu(s) / Lk, rows not normalised.
struct relu_attention {
  using family = attnkit::family::quadratic;
  static constexpr auto normalization = attnkit::normalization::none;
  struct params {
    double inv_len;
  };
  params resolve(const attnkit::weight_context& c) const {
    return {c.key_length > 0 ? 1.0 / static_cast<double>(c.key_length) : 0.0};
  }
  template <class V>
  V weight(V s, const params& p) const {
    return attnkit::math::max(s, V(0)) * V(p.inv_len);
  }
  template <class V>
  V derivative(V s, const params& p) const {
    return attnkit::math::select(s > V(0), V(p.inv_len), V(0));
  }
};

/// Packed documents, causal within each (block-diagonal by segment ∧ causal), as
/// FlexAttention's document masking. `first[i]` is the first token of token i's
/// document (non-decreasing). The hooks make the kernel skip every tile that lies
/// across documents or above the diagonal, and test only the tiles on their edges.
struct document_causal {
  const index_t* first = nullptr;

  bool allowed(index_t i, index_t j, index_t, index_t) const { return j <= i && j >= first[i]; }
  attnkit::key_range hull(const attnkit::pattern::row_query& r) const { return {first[r.row], r.row + 1}; }
  attnkit::tile_class classify(const attnkit::pattern::tile_query& t) const {
    const index_t last_row = t.row_end - 1;
    if (t.key_begin > last_row || t.key_end <= first[t.row_begin]) return attnkit::tile_class::empty;
    if (t.key_end - 1 <= t.row_begin && t.key_begin >= first[last_row]) return attnkit::tile_class::full;
    return attnkit::tile_class::partial;
  }
  std::uint64_t allowed_bits(const attnkit::pattern::row_query& r, index_t j0, int n) const {
    return attnkit::pattern::range_bits(first[r.row], r.row + 1, j0, n);
  }
};

/// A feature map for linear attention, elementwise: φ(x) = relu(x)² (a ReLU²
/// kernel, smoother than relu at 0). Written once in attnkit::math: the oracle
/// evaluates it on double, the kernel on SIMD vectors; `derivative` is what the
/// backward needs.
struct relu_squared_features {
  template <class V>
  V operator()(V x) const {
    const V r = attnkit::math::max(V(0), x);
    return r * r;
  }
  template <class V>
  V derivative(V x) const {
    return V(2) * attnkit::math::max(V(0), x);
  }
};

/// A feature map that mixes coordinates (a row map): positive features from a
/// learned projection W [m × d] (a trained Performer, or a Hedgehog-style learned
/// map), φ(x) = exp(W x·s − s²|x|²/2)/√m with s = τ^{1/2}. With W random this is
/// FAVOR+. The float instance runs vectorised through attnkit::math::dot / axpy.
struct learned_positive_features {
  const float* W = nullptr;  ///< row-major [m, d], outlives the call
  index_t m = 0;

  index_t output_dim(index_t) const { return m; }
  template <class T>
  void operator()(const T* x, index_t d, const attnkit::feature::context& c, T* out) const {
    const T s = static_cast<T>(std::sqrt(c.scale)), half_sq = T(0.5) * static_cast<T>(c.scale) * attnkit::math::dot(x, x, d);
    const T norm = static_cast<T>(1.0 / std::sqrt(static_cast<double>(m)));
    for (index_t r = 0; r < m; ++r)
      out[r] = attnkit::math::exp(static_cast<T>(attnkit::math::dot(W + r * d, x, d)) * s - half_sq) * norm;
  }
  /// dx += Σ_r g_r φ_r (s·w_r − s²·x), g = dphi.
  template <class T>
  void vjp(const T* x, index_t d, const attnkit::feature::context& c, const T* dphi, T* dx) const {
    const T s = static_cast<T>(std::sqrt(c.scale)), half_sq = T(0.5) * static_cast<T>(c.scale) * attnkit::math::dot(x, x, d);
    const T norm = static_cast<T>(1.0 / std::sqrt(static_cast<double>(m)));
    T total = 0;
    for (index_t r = 0; r < m; ++r) {
      const T gr = dphi[r] * attnkit::math::exp(static_cast<T>(attnkit::math::dot(W + r * d, x, d)) * s - half_sq) * norm;
      total += gr;
      attnkit::math::axpy(s * gr, W + r * d, dx, d);
    }
    attnkit::math::axpy(-static_cast<T>(c.scale) * total, x, dx, d);
  }
};

/// `first` of documents with the given lengths, packed one after another.
inline std::vector<index_t> document_starts(const std::vector<index_t>& lengths) {
  std::vector<index_t> first;
  index_t start = 0;
  for (index_t len : lengths) {
    for (index_t t = 0; t < len; ++t) first.push_back(start);
    start += len;
  }
  return first;
}

}  // namespace custom
