#pragma once
/// \file
/// The backward of the kernelised skeleton for one (batch, query head), in two
/// linear-time passes over chunks of one key tile (BN).
///
/// With W_ij = φq_i·φk_j·λ^{p_i−1−j} (j < p_i), den_i = Σ_j W_ij + ε and
/// o_i = Σ_j W_ij v_j / den_i (or without den), let g_i = s·dO_i/den_i (s: the
/// kernelised part's share of the output, ½ for LLN+Diag), u_i = Σ_j W̃_ij (g_i·v_j) φk_j
/// (W̃: W without φq_i) and c_i = −φq_i·u_i/den_i (0 unnormalised). Appending a 1 to
/// every v_j and c_i to every g_i (v̂, ĝ) makes the normaliser one more value column:
///   dφq_i = u_i + c_i·z_i,                       z_i = Σ_j λ^{p_i−1−j} φk_j
///   dφk_j = Σ_{i: p_i>j} λ^{p_i−1−j} (v̂_j·ĝ_i) φq_i
///   dv_j  = Σ_{i: p_i>j} λ^{p_i−1−j} (φk_j·φq_i) g_i
/// then dq_i, dk_j through the maps' vjp. `out` is not needed: c_i comes from u_i.
///
/// Pass 1 (queries, forward in i) mirrors the forward: the state Sᵀ = Σ_j v_j φk_jᵀ
/// of the keys before the chunk gives u_i = λ^{p_i−a} gᵢ·Sᵀ, the chunk's own keys a
/// masked tile (g·vᵀ)·φK; z_i from running prefix sums of φk inside the chunk.
/// Pass 2 (keys, backward in j) is its mirror image: a reverse state
/// R = Σ_{i: p_i ≥ e} λ^{p_i−e} φq_i ĝ_iᵀ of the rows that see the whole key chunk
/// [j0, e) gives both dφk (R·v̂_j) and dv (Rᵀ·φk_j); the few rows that see part of
/// it (p_i ∈ (j0, e), at most BN − 1 since a prefix grows by one per row below lk)
/// a masked tile; then the rows with p_i ∈ [j0, e) join R. Each pass costs
/// O(N·(M·Dv + BN·(M + Dv))) per head and needs O(BN·(M + Dv)) scratch beyond the
/// per-key accumulators.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../../core/aligned.hpp"
#include "../../core/dtype.hpp"
#include "../../core/mask.hpp"
#include "../../core/options.hpp"
#include "products.hpp"
#include "skeleton.hpp"
#include "../../simd/widen.hpp"

namespace attnkit::detail {

/// A worker's buffers for the backward of one head (in its workspace slot).
struct kernelized_backward_scratch {
  aligned_vector<float> St, z, zpref, vrows, vt, phiqT, g, gT, u, tile, R, Rt, rc, ccol, scaled_a, scaled_b, xrow, dx,
      pw, pw_fwd, pw_rev, feat_q, feat_k, dphik, dvb, dkd, dsum;
  std::vector<float> inv_den, cq;  ///< per row of the head: 1/den_i (0: no key) and c_i
  std::size_t bytes() const {
    std::size_t n = (inv_den.capacity() + cq.capacity()) * sizeof(float);
    for (const auto* x : {&St, &z, &zpref, &vrows, &vt, &phiqT, &g, &gT, &u, &tile, &R, &Rt, &rc, &ccol, &scaled_a,
                          &scaled_b, &xrow, &dx, &pw, &pw_fwd, &pw_rev, &feat_q, &feat_k, &dphik, &dvb, &dkd, &dsum})
      n += x->capacity() * sizeof(float);
    return n;
  }
};

inline void grow(aligned_vector<float>& x, index_t n) {
  if (x.size() < static_cast<std::size_t>(n)) x.resize(static_cast<std::size_t>(n));
}

/// The backward of one (batch, query head) of the kernelised skeleton. Pass 1 maps
/// every query and key once and keeps the features (feat_q [Lq][Mp], feat_k
/// [lk][Mp]) for pass 2.
template <class Arch, class FQ, class FK, class KV>
struct kernelized_head_backward {
  using O = simd::ops<Arch>;
  static constexpr int W = O::width, BN = simd::tile_shape<Arch>::keys, MR = simd::tile_shape<Arch>::rows;

  const FQ& fq;
  const FK& fk;
  const kernelized_params& prm;
  float share;  ///< weight of the kernelised part in the output
  const problem_shape& sh;
  const tensor_view<const float>& q;
  const tensor_view<const KV>& k;
  const tensor_view<const KV>& v;
  const tensor_view<const float>& dout;
  const options& opt;
  kernelized_backward_scratch& s;
  index_t b = 0, h = 0, g = 0;
  batch_keys bk{};
  index_t M = 0, Mp = 0, D = 0, Dv = 0, Dvp = 0, Lq = 0;
  bool decay = false;
  const float* phik = nullptr;  ///< the loaded keys' features: rows of feat_k
  const float* phiq = nullptr;  ///< the loaded rows' features: rows of feat_q
  index_t rows_r0 = -1, rows_n = 0;  ///< the rows load_rows last loaded (reused by absorb_rows)

  void init(index_t batch, index_t head) {
    b = batch, h = head, g = head / sh.group();
    bk = keys_of_batch(opt, b, sh.q_len, sh.k_len);
    M = fq.dim(), D = sh.head_dim, Dv = sh.value_dim, Lq = sh.q_len;
    Mp = (M + W - 1) / W * W, Dvp = (Dv + W - 1) / W * W;
    const double lambda = prm.decay.empty() ? 1.0 : prm.decay[static_cast<std::size_t>(h)];
    decay = lambda != 1.0;
    // λ^t (t ≤ 2BN + 1); pw_fwd[BN + t] = λ^t and 0 below BN; pw_rev[2BN − t] = λ^t
    // and 0 above 2BN: the decay of a tile row is then one contiguous slice, its
    // masked part reading zeros (mask_tile_row).
    grow(s.pw, 2 * BN + 2), grow(s.pw_fwd, 3 * BN + 2), grow(s.pw_rev, 3 * BN + 2);
    std::fill_n(s.pw_fwd.data(), 3 * BN + 2, 0.0f);
    std::fill_n(s.pw_rev.data(), 3 * BN + 2, 0.0f);
    for (index_t t = 0; t <= 2 * BN + 1; ++t) {
      const float x = static_cast<float>(std::pow(lambda, static_cast<double>(t)));
      s.pw[static_cast<std::size_t>(t)] = x;
      if (BN + t < 3 * BN + 2) s.pw_fwd[static_cast<std::size_t>(BN + t)] = x;
      if (t <= 2 * BN) s.pw_rev[static_cast<std::size_t>(2 * BN - t)] = x;
    }
    grow(s.St, Dv * Mp), grow(s.z, Mp), grow(s.zpref, (BN + 1) * Mp), grow(s.vrows, BN * Dvp), grow(s.vt, Dv * BN);
    grow(s.phiqT, M * BN), grow(s.g, BN * Dvp), grow(s.gT, Dv * BN), grow(s.u, BN * Mp), grow(s.tile, MR * BN);
    grow(s.R, M * Dvp), grow(s.Rt, Dv * Mp), grow(s.rc, Mp), grow(s.ccol, BN);
    grow(s.scaled_a, BN * std::max(Mp, Dvp)), grow(s.scaled_b, BN * std::max(Mp, Dvp));
    grow(s.xrow, std::max(D, Dv)), grow(s.dx, D);
    grow(s.feat_q, Lq * Mp), grow(s.feat_k, bk.lk * Mp);
    if (s.inv_den.size() < static_cast<std::size_t>(Lq)) s.inv_den.resize(static_cast<std::size_t>(Lq));
    if (s.cq.size() < static_cast<std::size_t>(Lq)) s.cq.resize(static_cast<std::size_t>(Lq));
  }

  index_t prefix(index_t i) const { return kernelized_prefix(opt, bk, i); }
  float lam(index_t t) const { return s.pw[static_cast<std::size_t>(t)]; }
  /// The first row whose prefix reaches t (Lq if none): prefixes never decrease.
  index_t first_row_reaching(index_t t) const {
    index_t lo = 0, hi = Lq;
    while (lo < hi) {
      const index_t mid = lo + (hi - lo) / 2;
      if (prefix(mid) >= t) hi = mid; else lo = mid + 1;
    }
    return lo;
  }

  /// Keys [j0, j0 + n): φk from feat_k (mapped into it when `map`, zero-padded
  /// columns) and v into vrows [n][Dvp]; with `transpose`, vᵀ into vt [Dv][BN].
  /// Returns whether φk holds a NaN or Inf.
  bool load_keys(index_t j0, index_t n, bool map, bool transpose) {
    float* feat = s.feat_k.data() + j0 * Mp;
    for (index_t jj = 0; jj < n; ++jj) {
      if (map) {
        const float* x;
        if constexpr (std::is_same_v<KV, float>) {
          x = k.row(b, g, j0 + jj);
        } else {
          widen(k.row(b, g, j0 + jj), s.xrow.data(), D);
          x = s.xrow.data();
        }
        float* f = feat + jj * Mp;
        fk.map(x, token_ref{b, g, j0 + jj, false, bk}, f);
        std::fill(f + M, f + Mp, 0.0f);
      }
      float* vr = s.vrows.data() + jj * Dvp;
      widen(v.row(b, g, j0 + jj), vr, Dv);
      std::fill(vr + Dv, vr + Dvp, 0.0f);
    }
    phik = feat;
    if (transpose) transpose_rows<Arch>(s.vrows.data(), Dvp, n, Dv, s.vt.data(), BN, BN);
    return simd::any_nonfinite<Arch>(phik, n * Mp);
  }

  /// Rows [r0, r0 + n) for pass 2: φq from feat_q, g = share·dO/den and c (from pass
  /// 1) into g [n][Dvp] and ccol, the transposes phiqT [M][BN], gT [Dv][BN].
  /// Returns whether φq or g holds a NaN or Inf.
  bool load_rows(index_t r0, index_t n) {
    phiq = s.feat_q.data() + r0 * Mp;
    for (index_t r = 0; r < n; ++r) {
      const index_t i = r0 + r;
      simd::scale_copy<Arch>(dout.row(b, h, i), share * s.inv_den[static_cast<std::size_t>(i)], s.g.data() + r * Dvp, Dv);
      std::fill(s.g.data() + r * Dvp + Dv, s.g.data() + (r + 1) * Dvp, 0.0f);
      s.ccol[static_cast<std::size_t>(r)] = s.cq[static_cast<std::size_t>(i)];
    }
    std::fill(s.ccol.data() + n, s.ccol.data() + BN, 0.0f);
    transpose_rows<Arch>(phiq, Mp, n, M, s.phiqT.data(), BN, BN);
    transpose_rows<Arch>(s.g.data(), Dvp, n, Dv, s.gT.data(), BN, BN);
    rows_r0 = r0, rows_n = n;
    return simd::any_nonfinite<Arch>(phiq, n * Mp) || simd::any_nonfinite<Arch>(s.g.data(), n * Dvp);
  }

  /// Pass 1: dq of every row of the head (written, or added with `accumulate`); fills
  /// inv_den, cq, feat_q and feat_k for pass 2.
  void queries(const tensor_view<float>& dq, bool accumulate) {
    const bool causal_rows = opt.causal != causal::none;
    std::fill_n(s.St.data(), Dv * Mp, 0.0f);
    std::fill_n(s.z.data(), Mp, 0.0f);
    index_t absorbed = 0, loaded_j0 = -1, loaded_n = 0, mapped = 0;
    bool keys_nonfinite = false;
    auto load = [&](index_t j0, index_t n) {
      if (j0 == loaded_j0 && n == loaded_n) return;  // the chunk's own keys are the next absorbed tile
      // Tiles only move forward from key 0, so [0, mapped) is mapped; a tile reaching
      // past it is mapped whole (the map is deterministic: recomputing a key is exact).
      keys_nonfinite = load_keys(j0, n, j0 + n > mapped, true);
      mapped = std::max(mapped, j0 + n);
      loaded_j0 = j0, loaded_n = n;
    };
    // Sᵀ ← λ^n Sᵀ + Σ_jj λ^{n−1−jj} v_jj φk_jjᵀ, z likewise, over the loaded keys.
    auto absorb = [&](index_t n) {
      const float* vt = s.vt.data();
      if (decay) {
        for (index_t x = 0; x < Dv * Mp; ++x) s.St[static_cast<std::size_t>(x)] *= lam(n);
        for (index_t m = 0; m < Mp; ++m) s.z[static_cast<std::size_t>(m)] *= lam(n);
        for (index_t d = 0; d < Dv; ++d)
          for (index_t jj = 0; jj < n; ++jj) s.scaled_a[static_cast<std::size_t>(d * BN + jj)] = vt[d * BN + jj] * lam(n - 1 - jj);
        vt = s.scaled_a.data();
      }
      gemm_acc<Arch>(Dv, Mp, n, vt, BN, phik, Mp, s.St.data(), Mp);
      for (index_t jj = 0; jj < n; ++jj) simd::axpy<Arch>(decay ? lam(n - 1 - jj) : 1.0f, phik + jj * Mp, s.z.data(), Mp);
    };
    for (index_t i0 = 0; i0 < Lq; i0 += BN) {
      const index_t rows = std::min<index_t>(BN, Lq - i0);
      const index_t p_last = prefix(i0 + rows - 1);
      // As in the forward: absorb up to p_last − BN, so the chunk's keys fill one tile.
      const index_t target = causal_rows ? std::max(absorbed, p_last - BN) : bk.lk;
      while (absorbed < target) {
        const index_t n = std::min<index_t>(BN, target - absorbed);
        load(absorbed, n);
        absorb(n);
        absorbed += n;
      }
      const index_t a = absorbed, n = causal_rows ? p_last - a : 0;
      if (n > 0) load(a, n);
      // φq (kept for pass 2), the rows' z (prefix sums of the chunk's keys on top of
      // the state), den, g.
      phiq = s.feat_q.data() + i0 * Mp;
      for (index_t r = 0; r < rows; ++r) {
        float* f = s.feat_q.data() + (i0 + r) * Mp;
        fq.map(q.row(b, h, i0 + r), token_ref{b, h, i0 + r, true, bk}, f);
        std::fill(f + M, f + Mp, 0.0f);
      }
      std::copy_n(s.z.data(), Mp, s.zpref.data());
      for (index_t t = 1; t <= n; ++t) {
        float* zt = s.zpref.data() + t * Mp;
        simd::scale_copy<Arch>(zt - Mp, decay ? lam(1) : 1.0f, zt, Mp);
        simd::axpy<Arch>(1.0f, phik + (t - 1) * Mp, zt, Mp);
      }
      for (index_t r = 0; r < rows; ++r) {
        const index_t i = i0 + r, p = prefix(i);
        double inv = 0.0;
        if (p > 0)
          inv = prm.normalize ? 1.0 / (static_cast<double>(simd::dot<Arch>(phiq + r * Mp, s.zpref.data() + (p - a) * Mp, M)) + prm.eps)
                              : 1.0;
        s.inv_den[static_cast<std::size_t>(i)] = static_cast<float>(inv);
        simd::scale_copy<Arch>(dout.row(b, h, i), share * static_cast<float>(inv), s.g.data() + r * Dvp, Dv);
        std::fill(s.g.data() + r * Dvp + Dv, s.g.data() + (r + 1) * Dvp, 0.0f);
      }
      // u = λ^{p−a}·g·Sᵀ + the chunk's masked tile (g·vᵀ)·φK.
      std::fill_n(s.u.data(), rows * Mp, 0.0f);
      gemm_acc<Arch>(rows, Mp, Dv, s.g.data(), Dvp, s.St.data(), Mp, s.u.data(), Mp);
      if (decay)
        for (index_t r = 0; r < rows; ++r)
          simd::scale_copy<Arch>(s.u.data() + r * Mp, lam(prefix(i0 + r) - a), s.u.data() + r * Mp, Mp);
      if (n > 0)
        for (index_t r0 = 0; r0 < rows; r0 += MR) {
          const int R = static_cast<int>(std::min<index_t>(MR, rows - r0));
          simd::qk_rows<Arch>(R, s.g.data() + r0 * Dvp, Dvp, s.vt.data(), Dv, s.tile.data());
          for (int r = 0; r < R; ++r) {  // keys jj < upto are seen, with weight λ^{upto−1−jj}
            const index_t upto = prefix(i0 + r0 + r) - a;
            mask_tile_row<Arch>(s.tile.data() + r * BN, BN, 0, upto, nullptr,
                                decay ? s.pw_rev.data() + 2 * BN - upto + 1 : nullptr);
          }
          masked_tile_acc<Arch>(R, s.tile.data(), BN, phik, Mp, n, s.u.data() + r0 * Mp, Mp, Mp, keys_nonfinite);
        }
      // c, dφq = u + c·z, dq = vjp.
      for (index_t r = 0; r < rows; ++r) {
        const index_t i = i0 + r, p = prefix(i);
        float* dst = dq.row(b, h, i);
        float* ur = s.u.data() + r * Mp;
        float c = 0.0f;
        if (p > 0 && prm.normalize) {
          c = -simd::dot<Arch>(phiq + r * Mp, ur, M) * s.inv_den[static_cast<std::size_t>(i)];
          simd::axpy<Arch>(c, s.zpref.data() + (p - a) * Mp, ur, M);
        }
        s.cq[static_cast<std::size_t>(i)] = c;
        if (p == 0) {  // no key: the output is 0, a constant
          if (!accumulate) std::fill_n(dst, D, 0.0f);
          continue;
        }
        std::fill_n(s.dx.data(), D, 0.0f);
        fq.vjp(q.row(b, h, i), token_ref{b, h, i, true, bk}, ur, s.dx.data());
        if (accumulate)
          simd::axpy<Arch>(1.0f, s.dx.data(), dst, D);
        else
          std::copy_n(s.dx.data(), D, dst);
      }
    }
    // Keys no row of this head reaches were never mapped: pass 2 reads them too.
    if (mapped < bk.lk) {
      for (index_t j0 = mapped; j0 < bk.lk; j0 += BN) load_keys(j0, std::min<index_t>(BN, bk.lk - j0), true, false);
    }
  }

  /// Pass 2: dφk [lk][Mp] and dv [lk][Dvp] of this head's rows into the per-key
  /// accumulators (each key tile zeroed when reached; rows ≥ lk untouched).
  void keys(float* dphik, float* dvb) {
    const index_t lk = bk.lk;
    if (lk <= 0) return;
    std::fill_n(s.R.data(), M * Dvp, 0.0f);
    std::fill_n(s.rc.data(), Mp, 0.0f);
    bool any_rows = false;
    // R ← λ^shift·R + Σ_rows λ^{p_i−base} φq_i g_iᵀ (rc likewise with c_i), rows [r0, r1) in tiles.
    auto absorb_rows = [&](index_t r0, index_t r1, index_t base, index_t shift) {
      if (decay && shift > 0) {
        for (index_t x = 0; x < M * Dvp; ++x) s.R[static_cast<std::size_t>(x)] *= lam(shift);
        for (index_t m = 0; m < Mp; ++m) s.rc[static_cast<std::size_t>(m)] *= lam(shift);
      }
      for (index_t t0 = r0; t0 < r1; t0 += BN) {
        const index_t n = std::min<index_t>(BN, r1 - t0);
        if (!(t0 == rows_r0 && n == rows_n)) load_rows(t0, n);
        for (index_t r = 0; r < n; ++r) {
          const float w = decay ? lam(prefix(t0 + r) - base) : 1.0f;
          if (decay)
            for (index_t m = 0; m < M; ++m) s.phiqT[static_cast<std::size_t>(m * BN + r)] *= w;
          if (prm.normalize) simd::axpy<Arch>(w * s.ccol[static_cast<std::size_t>(r)], phiq + r * Mp, s.rc.data(), Mp);
        }
        gemm_acc<Arch>(M, Dvp, n, s.phiqT.data(), BN, s.g.data(), Dvp, s.R.data(), Dvp);
        rows_r0 = -1;  // phiqT now holds weighted columns
        any_rows = true;
      }
    };
    absorb_rows(first_row_reaching(lk), Lq, lk, 0);
    for (index_t j0 = (lk - 1) / BN * BN; j0 >= 0; j0 -= BN) {
      const index_t e = std::min<index_t>(j0 + BN, lk), n = e - j0;
      load_keys(j0, n, false, false);
      float* dpk = dphik + j0 * Mp;
      float* dvk = dvb + j0 * Dvp;
      std::fill_n(dpk, n * Mp, 0.0f);  // first visit of these keys in this head
      std::fill_n(dvk, n * Dvp, 0.0f);
      if (any_rows) {  // rows that see every key of the chunk: through R
        transpose_rows<Arch>(s.R.data(), Dvp, M, Dv, s.Rt.data(), Mp, Mp);
        const float* va = s.vrows.data();
        const float* fa = phik;
        if (decay) {
          for (index_t jj = 0; jj < n; ++jj) {
            simd::scale_copy<Arch>(s.vrows.data() + jj * Dvp, lam(e - 1 - (j0 + jj)), s.scaled_a.data() + jj * Dvp, Dvp);
            simd::scale_copy<Arch>(phik + jj * Mp, lam(e - 1 - (j0 + jj)), s.scaled_b.data() + jj * Mp, Mp);
          }
          va = s.scaled_a.data(), fa = s.scaled_b.data();
        }
        gemm_acc<Arch>(n, Mp, Dv, va, Dvp, s.Rt.data(), Mp, dpk, Mp);
        if (prm.normalize)
          for (index_t jj = 0; jj < n; ++jj)
            simd::axpy<Arch>(decay ? lam(e - 1 - (j0 + jj)) : 1.0f, s.rc.data(), dpk + jj * Mp, Mp);
        gemm_acc<Arch>(n, Dvp, M, fa, Mp, s.R.data(), Dvp, dvk, Dvp);
      }
      // Rows that see part of the chunk (p_i ∈ (j0, e)) and rows about to join R (p_i = j0).
      const index_t ra = first_row_reaching(std::max<index_t>(j0, 1)), rh = first_row_reaching(e);
      const index_t cnt = rh - ra;  // ≤ n: prefixes below lk grow by exactly one per row
      if (cnt <= 0) {
        if (j0 > 0) absorb_rows(ra, ra, j0, n);  // no new row: R only decays to the next chunk's end
        continue;
      }
      const bool rows_nonfinite = load_rows(ra, cnt);
      const index_t p_ra = prefix(ra);  // rows [ra, rh) have prefixes p_ra, p_ra + 1, ...
      for (index_t jr = 0; jr < n; jr += MR) {
        const int R = static_cast<int>(std::min<index_t>(MR, n - jr));
        // dφk += T·φQ with T_ji = (v_j·g_i + c_i)·λ^{p_i−1−j} where j < p_i.
        simd::qk_rows<Arch>(R, s.vrows.data() + jr * Dvp, Dvp, s.gT.data(), Dv, s.tile.data());
        mask_rows(R, j0 + jr, p_ra, cnt, prm.normalize ? s.ccol.data() : nullptr);
        masked_tile_acc<Arch>(R, s.tile.data(), BN, phiq, Mp, cnt, dpk + jr * Mp, Mp, Mp, rows_nonfinite);
        // dv += U·G with U_ji = (φk_j·φq_i)·λ^{p_i−1−j} where j < p_i.
        simd::qk_rows<Arch>(R, phik + jr * Mp, Mp, s.phiqT.data(), M, s.tile.data());
        mask_rows(R, j0 + jr, p_ra, cnt, nullptr);
        masked_tile_acc<Arch>(R, s.tile.data(), BN, s.g.data(), Dvp, cnt, dvk + jr * Dvp, Dvp, Dvp, rows_nonfinite);
      }
      if (j0 > 0) absorb_rows(ra, rh, j0, n);  // rows with p_i ∈ [j0, e) now see every key before j0
    }
    rows_r0 = -1;
  }

 private:
  /// Keys [j, j + R) × the loaded rows (prefixes p_ra + cc, cc < cnt): keep
  /// (x + add_cc)·λ^{p−1−j} where j < p, else 0.
  void mask_rows(int R, index_t j, index_t p_ra, index_t cnt, const float* add) {
    for (int r = 0; r < R; ++r) {
      const index_t jr = j + r;  // seen by the columns with p_ra + cc > jr
      mask_tile_row<Arch>(s.tile.data() + r * BN, BN, std::max<index_t>(0, jr - p_ra + 1), cnt, add,
                          decay ? s.pw_fwd.data() + BN + p_ra - 1 - jr : nullptr);
    }
  }
};

}  // namespace attnkit::detail
