#pragma once
/// \file
/// pattern::flex_prefill on the prefill skeleton: a per (batch, head, query block)
/// list of kept key blocks, decided before the attention pass from block means
/// (O((Lq/block)·(Lk/block)·D) work), then a key-set adapter over it.
#include <algorithm>
#include <cmath>
#include <vector>

#include "../../core/checked.hpp"
#include "../../policy/sparse.hpp"
#include "../prefill/schedule.hpp"
#include "selection.hpp"

namespace attnkit::detail {

/// FlexPrefill block selection as a key-set adapter: a per (batch, head, query
/// block) list of kept key blocks, decided before the attention pass from block
/// means (O((Lq/block)·(Lk/block)·D) work).
struct block_selection_keys : key_set_base {
  static constexpr bool has_bits = true;
  index_t block = 64, q_blocks = 0, k_blocks = 0, heads = 0;
  std::vector<unsigned char> keep;  ///< [B·H][q_blocks][k_blocks]

  bool on(index_t b, index_t h, index_t qb, index_t kb) const {
    return keep[static_cast<std::size_t>(((b * heads + h) * q_blocks + qb) * k_blocks + kb)] != 0;
  }
  key_range hull(index_t, index_t, index_t) const { return {0, sat_mul(k_blocks, block)}; }
  tile_class classify(const block_scratch&, index_t b, index_t h, index_t i0, index_t i1, index_t j0, index_t j1) const {
    bool any = false, all = true;
    for (index_t qb = i0 / block; qb <= (i1 - 1) / block; ++qb)
      for (index_t kb = j0 / block; kb <= (j1 - 1) / block && kb < k_blocks; ++kb) {
        const bool x = on(b, h, qb, kb);
        any = any || x;
        all = all && x;
      }
    return all ? tile_class::full : any ? tile_class::partial : tile_class::empty;
  }
  bool allowed(index_t b, index_t h, index_t i, index_t j) const { return on(b, h, i / block, j / block); }
  /// allowed for keys j0 … j0 + n − 1 as bits.
  std::uint64_t allowed_bits(index_t b, index_t h, index_t i, index_t j0, int n) const {
    std::uint64_t bits = 0;
    for (index_t kb = j0 / block; kb <= (j0 + n - 1) / block && kb < k_blocks; ++kb)
      if (on(b, h, i / block, kb)) bits |= pattern::range_bits(kb * block, sat_mul(kb + 1, block), j0, n);
    return bits;
  }
};

template <class KV>
block_selection_keys select_blocks(const pattern::flex_prefill& p, const problem_shape& sh,
                                   const tensor_view<const float>& q, const tensor_view<const KV>& k,
                                   const options& opt, int threads) {
  block_selection_keys sel;
  const index_t B = p.block, D = sh.head_dim;
  sel.block = B;
  sel.q_blocks = ceil_div(sh.q_len, B);  // B may be anything up to INT64_MAX
  sel.k_blocks = ceil_div(sh.k_len, B);
  sel.heads = sh.q_heads;
  sel.keep.assign(static_cast<std::size_t>(sh.batch * sh.q_heads * sel.q_blocks * sel.k_blocks), 0);
  const double tau = resolved_scale(opt, sh.head_dim);
  parallel_for(sh.batch * sh.q_heads, threads, [&](index_t bh) {
    const index_t b = bh / sh.q_heads, h = bh % sh.q_heads, g = h / sh.group();
    const batch_keys bk = keys_of_batch(opt, b, sh.q_len, sh.k_len);
    std::vector<double> kbar(static_cast<std::size_t>(sel.k_blocks * D), 0.0), qbar(static_cast<std::size_t>(D));
    for (index_t kb = 0; kb < sel.k_blocks; ++kb) {
      const index_t j0 = kb * B, jv = std::min(std::min(sh.k_len, sat_add(j0, B)), bk.lk);
      for (index_t j = j0; j < jv; ++j) {
        const KV* r = k.row(b, g, j);
        for (index_t d = 0; d < D; ++d) kbar[static_cast<std::size_t>(kb * D + d)] += to_float(r[d]);
      }
      for (index_t d = 0; d < D && jv > j0; ++d) kbar[static_cast<std::size_t>(kb * D + d)] /= static_cast<double>(jv - j0);
    }
    std::vector<index_t> cand;
    std::vector<double> est;
    std::vector<std::size_t> order;
    for (index_t qb = 0; qb < sel.q_blocks; ++qb) {
      const index_t i0 = qb * B, i1 = std::min(sh.q_len, sat_add(i0, B));
      std::fill(qbar.begin(), qbar.end(), 0.0);
      for (index_t i = i0; i < i1; ++i) {
        const float* r = q.row(b, h, i);
        for (index_t d = 0; d < D; ++d) qbar[static_cast<std::size_t>(d)] += r[d] / static_cast<double>(i1 - i0);
      }
      // Candidates: key blocks that some row of the query block may see.
      index_t lo = bk.lk, hi = 0;
      for (index_t i = i0; i < i1; ++i) {
        const key_range kr = analytic_range(opt, bk, i);
        if (kr.size() > 0) {
          lo = std::min(lo, kr.lo);
          hi = std::max(hi, kr.hi);
        }
      }
      cand.clear();
      est.clear();
      for (index_t kb = lo / B; kb < sel.k_blocks && kb * B < hi; ++kb) {
        bool any = false;  // exact test: some row's interval meets the block
        for (index_t i = i0; i < i1 && !any; ++i) {
          const key_range kr = analytic_range(opt, bk, i);
          any = kr.lo < std::min(sat_add(kb * B, B), sh.k_len) && kr.hi > kb * B && kr.size() > 0;
        }
        if (!any) continue;
        double s = 0;
        for (index_t d = 0; d < D; ++d) s += qbar[static_cast<std::size_t>(d)] * kbar[static_cast<std::size_t>(kb * D + d)];
        cand.push_back(kb);
        est.push_back(tau * s);
      }
      if (cand.empty()) continue;
      const double m = *std::max_element(est.begin(), est.end());
      double z = 0;
      for (auto& e : est) z += (e = std::exp(e - m));
      for (auto& e : est) e /= z;
      order.resize(cand.size());
      for (std::size_t x = 0; x < order.size(); ++x) order[x] = x;
      std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t c) { return est[a] > est[c]; });
      double cum = 0;
      index_t taken = 0;
      for (std::size_t o : order) {
        if (cum >= p.gamma && taken >= p.min_budget) break;
        sel.keep[static_cast<std::size_t>(((b * sh.q_heads + h) * sel.q_blocks + qb) * sel.k_blocks + cand[o])] = 1;
        cum += est[o];
        ++taken;
      }
    }
  });
  return sel;
}

/// The kernel of pattern::flex_prefill: select, (export the selection), attend.
template <>
struct selection<pattern::flex_prefill> {
  template <class Arch, class Inner, class Obs, class KV>
  static void run(const sparse<pattern::flex_prefill, Inner>& pol, const problem_shape& sh,
                  const tensor_view<const float>& q, const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                  const tensor_view<float>& out, const options& opt, Obs& obs, workspace& ws) {
    const auto sel = select_blocks(pol.pattern, sh, q, k, opt, resolve_num_threads(opt.num_threads));
    if (pol.pattern.selection)
      std::copy(sel.keep.begin(), sel.keep.end(), pol.pattern.selection);
    run_quadratic<Arch>(pol.inner, sh, q, k, v, out, opt, obs, ws, sel);
  }
};

}  // namespace attnkit::detail
