#pragma once
/// \file
/// The backward of the quadratic family, stage by stage (after validation):
///   A  rows: packed scaled Q and dO, D_i, LSE, flags                (parallel over rows)
///   B  top_k thresholds / Σw / the regulariser's per-row statistics  (only when needed)
///   C  the regulariser's coefficients                                 (fixed-order sums)
///   D  main pass: tasks (batch, kv head, part of the keys), task.hpp  (parallel)
///   E  dQ of split heads: the parts' partial sums added in part order
///   F  d sinks and a broadcast bias's d bias: fixed-order sums
/// Every sum has an order that depends on the problem only, never on the thread
/// count: dq, dk, dv, d sinks and d bias are bitwise identical for any num_threads.
/// Memory beyond the caller's tensors: a padded copy of Q and dO, dQ accumulators
/// (one per task, or one per part of a split head), per-row scalars and per-worker
/// tiles — O(B·Hq·Lq·(D + Dv)), never Lq × Lk.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include "../../parallel/thread_pool.hpp"
#include "../../parallel/workspace.hpp"
#include "rows.hpp"
#include "task.hpp"

namespace attnkit::detail {

/// Call-wide buffers of the main pass (in the workspace's shared set).
struct bwd_partials {
  aligned_vector<float> dq;            ///< [B·Hkv][parts][G·Lq][Dp] when heads are split
  std::vector<unsigned char> visible;  ///< [B·Hkv][parts][G·Lq] (d sinks only)
  aligned_vector<float> dbias;         ///< d bias slices (bwd_dbias_target)
  std::size_t bytes() const { return (dq.capacity() + dbias.capacity()) * sizeof(float) + visible.capacity(); }
};

/// Tasks the main pass aims for when a call has fewer (batch, kv head) pairs.
inline constexpr index_t bwd_min_tasks = 8;

/// Parts the keys of each (batch, kv head) are split into: 1 unless the call has
/// fewer than bwd_min_tasks heads, then enough for that many tasks (each part at
/// least 4 key blocks). A function of the shape only, so the sums' order never
/// depends on the thread count. Each part costs one more dQ accumulator: at most
/// bwd_min_tasks × the size of dq.
inline index_t bwd_parts(const problem_shape& sh) {
  const index_t heads = sh.batch * sh.kv_heads, blocks = (sh.k_len + bwd_key_block - 1) / bwd_key_block;
  if (heads >= bwd_min_tasks || blocks < 8) return 1;
  return std::clamp<index_t>((bwd_min_tasks + heads - 1) / heads, 1, blocks / 4);
}

/// Key blocks [first, last) of part p of `parts` for batch b: equal shares of the
/// (row, key block) pairs the options' intervals allow.
inline std::pair<index_t, index_t> bwd_part_range(const problem_shape& sh, const options& opt, index_t b, index_t p,
                                                  index_t parts) {
  const index_t blocks = (sh.k_len + bwd_key_block - 1) / bwd_key_block;
  if (parts == 1) return {0, blocks};
  std::vector<index_t> work(static_cast<std::size_t>(blocks + 1), 0);
  const batch_keys bk = keys_of_batch(opt, b, sh.q_len, sh.k_len);
  for (index_t i = 0; i < sh.q_len; ++i) {
    const key_range kr = analytic_range(opt, bk, i);
    if (kr.size() == 0) continue;
    ++work[static_cast<std::size_t>(kr.lo / bwd_key_block)];
    --work[static_cast<std::size_t>((kr.hi - 1) / bwd_key_block + 1)];
  }
  index_t total = 0, run = 0;
  for (index_t x = 0; x < blocks; ++x) total += (run += work[static_cast<std::size_t>(x)]) + 1;  // +1: every block costs a pack
  index_t first = blocks, last = blocks, cum = 0;
  run = 0;
  for (index_t x = 0; x < blocks; ++x) {
    // Block x goes to the part its cumulative share falls in.
    const index_t part = std::min(parts - 1, cum * parts / std::max<index_t>(total, 1));
    if (part == p && first == blocks) first = x;
    if (part > p) {
      last = x;
      break;
    }
    cum += (run += work[static_cast<std::size_t>(x)]) + 1;
  }
  if (first == blocks) return {blocks, blocks};
  return {first, last};
}

/// The backward of a quadratic-family call with key set `keys` (no_pattern, a
/// pattern's adapter, a permutation's rank window, top_k's thresholds); `fwd_top_k`
/// is the forward's top_k adapter whose selection stage B reruns (null otherwise).
template <class Arch, class Pol, class Keys, class KV>
void run_quadratic_backward(const Pol& pol, const problem_shape& sh, const tensor_view<const float>& q,
                            const tensor_view<const KV>& k, const tensor_view<const KV>& v,
                            const tensor_view<const float>& out, const float* lse, const tensor_view<const float>& dout,
                            const tensor_view<float>& dq, const tensor_view<float>& dk, const tensor_view<float>& dv,
                            const options& opt, const backward_options& bo, workspace& ws, const Keys& keys,
                            const top_k_keys<Arch>* fwd_top_k = nullptr) {
  using tile = simd::tile_shape<Arch>;
  constexpr int W = simd::ops<Arch>::width;
  const int threads = resolve_num_threads(opt.num_threads);
  ws.reserve_slots(threads);
  const index_t B = sh.batch, Hq = sh.q_heads, Hkv = sh.kv_heads, G = sh.group(), Lq = sh.q_len, D = sh.head_dim;
  const index_t nrows = B * Hq * Lq;
  const block_scratch no_block;
  bwd_rows& rows = ws.shared().get<bwd_rows>();
  bwd_call<Arch, Pol, Keys> c{keys, pol, sh, opt, bo, rows, no_block};
  c.dp = (D + W - 1) / W * W;
  c.dvp = (sh.value_dim + W - 1) / W * W;
  const double tau = resolved_scale(opt, D);
  c.q_scale = static_cast<float>(tau * logit_unit<Pol>);
  c.dq_scale = static_cast<float>(tau);
  c.dk_scale = 1.0f / logit_unit<Pol>;
  c.elementwise = has_elementwise_terms(opt);
  c.reg = bo.reg.active();
  c.drop = dropout_mask(opt.dropout);
  c.keep_scale = static_cast<float>(c.drop.scale());
  auto grow = [](auto& vec, index_t size) {
    if (vec.size() < static_cast<std::size_t>(size)) vec.resize(static_cast<std::size_t>(size));
  };
  grow(rows.q, nrows * c.dp), grow(rows.dout, nrows * c.dvp), grow(rows.dvec, nrows), grow(rows.flags, nrows);
  if constexpr (online_softmax<Pol>) grow(rows.lse2, nrows);
  if constexpr (Pol::normalization == normalization::sum) grow(rows.inv_z, nrows);
  if (c.reg) grow(rows.rho, nrows), grow(rows.sigma, nrows);
  if constexpr (Keys::filters) grow(rows.thr, nrows), grow(rows.tie, nrows), grow(rows.lo, nrows), grow(rows.hi, nrows);

  // top_k's rows start from the options' intervals (stage A's "row has keys" test);
  // stage B narrows them to the kept keys.
  if constexpr (Keys::filters)
    for (index_t b = 0; b < B; ++b) {
      const batch_keys bk = keys_of_batch(opt, b, Lq, sh.k_len);
      for (index_t h = 0; h < Hq; ++h)
        for (index_t r = 0; r < Lq; ++r) {
          const key_range kr = analytic_range(opt, bk, r);
          rows.lo[static_cast<std::size_t>(c.row(b, h, r))] = kr.lo;
          rows.hi[static_cast<std::size_t>(c.row(b, h, r))] = kr.hi;
        }
    }
  constexpr index_t chunk = 256;
  const index_t chunks = (Lq + chunk - 1) / chunk;
  parallel_for(B * Hq * chunks, threads, [&](index_t t) {
    const index_t bh = t / chunks, r0 = t % chunks * chunk;
    bwd_prepare_rows(c, q, out, dout, lse, bh / Hq, bh % Hq, r0, std::min(Lq, r0 + chunk));
  });

  // Stage B.
  constexpr bool needs_sum = Pol::normalization == normalization::sum;
  if (Keys::filters || needs_sum || c.reg) {
    packed_kv<Arch> kv;
    auto& storage = ws.shared().get<typename packed_kv<Arch>::storage>();
    const auto wide_of = [&](int slot) {
      auto& w = ws.slot(slot).get<block_scratch>().wide;
      if (w.size() < static_cast<std::size_t>(16 * D)) w.resize(static_cast<std::size_t>(16 * D));
      return w.data();
    };
    if constexpr (Keys::reordered)
      kv.pack(k, v, threads, reordered_rows<Keys>{keys}, false, storage, wide_of);
    else
      kv.pack(k, v, threads, identity_rows{}, false, storage, wide_of);
    constexpr index_t blk = 4 * tile::rows * 8;
    const index_t nb = (Lq + blk - 1) / blk;
    if constexpr (Keys::filters) {
      parallel_for(B * Hq * nb, threads, [&](index_t t, int slot) {
        const index_t bh = t / nb, r0 = t % nb * blk;
        bwd_top_k_select(c, *fwd_top_k, kv, ws, q, bh / Hq, bh % Hq, r0, static_cast<int>(std::min(blk, Lq - r0)),
                         ws.slot(slot).get<block_scratch>());
      });
    }
    if (needs_sum || c.reg) {
      parallel_for(B * Hq * nb, threads, [&](index_t t, int slot) {
        const index_t bh = t / nb, r0 = t % nb * blk, b = bh / Hq;
        const batch_keys bk = keys_of_batch(opt, b, Lq, sh.k_len);
        const auto wp = resolve_weight(pol, weight_context{bk.lk, Lq, D});
        bwd_scratch& s = ws.slot(slot).get<bwd_scratch>();
        grow(s.tmp, tile::rows * tile::keys);
        bwd_row_stats(c, kv, wp, b, bh % Hq, r0, std::min(Lq, r0 + blk), s.lo, s.hi, s.tmp.data());
      });
    }
  }
  if (c.reg) bwd_regularizer_coefficients(c);  // stage C

  // d bias: straight into the caller's view, or into per-(batch, kv head) slices.
  bwd_partials& part = ws.shared().get<bwd_partials>();
  bwd_dbias_target target;
  const bool want_dbias = bo.dbias.data != nullptr;
  if (want_dbias) {
    const auto& e = bo.dbias.extent;  // = options.bias's (a permutation's ranked options carry none)
    target.kv_heads = Hkv, target.group = G, target.rows = e[2], target.keys = sh.k_len;
    target.b_bcast = e[0] == 1, target.h_bcast = e[1] == 1;
    const bool shared = (target.b_bcast && B > 1) || (target.h_bcast && Hkv > 1);
    if (shared) {
      target.slice_heads = target.h_bcast ? 1 : G;
      const index_t n = B * Hkv * target.slice_heads * e[2] * sh.k_len;
      grow(part.dbias, n);
      std::fill_n(part.dbias.data(), n, 0.0f);
      target.slices = part.dbias.data();
    } else {
      target.user = &bo.dbias;
      if (!bo.accumulate)
        for (index_t x = 0; x < e[0]; ++x)
          for (index_t y = 0; y < e[1]; ++y)
            for (index_t i = 0; i < e[2]; ++i)
              for (index_t j = 0; j < e[3]; ++j) bo.dbias(x, y, i, j) = 0.0f;
    }
  }

  // Stage D.
  const index_t parts = bwd_parts(sh), tasks = B * Hkv * parts, head_rows = G * Lq;
  const bool want_visible = bo.dsinks != nullptr;
  if (parts > 1) grow(part.dq, tasks * head_rows * c.dp);
  if (want_visible) grow(part.visible, tasks * head_rows);
  parallel_for(tasks, threads, [&](index_t t, int slot) {
    const index_t bg = t / parts, p = t % parts, b = bg / Hkv, g = bg % Hkv;
    bwd_scratch& s = ws.slot(slot).get<bwd_scratch>();
    float* dq_acc;
    if (parts > 1) {
      dq_acc = part.dq.data() + t * head_rows * c.dp;
    } else {
      grow(s.dq, head_rows * c.dp);
      dq_acc = s.dq.data();
    }
    const auto [kb0, kb1] = bwd_part_range(sh, opt, b, p, parts);
    bwd_task(c, k, v, dk, dv, b, g, kb0, kb1, dq_acc, want_visible ? part.visible.data() + t * head_rows : nullptr,
             want_dbias ? &target : nullptr, s);
    if (parts == 1)  // this task holds the group's whole dQ
      for (index_t hh = 0; hh < G; ++hh)
        for (index_t r = 0; r < Lq; ++r) {
          const index_t h = g * G + hh;
          float* dst = dq.row(b, h, c.token(h, r));
          const float* a = dq_acc + (hh * Lq + r) * c.dp;
          for (index_t d = 0; d < D; ++d) dst[d] = (bo.accumulate ? dst[d] : 0.0f) + a[d] * c.dq_scale;
        }
  });

  // Stage E: the parts of a split head, added in part order.
  if (parts > 1)
    parallel_for(B * Hq, threads, [&](index_t bh) {
      const index_t b = bh / Hq, h = bh % Hq, g = h / G, hh = h % G;
      for (index_t r = 0; r < Lq; ++r) {
        float* dst = dq.row(b, h, c.token(h, r));
        for (index_t d = 0; d < D; ++d) {
          float sum = 0.0f;
          for (index_t p = 0; p < parts; ++p)
            sum += part.dq[static_cast<std::size_t>((((b * Hkv + g) * parts + p) * head_rows + hh * Lq + r) * c.dp + d)];
          dst[d] = (bo.accumulate ? dst[d] : 0.0f) + sum * c.dq_scale;
        }
      }
    });

  // Stage F: d sinks = −Σ_{b,i} e^{sink − lse_i}·D_i over rows with a visible key.
  if (want_visible) {
    for (index_t h = 0; h < Hq; ++h) {
      const double sink2 = static_cast<double>(opt.sinks[static_cast<std::size_t>(h)]) * std::numbers::log2e;
      const index_t g = h / G, hh = h % G;
      double sum = 0.0;
      for (index_t b = 0; b < B; ++b)
        for (index_t r = 0; r < Lq; ++r) {
          bool seen = false;
          for (index_t p = 0; p < parts; ++p)
            seen = seen || part.visible[static_cast<std::size_t>(((b * Hkv + g) * parts + p) * head_rows + hh * Lq + r)];
          if (!seen) continue;
          const auto u = static_cast<std::size_t>(c.row(b, h, r));
          sum -= std::exp2(sink2 - rows.lse2[u]) * static_cast<double>(rows.dvec[u]);
        }
      float& x = bo.dsinks[static_cast<std::size_t>(h)];
      x = static_cast<float>(bo.accumulate ? static_cast<double>(x) + sum : sum);
    }
  }
  if (target.slices) {  // a broadcast bias: its slices, summed in (batch, kv head) order
    const auto& e = bo.dbias.extent;
    for (index_t x = 0; x < e[0]; ++x)
      for (index_t y = 0; y < e[1]; ++y)
        for (index_t i = 0; i < e[2]; ++i)
          for (index_t j = 0; j < e[3]; ++j) {
            float sum = 0.0f;
            for (index_t b = 0; b < B; ++b) {
              if (!target.b_bcast && b != x) continue;
              for (index_t g = 0; g < Hkv; ++g) {
                if (!target.h_bcast && g != y / G) continue;
                const index_t hs = target.h_bcast ? 0 : y % G;
                sum += target.slices[static_cast<std::size_t>((((b * Hkv + g) * target.slice_heads + hs) * e[2] + i) * e[3] + j)];
              }
            }
            float& dst = bo.dbias(x, y, i, j);
            dst = (bo.accumulate ? dst : 0.0f) + sum;
          }
  }
}

}  // namespace attnkit::detail
