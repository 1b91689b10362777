#pragma once
/// \file
/// The row stages of the backward, before the main pass:
///   A. per row: the scaled Q row and dO row (packed, zero-padded), D_i = dO_i·o_i,
///      the LSE in log2 units, non-finite flags; rows without gradient (no key, LSE
///      −inf) get dO = 0 so that nothing they hold can reach a gradient;
///   B. (only when needed) one pass over each row's logits: top_k's thresholds (the
///      forward's own selection code), the ℓ1 normaliser Σ w of normalization::sum,
///      and the regulariser's per-row statistics — keys-only LSE and s̄;
///   C. the regulariser's coefficients (a fixed-order reduction over the call's rows).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../../observe/regularizer.hpp"
#include "../../parallel/thread_pool.hpp"
#include "../prefill/packed_kv.hpp"
#include "../sparse/top_k.hpp"
#include "scores.hpp"

namespace attnkit::detail {

/// The visible-key interval of skeleton row r of head (b, h): the options' analytic
/// range ∩ the key set's hull (top_k: the interval of its kept keys, from stage B).
template <class Arch, class Pol, class Keys>
key_range bwd_row_interval(const bwd_call<Arch, Pol, Keys>& c, index_t b, index_t h, index_t r, batch_keys bk) {
  if constexpr (Keys::filters) {
    const index_t x = c.row(b, h, r);
    return {c.rows.lo[static_cast<std::size_t>(x)], c.rows.hi[static_cast<std::size_t>(x)]};
  } else {
    key_range kr = analytic_range(c.opt, bk, r);
    if constexpr (Keys::active) {
      const key_range pr = c.keys.hull(b, h, r);
      kr.lo = std::max(kr.lo, pr.lo);
      kr.hi = std::max(kr.lo, std::min(kr.hi, pr.hi));
    }
    return kr;
  }
}

/// Stage A over rows [r0, r1) of head (b, h).
template <class Arch, class Pol, class Keys>
void bwd_prepare_rows(const bwd_call<Arch, Pol, Keys>& c, const tensor_view<const float>& q,
                      const tensor_view<const float>& out, const tensor_view<const float>& dout, const float* lse,
                      index_t b, index_t h, index_t r0, index_t r1) {
  const index_t D = c.sh.head_dim, Dv = c.sh.value_dim, dp = c.dp, dvp = c.dvp;
  bwd_rows& R = c.rows;
  const batch_keys bk = keys_of_batch(c.opt, b, c.sh.q_len, c.sh.k_len);
  for (index_t r = r0; r < r1; ++r) {
    const index_t x = c.row(b, h, r), i = c.token(h, r);
    const auto u = static_cast<std::size_t>(x);
    float* qs = R.q.data() + x * dp;
    simd::scale_copy<Arch>(q.row(b, h, i), c.q_scale, qs, D);  // the forward's scaled row, bit for bit
    std::fill(qs + D, qs + dp, 0.0f);
    float* d = R.dout.data() + x * dvp;
    std::copy_n(dout.row(b, h, i), Dv, d);
    std::fill(d + Dv, d + dvp, 0.0f);
    unsigned char flags = 0;
    if (simd::any_nonfinite<Arch>(qs, D)) flags |= row_q_nonfinite;
    if (simd::any_nonfinite<Arch>(d, Dv)) flags |= row_do_nonfinite;
    bool empty = bwd_row_interval(c, b, h, r, bk).size() == 0;
    if constexpr (online_softmax<Pol>) {
      const float l = lse[(b * c.sh.q_heads + h) * c.sh.q_len + i];
      empty = empty || l == neg_inf;
      R.lse2[u] = empty ? std::numeric_limits<float>::infinity() : l * log2e;
    }
    if (empty) {  // a constant output: no gradient, whatever dO holds
      std::fill(d, d + dvp, 0.0f);
      flags &= static_cast<unsigned char>(~row_do_nonfinite);
      R.dvec[u] = 0.0f;
    } else {
      R.dvec[u] = simd::dot<Arch>(d, out.row(b, h, i), Dv);
    }
    R.flags[u] = flags;
  }
}

/// Stage B, softmax with a regulariser: a row's running keys-only statistics in log2
/// units over the logits seen so far: max m, l = Σ 2^(s−m), t = Σ 2^(s−m)(s − m).
struct entropy_state {
  float m = neg_inf, l = 0.0f, t = 0.0f;
  /// Merges n logits x (masked = −inf) in.
  template <class Arch>
  void add(const typename simd::ops<Arch>::vf* x, int n) {
    using O = simd::ops<Arch>;
    float mx = neg_inf;
    for (int k = 0; k < n; ++k) mx = std::max(mx, O::reduce_max(x[k]));  // NaN: mx stays (NaN rows stay NaN below)
    if (mx == neg_inf) return;
    const float m_new = std::max(m, mx);
    const float alpha = m == neg_inf ? 0.0f : std::exp2(m - m_new);
    const auto mv = O::set1(m_new);
    auto lv = O::set1(0.0f), tv = O::set1(0.0f);
    for (int k = 0; k < n; ++k) {
      const auto d = x[k] - mv;
      const auto e = O::exp2_precise(d);
      lv = lv + e;
      tv = O::fma(e, O::max(d, O::set1(-200.0f)), tv);  // e = 0 below: −inf·0 avoided
    }
    t = (l > 0.0f ? alpha * (t + l * (m - m_new)) : 0.0f) + O::reduce_add(tv);
    l = l * alpha + O::reduce_add(lv);
    m = m_new;
  }
};

/// Stage B over the strips of rows [r0, r1) of head (b, h): per row, Σ w (sum) or
/// the keys-only statistics (regulariser), from the packed Kᵀ panels of `kv`.
template <class Arch, class Pol, class Keys>
void bwd_row_stats(const bwd_call<Arch, Pol, Keys>& c, const packed_kv<Arch>& kv, const weight_params_t<Pol>& wp,
                   index_t b, index_t h, index_t r0, index_t r1, std::vector<index_t>& lo, std::vector<index_t>& hi,
                   float* tmp) {
  using O = simd::ops<Arch>;
  using vf = typename O::vf;
  using tile = simd::tile_shape<Arch>;
  constexpr int MR = tile::rows, NC = tile::key_vectors, BN = tile::keys;
  const batch_keys bk = keys_of_batch(c.opt, b, c.sh.q_len, c.sh.k_len);
  const index_t g = h / c.sh.group(), bg = b * c.sh.kv_heads + g, D = c.sh.head_dim;
  bwd_rows& R = c.rows;
  const float* khead = kv.k_head(bg);
  lo.resize(static_cast<std::size_t>(r1 - r0));
  hi.resize(lo.size());
  for (index_t r = r0; r < r1; ++r) {
    const key_range kr = bwd_row_interval(c, b, h, r, bk);
    lo[static_cast<std::size_t>(r - r0)] = kr.lo;
    hi[static_cast<std::size_t>(r - r0)] = kr.hi;
  }
  for (index_t s0 = r0; s0 < r1; s0 += MR) {
    const int n = static_cast<int>(std::min<index_t>(MR, r1 - s0));
    const bwd_strip st = make_strip(s0, n, lo.data() + (s0 - r0), hi.data() + (s0 - r0));
    entropy_state es[MR];
    vf mass[MR];
    for (auto& m : mass) m = O::set1(0.0f);
    auto run = [&](auto rows) {
      constexpr int RR = decltype(rows)::value;
      for (index_t kb = st.lo_lo / BN; kb * BN < st.hi_hi; ++kb) {
        const index_t j0 = kb * BN;
        const tile_kind kind = classify_tile(c, b, h, st, j0);
        if (kind == tile_kind::empty) continue;
        vf acc[RR][NC];
        strip_scores<Arch, RR>(c, b, h, st, R.q.data() + c.row(b, h, s0) * c.dp, c.dp, j0, khead + kb * D * BN, BN,
                               kind, tmp, acc, nullptr, 0);
        for (int r = 0; r < RR; ++r) {
          if constexpr (online_softmax<Pol>) {
            es[r].template add<Arch>(acc[r], NC);
          } else {
            for (int k = 0; k < NC; ++k) {
              const vf s = acc[r][k];
              mass[r] = mass[r] + math::select(s == O::set1(neg_inf), O::set1(0.0f), eval_weight(c.pol, s, wp));
            }
          }
        }
      }
    };
    switch (n) {
      case 6: run(std::integral_constant<int, 6>{}); break;
      case 5: run(std::integral_constant<int, 5>{}); break;
      case 4: run(std::integral_constant<int, 4>{}); break;
      case 3: run(std::integral_constant<int, 3>{}); break;
      case 2: run(std::integral_constant<int, 2>{}); break;
      default: run(std::integral_constant<int, 1>{}); break;
    }
    for (int r = 0; r < n; ++r) {
      const auto u = static_cast<std::size_t>(c.row(b, h, s0 + r));
      if constexpr (online_softmax<Pol>) {
        // Keys-only LSE (log2) in rho until stage C, s̄ (log2) in sigma; −inf: no key.
        R.rho[u] = es[r].l > 0.0f ? es[r].m + std::log2(es[r].l) : neg_inf;
        R.sigma[u] = es[r].l > 0.0f ? es[r].m + es[r].t / es[r].l : 0.0f;
      } else {
        const float z = O::reduce_add(mass[r]);
        // A row whose weights sum to 0 outputs the masked-row fill: no gradient.
        R.inv_z[u] = z == 0.0f ? 0.0f : 1.0f / z;
        if (z == 0.0f) {
          std::fill_n(R.dout.data() + static_cast<index_t>(u) * c.dvp, c.dvp, 0.0f);
          R.dvec[u] = 0.0f;
          R.flags[u] &= static_cast<unsigned char>(~row_do_nonfinite);
        }
      }
    }
  }
}

/// Stage C: the regulariser's per-row factor ρ_i of E_ij = ρ_i (s_ij − s̄_i) (log2
/// units; dS_ij = P_ij (dA_ij − D_i + E_ij)), from stage B's keys-only LSE (in rho)
/// and s̄ (in sigma): ρ_i = −κ_h · ln 2 · e^{lse_i − lse_keys,i}, κ = λ/N (AEM),
/// −λ/N (EAR), or (λ/Hq) pen'(δ_h)/N_h (band) — observe/regularizer.hpp's gradient.
/// Sums in double, in row order: the same bits for any thread count.
template <class Arch, class Pol, class Keys>
void bwd_regularizer_coefficients(const bwd_call<Arch, Pol, Keys>& c) {
  const regularizer& reg = c.bo.reg;
  const index_t B = c.sh.batch, H = c.sh.q_heads, L = c.sh.q_len;
  bwd_rows& R = c.rows;
  std::vector<double> sum_h(static_cast<std::size_t>(H), 0.0), kappa(static_cast<std::size_t>(H), 0.0);
  std::vector<index_t> n_h(static_cast<std::size_t>(H), 0);
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t r = 0; r < L; ++r) {
        const auto u = static_cast<std::size_t>(c.row(b, h, r));
        if (R.rho[u] == neg_inf) continue;
        sum_h[static_cast<std::size_t>(h)] += (static_cast<double>(R.rho[u]) - R.sigma[u]) * std::numbers::ln2;
        ++n_h[static_cast<std::size_t>(h)];
      }
  if (reg.kind == regularizer_kind::entropy_band) {
    const double emax = reg.max_entropy > 0 ? reg.max_entropy : std::log(static_cast<double>(c.sh.k_len));
    const double margin = reg.gamma * emax, per_head = reg.lambda / static_cast<double>(H);
    for (index_t h = 0; h < H; ++h) {
      const auto x = static_cast<std::size_t>(h);
      if (n_h[x] == 0) continue;
      const double d = sum_h[x] / static_cast<double>(n_h[x]) - reg.theta[x];
      double dpen = 0;
      if (std::abs(d) > margin) dpen = reg.form == band_config::shape::squared ? 2 * d : (d > 0 ? 1.0 : -1.0);
      kappa[x] = per_head * dpen / static_cast<double>(n_h[x]);
    }
  } else {
    index_t n = 0;
    for (index_t x : n_h) n += x;
    const double k = n ? reg.lambda / static_cast<double>(n) : 0.0;
    std::fill(kappa.begin(), kappa.end(), reg.kind == regularizer_kind::mean_entropy ? k : -k);
  }
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t r = 0; r < L; ++r) {
        const auto u = static_cast<std::size_t>(c.row(b, h, r));
        if (R.rho[u] == neg_inf || !(R.lse2[u] < std::numeric_limits<float>::infinity())) {
          R.rho[u] = 0.0f, R.sigma[u] = 0.0f;
          continue;
        }
        const double ratio = std::exp2(static_cast<double>(R.lse2[u]) - R.rho[u]);
        R.rho[u] = static_cast<float>(-kappa[static_cast<std::size_t>(h)] * std::numbers::ln2 * ratio);
      }
}

/// Stage B for pattern::top_k: each query block's thresholds from the forward's own
/// selection (top_k_keys::prepare on a quadratic_call over the same packed K), so the
/// backward keeps exactly the keys the forward kept; also narrows the rows'
/// intervals to the kept keys.
template <class Arch, class Pol, class Keys>
void bwd_top_k_select(const bwd_call<Arch, Pol, Keys>& c, const top_k_keys<Arch>& fwd_keys,
                      const packed_kv<Arch>& kv, workspace& ws, const tensor_view<const float>& q, index_t b, index_t h,
                      index_t row0, int n, block_scratch& sc) {
  const tensor_view<float> no_out{};
  quadratic_call<Arch, Pol, top_k_keys<Arch>> qc{fwd_keys, c.pol, c.sh, q, no_out, c.opt, &kv, ws};
  qc.q_scale = c.q_scale;
  qc.elementwise = has_elementwise_terms(c.opt);
  const index_t D = c.sh.head_dim;
  constexpr int BN = simd::tile_shape<Arch>::keys, MR = simd::tile_shape<Arch>::rows;
  auto grow = [](auto& vec, std::size_t size) {
    if (vec.size() < size) vec.resize(size);
  };
  grow(sc.q, static_cast<std::size_t>(n * D));
  grow(sc.wide, static_cast<std::size_t>(16 * D));
  grow(sc.tile, static_cast<std::size_t>(MR * BN));
  grow(sc.lo, static_cast<std::size_t>(n));
  grow(sc.hi, static_cast<std::size_t>(n));
  const batch_keys bk = keys_of_batch(c.opt, b, c.sh.q_len, c.sh.k_len);
  for (int r = 0; r < n; ++r) {
    std::copy_n(c.rows.q.data() + c.row(b, h, row0 + r) * c.dp, D, sc.q.data() + r * D);
    const key_range kr = analytic_range(c.opt, bk, row0 + r);
    sc.lo[static_cast<std::size_t>(r)] = kr.lo;
    sc.hi[static_cast<std::size_t>(r)] = std::min(kr.hi, c.sh.k_len);
  }
  fwd_keys.prepare(qc, sc, b, h, bk, row0, n);
  const top_k_block& s = top_k_keys<Arch>::state(std::as_const(sc));
  for (int r = 0; r < n; ++r) {
    const auto u = static_cast<std::size_t>(c.row(b, h, row0 + r));
    c.rows.thr[u] = s.thr[static_cast<std::size_t>(r)];
    c.rows.tie[u] = s.tie[static_cast<std::size_t>(r)];
    c.rows.lo[u] = sc.lo[static_cast<std::size_t>(r)];
    c.rows.hi[u] = std::max(sc.lo[static_cast<std::size_t>(r)], sc.hi[static_cast<std::size_t>(r)]);
  }
}

}  // namespace attnkit::detail
