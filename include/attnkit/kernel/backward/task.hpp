#pragma once
/// \file
/// One task of the backward's main pass: a range of key blocks of one (batch,
/// kv head), FlashAttention-2's key-block-outer loop. Per key block of 64 keys, Kᵀ,
/// K and Vᵀ are packed once and dK, dV accumulate in L1/L2 while every query block
/// (60 rows of each query head of the GQA group) that sees the block passes:
///   per 6-row strip and key tile: S = Q·Kᵀ → weights; dP = dO·Vᵀ → dS (tile.hpp);
///   per query block: dV += Pᵀ·dO, dK += dSᵀ·Q, dQ += dS·K (simd::gemm_acc),
/// so the five products run on register micro-kernels and nothing larger than a
/// 60 × 64 tile of P or dS is ever stored. The task owns its keys' dK/dV and its
/// rows' dQ accumulator: no atomics, and a fixed order of every sum.
#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

#include "../../core/dtype.hpp"
#include "../dropout_bits.hpp"
#include "gemm.hpp"
#include "tile.hpp"
#include "../../simd/widen.hpp"

namespace attnkit::detail {

/// A worker's scratch of the main pass (in its workspace slot), reused across calls.
struct bwd_scratch {
  aligned_vector<float> kt, kr, vt;   ///< the key block: Kᵀ [D][KB], K [KB][Dp], Vᵀ [Dv][KB]
  aligned_vector<float> dk, dv;       ///< its accumulators [KB][Dp], [KB][Dvp]
  aligned_vector<float> p, f, e, cp, ds;  ///< a query block's tiles [M][KB]
  aligned_vector<float> dq;           ///< the task's dQ accumulator [G·Lq][Dp] (one part)
  aligned_vector<float> tmp, wide;    ///< a scalar-path tile; one widened 16-bit row
  std::vector<index_t> lo, hi;        ///< [G·Lq] the rows' key intervals
  std::vector<index_t> qlo, qhi;      ///< per (head, query block): the union of its rows' intervals
  std::vector<std::uint64_t> keep;    ///< dropout bits of the block's rows
  std::vector<tile_kind> kinds;       ///< per (strip, tile) of the block
  std::size_t bytes() const {
    std::size_t n = (lo.capacity() + hi.capacity() + qlo.capacity() + qhi.capacity()) * sizeof(index_t) +
                    keep.capacity() * 8 + kinds.capacity();
    for (const auto* v : {&kt, &kr, &vt, &dk, &dv, &p, &f, &e, &cp, &ds, &dq, &tmp, &wide})
      n += v->capacity() * sizeof(float);
    return n;
  }
};

/// Where d bias goes: straight into backward_options::dbias when no two tasks share
/// an element, else into one slice per (batch, kv head), summed in a fixed order
/// afterwards (a bias broadcast over batches or over heads of different groups).
struct bwd_dbias_target {
  const tensor_view<float>* user = nullptr;
  float* slices = nullptr;  ///< [B·Hkv][heads of a slice][e2][Lk]
  index_t kv_heads = 0, group = 1, slice_heads = 1, rows = 1, keys = 0;
  bool b_bcast = false, h_bcast = false;
  std::pair<float*, index_t> operator()(index_t b, index_t g, index_t h, index_t i) const {
    const index_t ib = rows == 1 ? 0 : i;
    if (slices) {
      const index_t hs = h_bcast ? 0 : h % group;
      return {slices + (((b * kv_heads + g) * slice_heads + hs) * rows + ib) * keys, 1};
    }
    return {&(*user)(b_bcast ? 0 : b, h_bcast ? 0 : h, ib, 0), user->stride[dim_axis]};
  }
};

/// Packs keys [j0, j0 + n) of kv head (b, g) (packed order) into the key block's
/// panels, zero past n; true when a K or V row holds a NaN or Inf.
template <class Arch, class Pol, class Keys, class KV>
bool bwd_pack_keys(const bwd_call<Arch, Pol, Keys>& c, const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                   index_t b, index_t g, index_t j0, index_t n, bwd_scratch& s) {
  constexpr index_t KB = bwd_key_block;
  const index_t D = c.sh.head_dim, Dv = c.sh.value_dim, dp = c.dp;
  bool bad = false;
  for (index_t t = 0; t < KB; ++t) {
    float* kr = s.kr.data() + t * dp;
    if (t >= n) {
      std::fill(kr, kr + dp, 0.0f);
      for (index_t d = 0; d < D; ++d) s.kt[static_cast<std::size_t>(d * KB + t)] = 0.0f;
      for (index_t d = 0; d < Dv; ++d) s.vt[static_cast<std::size_t>(d * KB + t)] = 0.0f;
      continue;
    }
    const index_t j = c.kv_token(g, j0 + t);
    widen(k.row(b, g, j), kr, D);
    std::fill(kr + D, kr + dp, 0.0f);
    for (index_t d = 0; d < D; ++d) s.kt[static_cast<std::size_t>(d * KB + t)] = kr[d];
    float* vw = s.wide.data();
    widen(v.row(b, g, j), vw, Dv);
    for (index_t d = 0; d < Dv; ++d) s.vt[static_cast<std::size_t>(d * KB + t)] = vw[d];
    bad = bad || simd::any_nonfinite<Arch>(kr, D) || simd::any_nonfinite<Arch>(vw, Dv);
  }
  return bad;
}

/// One query block (rows [q0, q0 + n) of query head h, local head hh) against the
/// packed key block at j0 (n_keys keys): the element passes and the three
/// accumulating products.
template <class Arch, class Pol, class Keys, class Target>
void bwd_block(const bwd_call<Arch, Pol, Keys>& c, index_t b, index_t h, index_t hh, index_t q0, int n,
                     index_t j0, index_t n_keys, bool keys_bad, bwd_scratch& s, float* dq_acc,
                     unsigned char* visible, const Target* dbias, const weight_params_t<Pol>& wp) {
  using tile = simd::tile_shape<Arch>;
  constexpr int MR = tile::rows, BN = tile::keys, W = simd::ops<Arch>::width;
  constexpr index_t KB = bwd_key_block, T = KB / BN;
  const index_t Lq = c.sh.q_len, dp = c.dp, dvp = c.dvp, g = h / c.sh.group();
  const bool dropping = c.drop.active();
  bwd_bufs buf{s.p.data(), (dropping || !online_softmax<Pol>) ? s.f.data() : s.p.data(),
               c.reg ? s.e.data() : nullptr, c.opt.softcap > 0.0f ? s.cp.data() : nullptr, s.ds.data(), s.keep.data()};
  const index_t* lo = s.lo.data() + hh * Lq;
  const index_t* hi = s.hi.data() + hh * Lq;
  // Strips of up to 6 rows that never straddle the key set's row blocks.
  int strips[bwd_query_block / 1 + 1];
  int nstrips = 0;
  for (int s0 = 0, R = 0; s0 < n; s0 += R) {
    R = std::min(MR, n - s0);
    if constexpr (Keys::active) {
      const index_t rb = c.keys.row_block(), i = q0 + s0;
      if (rb > 0) R = static_cast<int>(std::min<index_t>(R, sat_mul(i / rb + 1, rb) - i));
    }
    strips[nstrips++] = s0;
  }
  strips[nstrips] = n;
  // Pass 1: logits and weights of every (strip, tile) some row sees.
  int ra = n, rb = 0;
  index_t ka = KB, kb = 0;
  auto* kinds = s.kinds.data();
  for (int x = 0; x < nstrips; ++x) {
    const int s0 = strips[x], R = strips[x + 1] - s0;
    const bwd_strip st = make_strip(q0 + s0, R, lo + q0 + s0, hi + q0 + s0);
    bool any = false;
    for (index_t t = 0; t < T; ++t) {
      const tile_kind kind = classify_tile(c, b, h, st, j0 + t * BN);
      kinds[x * T + t] = kind;
      any = any || kind != tile_kind::empty;
    }
    if (!any) continue;
    if (dropping)
      for (int r = 0; r < R; ++r) {
        const index_t i = c.token(h, q0 + s0 + r);
        std::uint64_t bits = 0;
        if constexpr (Keys::reordered) {
          for (index_t t = 0; t < n_keys; ++t)
            if (c.drop.keep(b, h, i, c.kv_token(g, j0 + t))) bits |= std::uint64_t{1} << t;
        } else {
          bits = dropout_keep_bits(c.drop, b, h, i, j0, static_cast<int>(n_keys));
        }
        s.keep[static_cast<std::size_t>(s0 + r)] = bits;
      }
    const float* qrows = c.rows.q.data() + c.row(b, h, q0 + s0) * dp;
    unsigned char* vis = visible ? visible + hh * Lq + q0 + s0 : nullptr;
    for (index_t t = 0; t < T; ++t) {
      const tile_kind kind = kinds[x * T + t];
      if (kind == tile_kind::empty) continue;
      ra = std::min(ra, s0), rb = std::max(rb, s0 + R);
      ka = std::min(ka, t * BN), kb = std::max(kb, t * BN + BN);
      const index_t col = t * BN;
      auto run = [&](auto rows) {
        constexpr int RR = decltype(rows)::value;
        typename simd::ops<Arch>::vf acc[RR][tile::key_vectors];
        strip_scores<Arch, RR>(c, b, h, st, qrows, dp, j0 + col, s.kt.data() + col, KB, kind, s.tmp.data(), acc,
                               buf.cp ? buf.cp + s0 * KB + col : nullptr, KB);
        bwd_weights<Arch, RR>(c, b, h, q0 + s0, acc, kind, buf, s0, col, wp, vis);
      };
      switch (R) {
        case 6: run(std::integral_constant<int, 6>{}); break;
        case 5: run(std::integral_constant<int, 5>{}); break;
        case 4: run(std::integral_constant<int, 4>{}); break;
        case 3: run(std::integral_constant<int, 3>{}); break;
        case 2: run(std::integral_constant<int, 2>{}); break;
        default: run(std::integral_constant<int, 1>{}); break;
      }
    }
  }
  if (ra >= rb) return;
  // Pass 2: dS of the same tiles; tiles inside the products' rectangle that no row
  // sees hold zeros.
  bool careful = keys_bad;
  for (int r = ra; r < rb && !careful; ++r)
    careful = c.rows.flags[static_cast<std::size_t>(c.row(b, h, q0 + r))] != 0;
  for (int x = 0; x < nstrips; ++x) {
    const int s0 = strips[x], R = strips[x + 1] - s0;
    if (s0 + R <= ra || s0 >= rb) continue;
    for (index_t t = ka / BN; t < kb / BN; ++t) {
      const index_t col = t * BN;
      const tile_kind kind = kinds[x * T + t];
      if (kind == tile_kind::empty) {
        for (int r = s0; r < s0 + R; ++r) {
          std::fill_n(buf.p + r * KB + col, BN, 0.0f);
          std::fill_n(buf.ds + r * KB + col, BN, 0.0f);
        }
        continue;
      }
      auto run = [&](auto rows) {
        bwd_dscores<Arch, decltype(rows)::value>(c, b, h, q0 + s0, kind, careful, buf, s0, col, j0, s.vt.data(), dbias);
      };
      switch (R) {
        case 6: run(std::integral_constant<int, 6>{}); break;
        case 5: run(std::integral_constant<int, 5>{}); break;
        case 4: run(std::integral_constant<int, 4>{}); break;
        case 3: run(std::integral_constant<int, 3>{}); break;
        case 2: run(std::integral_constant<int, 2>{}); break;
        default: run(std::integral_constant<int, 1>{}); break;
      }
    }
  }
  // Pass 3: dV += Pᵀ·dO, dK += dSᵀ·Q, dQ += dS·K over rows [ra, rb) × keys [ka, kb).
  const int nr = rb - ra;
  const long nk = static_cast<long>(kb - ka);
  const float* P = buf.p + ra * KB + ka;
  const float* dS = buf.ds + ra * KB + ka;
  const float* dO = c.rows.dout.data() + c.row(b, h, q0 + ra) * dvp;
  const float* Q = c.rows.q.data() + c.row(b, h, q0 + ra) * dp;
  float* dq = dq_acc + (hh * Lq + q0 + ra) * dp;
  float* dk = s.dk.data() + ka * dp;
  float* dv = s.dv.data() + ka * dvp;
  if (!careful) {
    simd::gemm_acc<Arch>(static_cast<int>(nk), static_cast<int>(dvp / W), P, 1, KB, dO, dvp, nr, dv, dvp);
    simd::gemm_acc<Arch>(static_cast<int>(nk), static_cast<int>(dp / W), dS, 1, KB, Q, dp, nr, dk, dp);
    simd::gemm_acc<Arch>(nr, static_cast<int>(dp / W), dS, KB, 1, s.kr.data() + ka * dp, dp, nk, dq, dp);
  } else {  // a NaN or Inf in Q, dO, K or V: a zero P or dS term must stay 0
    simd::gemm_acc_skip_zeros(static_cast<int>(nk), dvp, P, 1, KB, dO, dvp, nr, dv, dvp);
    simd::gemm_acc_skip_zeros(static_cast<int>(nk), dp, dS, 1, KB, Q, dp, nr, dk, dp);
    simd::gemm_acc_skip_zeros(nr, dp, dS, KB, 1, s.kr.data() + ka * dp, dp, nk, dq, dp);
  }
}

/// The main-pass task: key blocks [kb0, kb1) of kv head (b, g). dK and dV of those
/// keys are written (every key: 0 where no row sees it); dQ of the group's rows is
/// accumulated into dq_acc ([G·Lq][Dp], zeroed here). `visible` ([G·Lq] or null)
/// records the rows with a finite logit among these keys.
template <class Arch, class Pol, class Keys, class KV, class Target>
void bwd_task(const bwd_call<Arch, Pol, Keys>& c, const tensor_view<const KV>& k, const tensor_view<const KV>& v,
              const tensor_view<float>& dk, const tensor_view<float>& dv, index_t b, index_t g, index_t kb0,
              index_t kb1, float* dq_acc, unsigned char* visible, const Target* dbias, bwd_scratch& s) {
  using tile = simd::tile_shape<Arch>;
  constexpr index_t KB = bwd_key_block, M = bwd_query_block;
  const index_t G = c.sh.group(), Lq = c.sh.q_len, Lk = c.sh.k_len, D = c.sh.head_dim, Dv = c.sh.value_dim;
  const index_t dp = c.dp, dvp = c.dvp;
  const batch_keys bk = keys_of_batch(c.opt, b, Lq, Lk);
  const auto wp = resolve_weight(c.pol, weight_context{bk.lk, Lq, D});
  auto grow = [](auto& vec, index_t size) {
    if (vec.size() < static_cast<std::size_t>(size)) vec.resize(static_cast<std::size_t>(size));
  };
  grow(s.kt, D * KB), grow(s.kr, KB * dp), grow(s.vt, Dv * KB), grow(s.dk, KB * dp), grow(s.dv, KB * dvp);
  for (auto* x : {&s.p, &s.f, &s.e, &s.cp, &s.ds}) grow(*x, M * KB);
  grow(s.tmp, tile::rows * tile::keys), grow(s.wide, Dv), grow(s.lo, G * Lq), grow(s.hi, G * Lq);
  grow(s.keep, M), grow(s.kinds, (M + 1) * (KB / tile::keys));
  const index_t nqb = (Lq + M - 1) / M;
  grow(s.qlo, G * nqb), grow(s.qhi, G * nqb);
  std::fill_n(dq_acc, G * Lq * dp, 0.0f);
  if (visible) std::fill_n(visible, G * Lq, 0);
  for (index_t hh = 0; hh < G; ++hh) {
    const index_t h = g * G + hh;
    for (index_t qb = 0; qb < nqb; ++qb) {
      index_t ulo = Lk, uhi = 0;
      for (index_t r = qb * M; r < std::min(Lq, qb * M + M); ++r) {
        const key_range kr = bwd_row_interval(c, b, h, r, bk);
        s.lo[static_cast<std::size_t>(hh * Lq + r)] = kr.lo;
        s.hi[static_cast<std::size_t>(hh * Lq + r)] = kr.hi;
        if (kr.size() > 0) ulo = std::min(ulo, kr.lo), uhi = std::max(uhi, kr.hi);
      }
      s.qlo[static_cast<std::size_t>(hh * nqb + qb)] = ulo;
      s.qhi[static_cast<std::size_t>(hh * nqb + qb)] = uhi;
    }
  }
  const float dk_scale = c.dk_scale;
  const bool acc = c.bo.accumulate;
  for (index_t kb = kb0; kb < kb1; ++kb) {
    const index_t j0 = kb * KB, n_keys = std::min(KB, Lk - j0);
    const bool bad = bwd_pack_keys(c, k, v, b, g, j0, n_keys, s);
    std::fill_n(s.dk.data(), KB * dp, 0.0f);
    std::fill_n(s.dv.data(), KB * dvp, 0.0f);
    for (index_t hh = 0; hh < G; ++hh)
      for (index_t qb = 0; qb < nqb; ++qb) {
        const auto x = static_cast<std::size_t>(hh * nqb + qb);
        if (s.qhi[x] <= std::max(s.qlo[x], j0) || s.qlo[x] >= j0 + n_keys) continue;
        const index_t q0 = qb * M;
        bwd_block(c, b, g * G + hh, hh, q0, static_cast<int>(std::min(M, Lq - q0)), j0, n_keys, bad, s, dq_acc,
                        visible, dbias, wp);
      }
    for (index_t t = 0; t < n_keys; ++t) {
      const index_t j = c.kv_token(g, j0 + t);
      float* rk = dk.row(b, g, j);
      float* rv = dv.row(b, g, j);
      const float* ak = s.dk.data() + t * dp;
      const float* av = s.dv.data() + t * dvp;
      for (index_t d = 0; d < D; ++d) rk[d] = (acc ? rk[d] : 0.0f) + ak[d] * dk_scale;
      for (index_t d = 0; d < Dv; ++d) rv[d] = (acc ? rv[d] : 0.0f) + av[d];
    }
  }
}

}  // namespace attnkit::detail
