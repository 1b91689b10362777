#pragma once
/// \file
/// Policy adapters of the kernelised family: they turn linear<F> and log_normal
/// into resolved feature maps for run_kernelized. Built-in maps are vectorised
/// with the arch's ops; user functors (feature::feature_map) are called in float.
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <type_traits>
#include <vector>

#include "../policy/linear.hpp"
#include "../policy/log_normal.hpp"
#include "../policy/softmax.hpp"
#include "kernelized.hpp"
#include "../simd/widen.hpp"

namespace attnkit::detail {

/// linear<F>'s φ, resolved for one call.
template <class Arch, class F>
struct linear_feature {
  const F& phi;
  index_t D = 0, q_len = 0;
  double scale = 1.0;

  index_t dim() const { return static_cast<index_t>(phi.output_dim(D)); }

  void map(const float* x, const token_ref& t, float* out) const {
    using O = simd::ops<Arch>;
    constexpr int W = O::width;
    if constexpr (std::is_same_v<F, feature::elu_plus_one> || std::is_same_v<F, feature::relu> ||
                  std::is_same_v<F, feature::identity>) {
      index_t d = 0;
      for (; d + W <= D; d += W) {
        const auto v = O::load(x + d);
        if constexpr (std::is_same_v<F, feature::elu_plus_one>)
          O::store(out + d, xsimd_select_pos(v, v + O::set1(1.0f), O::exp2_fast(v * O::set1(log2e))));
        else if constexpr (std::is_same_v<F, feature::relu>)
          O::store(out + d, O::max(O::set1(0.0f), v));
        else
          O::store(out + d, v);
      }
      for (; d < D; ++d) {
        const float v = x[d];
        if constexpr (std::is_same_v<F, feature::elu_plus_one>)
          out[d] = v > 0.0f ? v + 1.0f : std::exp(v);
        else if constexpr (std::is_same_v<F, feature::relu>)
          out[d] = v > 0.0f ? v : 0.0f;
        else
          out[d] = v;
      }
    } else if constexpr (std::is_same_v<F, feature::favor_plus>) {
      // exp(W x' − |x'|²/2)/sqrt(M), x' = x·sqrt(τ): M dot products of length D.
      const float s = static_cast<float>(scale);
      const float sq = simd::dot<Arch>(x, x, D) * s;
      const float norm = 1.0f / std::sqrt(static_cast<float>(phi.num_features));
      const float rs = std::sqrt(s);
      for (index_t m = 0; m < phi.num_features; ++m)
        out[m] = std::exp(simd::dot<Arch>(phi.projection + m * D, x, D) * rs - 0.5f * sq) * norm;
    } else {
      const feature::context c{t.query ? t.index + t.keys.delta : t.index, q_len, t.keys.lk, t.query, scale};
      phi(x, D, c, out);
    }
  }

 private:
  template <class V>
  static V xsimd_select_pos(V x, V a, V b) {
    if constexpr (simd::is_scalar_v<Arch>)
      return x > 0.0f ? a : b;
    else
      return xsimd::select(x > V(0.0f), a, b);
  }
};

/// LLN's φq(x) = exp(αx − max αx) and φk(x) = exp(βx − max over the head's keys).
template <class Arch>
struct lln_feature {
  double coef = 1.0;
  index_t D = 0;
  const std::vector<float>* key_shift = nullptr;  ///< per (batch·Hkv + g); null for queries
  index_t kv_heads = 1;

  index_t dim() const { return D; }
  void map(const float* x, const token_ref& t, float* out) const {
    using O = simd::ops<Arch>;
    constexpr int W = O::width;
    if (!(std::abs(coef) < 1e30)) [[unlikely]] {  // tiny σ (e.g. subnormal inputs): α·x in double
      double sh = -std::numeric_limits<double>::infinity();
      if (key_shift)
        sh = (*key_shift)[static_cast<std::size_t>(t.batch * kv_heads + t.head)];
      else
        for (index_t d = 0; d < D; ++d) sh = std::max(sh, coef * x[d]);
      for (index_t d = 0; d < D; ++d) out[d] = static_cast<float>(std::exp(coef * x[d] - sh));
      return;
    }
    const float a = static_cast<float>(coef);
    float shift;
    if (key_shift) {
      shift = (*key_shift)[static_cast<std::size_t>(t.batch * kv_heads + t.head)];
    } else {  // the query's own max of α·x (x86 max keeps the second operand on NaN: NaN skipped)
      index_t d = 0;
      auto mv = O::set1(-std::numeric_limits<float>::infinity());
      for (; d + W <= D; d += W) mv = O::max(O::load(x + d) * O::set1(a), mv);
      shift = O::reduce_max(mv);
      for (; d < D; ++d) shift = std::max(shift, a * x[d]);
    }
    index_t d = 0;
    const auto av = O::set1(a * log2e), sv = O::set1(shift * log2e);
    for (; d + W <= D; d += W) O::store(out + d, O::exp2_fast(O::load(x + d) * av - sv));
    for (; d < D; ++d) out[d] = std::exp(a * x[d] - shift);
  }
};

/// What one pass over a view yields: the sample standard deviation (n − 1) of all
/// its entries and, when asked for, each (batch, head)'s largest and smallest entry
/// over the rows [0, rows(batch)) (NaN skipped, ±inf kept).
struct view_moments {
  double std = 0;
  std::vector<float> max, min;  ///< [batch · heads]; empty unless extremes were asked for
};

/// One pass over a view, in double: sums of x − s and (x − s)² with s the mean of the
/// first row, var = (Σ(x−s)² − (Σ(x−s))²/n) / (n − 1). In double the cancellation
/// costs about ε·(μ − s)²/σ² relative: negligible unless the first row sits ~10⁶ σ
/// from the mean. The pass reads all of Q or K from memory, so it is written to run
/// at memory speed: eight floats at a time are widened in registers (vcvtps2pd on
/// x86) into eight independent double accumulators — a scalar loop here cost LLN
/// ~17% of its time. Rows are split by (batch, head) over the thread pool and the
/// partial sums combined in a fixed order: the result does not depend on the thread
/// count. `rows(b)` (extremes only) bounds the rows whose extremes count.
/// A worker's buffer for 16-bit rows widened to float (moments_of).
struct widened_row {
  aligned_vector<float> wide;
  std::size_t bytes() const { return wide.capacity() * sizeof(float); }
};

template <class T, class Rows>
view_moments moments_of(const tensor_view<const T>& t, int threads, bool extremes, Rows rows, workspace& ws) {
  using f8 = float __attribute__((vector_size(32)));
  using d8 = double __attribute__((vector_size(64)));
  const index_t B = t.batch(), H = t.heads(), L = t.seq(), D = t.dim();
  const double n = static_cast<double>(B * H * L * D);
  view_moments out;
  constexpr float inf = std::numeric_limits<float>::infinity();
  if (extremes) {
    out.max.assign(static_cast<std::size_t>(B * H), -inf);
    out.min.assign(static_cast<std::size_t>(B * H), inf);
  }
  if (B * H * L * D == 0) return out;
  double pilot = 0;
  for (index_t d = 0; d < D; ++d) pilot += static_cast<double>(to_float(t.row(0, 0, 0)[d]));
  pilot /= static_cast<double>(D);
  if (!std::isfinite(pilot)) pilot = 0;  // NaN/Inf data: the sums below carry it
  std::vector<double> part1(static_cast<std::size_t>(B * H)), part2(part1.size());
  ws.reserve_slots(threads);
  parallel_for(B * H, threads, [&](index_t bh, int slot) {
    constexpr int U = 4;  // 4 × 8 lanes for each sum: enough to hide the add latency
    d8 s1[U] = {}, s2[U] = {};
    f8 hi = f8{} - inf, lo = f8{} + inf;
    double t1 = 0, t2 = 0;  // the D % 8 tail
    float thi = -inf, tlo = inf;
    const d8 pv = d8{} + pilot;
    const index_t tracked = extremes ? std::min<index_t>(std::max<index_t>(rows(bh / H), 0), L) : 0;
    auto& wide = ws.slot(slot).get<widened_row>().wide;  // 16-bit rows, widened
    if constexpr (!std::is_same_v<T, float>)
      if (wide.size() < static_cast<std::size_t>(D)) wide.resize(static_cast<std::size_t>(D));
    auto step = [&](const float* p, int u, bool track) {
      f8 x;
      std::memcpy(&x, p, sizeof x);
      if (track) {  // x > hi is false for NaN: NaN never replaces an extreme
        hi = x > hi ? x : hi;
        lo = x < lo ? x : lo;
      }
      const d8 y = __builtin_convertvector(x, d8) - pv;
      s1[u] += y;
      s2[u] += y * y;
    };
    for (index_t s = 0; s < L; ++s) {
      const float* r;
      if constexpr (std::is_same_v<T, float>) {
        r = t.row(bh / H, bh % H, s);
      } else {
        widen(t.row(bh / H, bh % H, s), wide.data(), D);
        r = wide.data();
      }
      const bool track = s < tracked;
      index_t d = 0;
      for (; d + 8 * U <= D; d += 8 * U)
        for (int u = 0; u < U; ++u) step(r + d + 8 * u, u, track);
      for (; d + 8 <= D; d += 8) step(r + d, 0, track);
      for (; d < D; ++d) {
        const double y = static_cast<double>(r[d]) - pilot;
        t1 += y;
        t2 += y * y;
        if (track) {
          thi = r[d] > thi ? r[d] : thi;
          tlo = r[d] < tlo ? r[d] : tlo;
        }
      }
    }
    for (int u = 1; u < U; ++u) s1[0] += s1[u], s2[0] += s2[u];
    for (int l = 0; l < 8; ++l) {
      t1 += s1[0][l];
      t2 += s2[0][l];
      thi = hi[l] > thi ? hi[l] : thi;
      tlo = lo[l] < tlo ? lo[l] : tlo;
    }
    part1[static_cast<std::size_t>(bh)] = t1;
    part2[static_cast<std::size_t>(bh)] = t2;
    if (extremes) {
      out.max[static_cast<std::size_t>(bh)] = thi;
      out.min[static_cast<std::size_t>(bh)] = tlo;
    }
  });
  if (n < 2) return out;
  double S1 = 0, S2 = 0;
  for (std::size_t x = 0; x < part1.size(); ++x) S1 += part1[x], S2 += part2[x];
  const double var = (S2 - S1 * S1 / n) / (n - 1);
  out.std = std::sqrt(var < 0 ? 0.0 : var);  // NaN data stays NaN
  return out;
}

/// Sample standard deviation (n − 1) of every entry of a view (moments_of).
template <class T>
double sample_std_of(const tensor_view<const T>& t, int threads, workspace& ws) {
  return moments_of(t, threads, false, [](index_t) { return index_t{0}; }, ws).std;
}

/// Options the kernelised family understands: causal (prefix), key_lengths, scale
/// (FAVOR+), threads. Everything element-wise is rejected, as in the reference.
inline void check_kernelized_options(const options& opt, const char* what) {
  const std::string w = std::string("not used with ") + what;
  if (opt.window.active()) fail("options.window", "", "unbounded (" + w + ")", "a window");
  if (opt.mask.data) fail("options.mask", "", "none (" + w + ")", "a mask");
  if (opt.bias.data) fail("options.bias", "", "none (" + w + ")", "a bias");
  if (!opt.alibi_slopes.empty()) fail("options.alibi_slopes", "", "empty (" + w + ")", opt.alibi_slopes.size());
  if (opt.softcap > 0.0f) fail("options.softcap", "", "0 (" + w + ")", opt.softcap);
  if (!opt.sinks.empty()) fail("options.sinks", "", "empty (" + w + ")", opt.sinks.size());
  if (opt.lse) fail("options.lse", "", "nullptr (" + w + ")", "a pointer");
  reject_positions(opt, what);
}

template <class Arch, class F, class KV>
void run_linear(const linear<F>& pol, const problem_shape& sh, const tensor_view<const float>& q,
                const tensor_view<const KV>& k, const tensor_view<const KV>& v, const tensor_view<float>& out,
                const options& opt, workspace& ws) {
  check_kernelized_options(opt, "linear attention");
  if (!pol.decay.empty()) {
    if (static_cast<index_t>(pol.decay.size()) != sh.q_heads)
      fail("policy.decay", "size", std::to_string(sh.q_heads) + " (= q.heads)", pol.decay.size());
    if (opt.causal == causal::none)
      fail("policy.decay", "", "empty unless options.causal is set (decay is causal only)", pol.decay.size());
  }
  if (!(pol.eps >= 0)) fail("policy.eps", "", ">= 0", pol.eps);
  if constexpr (std::is_same_v<F, feature::favor_plus>)
    if (pol.phi.num_features <= 0 || pol.phi.projection == nullptr)
      fail("policy.phi", "projection", "num_features > 0 and a non-null [num_features, D] matrix",
           pol.phi.num_features);
  const double tau = resolved_scale(opt, sh.head_dim);
  const linear_feature<Arch, F> f{pol.phi, sh.head_dim, sh.q_len, tau};
  if (f.dim() <= 0) fail("policy.phi", "output_dim", "> 0", f.dim());
  run_kernelized<Arch>(f, f, kernelized_params{pol.normalize, pol.eps, pol.decay}, sh, q, k, v, out, opt, ws);
}

/// Keys of LLN+Diag's block-diagonal softmax: query position p = i + Δ sees the keys
/// of its block [⌊p/D⌋·D, ⌊p/D⌋·D + D) (then intersected with the options' masks).
struct block_diagonal_keys : key_set_base {
  const options& opt;
  index_t q_len = 0, k_len = 0, block = 1;
  key_range hull(index_t b, index_t, index_t i) const {
    const index_t p = i + keys_of_batch(opt, b, q_len, k_len).delta;
    const index_t blk = p >= 0 ? p / block : -((-p + block - 1) / block);
    return {std::max<index_t>(blk * block, 0), std::max<index_t>(blk * block + block, 0)};
  }
  tile_class classify(const block_scratch&, index_t, index_t, index_t, index_t, index_t, index_t) const {
    return tile_class::full;
  }
  bool allowed(index_t, index_t, index_t, index_t) const { return true; }
};

/// LLN's resolved query/key feature maps for one call: α, β (moment matching unless
/// given) and the per (batch, kv head) key shift. Owns the shift table.
template <class Arch>
struct lln_feature_pair {
  std::vector<float> shift;
  lln_feature<Arch> q, k;  ///< k points into `shift`: the pair is filled in place
  lln_feature_pair() = default;
  lln_feature_pair(const lln_feature_pair&) = delete;
  lln_feature_pair& operator=(const lln_feature_pair&) = delete;
};

template <class Arch, class KV>
void lln_features(const log_normal& pol, const problem_shape& sh, const tensor_view<const float>& q,
                  const tensor_view<const KV>& k, const options& opt, lln_feature_pair<Arch>& f, workspace& ws) {
  lln_coefficients c{pol.alpha.value_or(1.0), pol.beta.value_or(1.0)};
  const int threads = resolve_num_threads(opt.num_threads);
  // One pass over K gives σk and each (batch, kv head)'s extremes over its valid keys.
  const view_moments mk =
      moments_of(k, threads, true, [&](index_t b) { return keys_of_batch(opt, b, sh.q_len, sh.k_len).lk; }, ws);
  if (!pol.alpha || !pol.beta) c = pol.resolve(sample_std_of(q, threads, ws), mk.std);
  // Per (batch, kv head) max of β·k over the valid keys: cancels in the ratio.
  // Rounding is monotone, so max_j fl(β·k_j) = fl(β·max k) for β > 0 and fl(β·min k)
  // for β < 0: the extremes give it without a second pass. β·x is formed in double
  // only when β is beyond float range (tiny σ, e.g. subnormal keys). A NaN product
  // (β = 0 against ±inf, NaN β) or −inf (no valid key) leaves the shift at 0.
  f.shift.assign(static_cast<std::size_t>(sh.batch * sh.kv_heads), 0.0f);
  const bool wide = !(std::abs(c.beta) < 1e30);
  for (std::size_t bg = 0; bg < f.shift.size(); ++bg) {
    const float x = c.beta > 0 ? mk.max[bg] : mk.min[bg];
    const float y = wide ? static_cast<float>(c.beta * static_cast<double>(x)) : static_cast<float>(c.beta) * x;
    if (y == y && y != -std::numeric_limits<float>::infinity()) f.shift[bg] = y;
  }
  f.q = lln_feature<Arch>{c.alpha, sh.head_dim, nullptr, sh.kv_heads};
  f.k = lln_feature<Arch>{c.beta, sh.head_dim, &f.shift, sh.kv_heads};
}

template <class Arch, class KV>
void run_log_normal(const log_normal& pol, const problem_shape& sh, const tensor_view<const float>& q,
                    const tensor_view<const KV>& k, const tensor_view<const KV>& v, const tensor_view<float>& out,
                    const options& opt, workspace& ws) {
  check_kernelized_options(opt, "log-normal attention");
  if (!(pol.eps >= 0)) fail("policy.eps", "", ">= 0", pol.eps);
  lln_feature_pair<Arch> f;
  lln_features<Arch>(pol, sh, q, k, opt, f, ws);
  const auto& fq = f.q;
  const auto& fk = f.k;
  run_kernelized<Arch>(fq, fk, kernelized_params{true, pol.eps, {}}, sh, q, k, v, out, opt, ws);
  if (!pol.diag) return;
  // LLN+Diag: average with block-diagonal softmax (block = D) over the same prefix.
  aligned_vector<float> diag(static_cast<std::size_t>(sh.batch * sh.q_heads * sh.q_len * sh.value_dim));
  const auto dv = bhsd(diag.data(), sh.batch, sh.q_heads, sh.q_len, sh.value_dim);
  options o = opt;
  o.masked_rows = masked_rows::zero;
  o.lse = nullptr;
  null_observer none;
  run_quadratic<Arch>(softmax{}, sh, q, k, v, dv, o, none, ws, block_diagonal_keys{{}, opt, sh.q_len, sh.k_len, sh.head_dim},
                      sh.head_dim);
  for (index_t b = 0; b < sh.batch; ++b)
    for (index_t h = 0; h < sh.q_heads; ++h)
      for (index_t i = 0; i < sh.q_len; ++i) {
        float* dst = out.row(b, h, i);
        const float* src = dv.row(b, h, i);
        for (index_t d = 0; d < sh.value_dim; ++d) dst[d] = 0.5f * (dst[d] + src[d]);
      }
}

}  // namespace attnkit::detail
