#pragma once
/// \file
/// The steps of one decode task: the query rows of one (batch, kv head) — every
/// query head of its GQA group, every new token — against a range of keys. K and V
/// are read in place, once per task, in blocks of at most 32 keys; each block goes
/// through
///   block_logits  (S = q·Kᵀ for every row, masked → −inf, options' element terms)
///   block_weights (online softmax: the running maximum, rescale of the row state,
///                  P = 2^(S − m); or the weight function)
///   block_pv      (o += P·V)
/// while its K and V rows are in L1, so both streams are read side by side, once.
/// The row state (m, l, t, o) of a task is then merged (decode.hpp).
#include <algorithm>
#include <cmath>
#include <limits>

#include "../../core/aligned.hpp"
#include "../../core/mask.hpp"
#include "../../simd/decode_kernels.hpp"
#include "../prefill/epilogue.hpp"
#include "../dropout_bits.hpp"
#include "../prefill/logits.hpp"
#include "../weights.hpp"
#include "rows.hpp"
#include "../../simd/widen.hpp"

namespace attnkit::detail {

/// Keys per block when a task has several rows (GQA groups, several new tokens): two
/// 16-key logit kernels, so the block's K rows stay in L1 for every row.
inline constexpr int decode_block_keys = 32;
/// Keys per block when a task has one row (multi-head decode of one token): that
/// row reads each K/V row once, so L1 reuse does not matter, and longer K and V
/// stretches stream better: 256-key blocks read an fp32 cache ~20% faster than
/// 32-key ones, both from L3 (B=1, H=8, Lk=4096, D=128: 0.87 vs 1.10 ms) and from
/// DRAM (Lk=65536: 22.5 vs 28.5 ms; AMD EPYC Zen 5, one thread).
inline constexpr int decode_single_row_block_keys = 256;
/// Row stride of a task's logit/weight block (the longest block).
inline constexpr int decode_block_stride = decode_single_row_block_keys;

/// A block's key count rounded up to whole 16-key kernels: the entries the steps
/// fill, weigh and multiply (those past the block's keys are −inf logits, 0 weights).
inline int padded_block(int n) noexcept { return (n + 15) / 16 * 16; }
/// A block of q8 rows read by at least this many query rows is dequantised to fp32
/// scratch once (exact), rather than in registers once per row. Not 16-bit rows:
/// widening those in registers measured faster (GQA 4:1 and 4 new queries, Zen 5).
inline constexpr int decode_widen_rows = 3;

/// The resolved facts of a decode call: what every step reads.
template <class Pol, class KS, class VS>
struct decode_call {
  using policy_type = Pol;
  using k_source = KS;
  using v_source = VS;
  const Pol& pol;
  const problem_shape& shape;
  const tensor_view<const float>& q;
  const KS& k;
  const VS& v;
  const options& opt;
  index_t rows = 0;        ///< query rows per kv head, G·Lq: row r is head g·G + r / Lq, position r % Lq
  index_t block_rows = 0;  ///< rows per task
  index_t row_blocks = 0;
  index_t chunk = 0;       ///< keys per task (the split-KV chunk)
  index_t chunks = 0;      ///< tasks per (head, row block) along the keys
  float q_scale = 1.0f;    ///< τ·logit_unit<Pol>
  bool elementwise = false;
  int topk = 0;            ///< top-k logits the observer wants per row
  index_t dv_stride = 0;   ///< accumulator row stride (Dv rounded up to 16)
  index_t weight_length = 0;  ///< weight_context.key_length; 0: the batch's key length
};

template <class C>
using Pol_of = typename C::policy_type;

/// One task: rows [r0, r0 + n) of kv head (b, g) against keys [j0, j1).
struct decode_task {
  index_t b = 0, g = 0, r0 = 0;
  int n = 0;
  index_t j0 = 0, j1 = 0;
  batch_keys bk{};
};

/// A worker's decode buffers (in its workspace slot), grown on demand.
struct decode_scratch {
  aligned_vector<float> q;                ///< scaled query rows [n × D]
  aligned_vector<std::uint16_t> qsplit;   ///< bf16 hi/lo halves of the query rows
  aligned_vector<float> s;                ///< one block's logits, then weights [n × 32]
  aligned_vector<float> o;                ///< output accumulators [n × dv_stride]
  aligned_vector<float> m, l, t, first, topk, extras;
  aligned_vector<index_t> lo, hi, count;
  aligned_vector<float> kwide, vwide;     ///< widened rows (portable path)
  std::size_t bytes() const {
    std::size_t n = qsplit.capacity() * sizeof(std::uint16_t) + (lo.capacity() + hi.capacity() + count.capacity()) * sizeof(index_t);
    for (const auto* v : {&q, &s, &o, &m, &l, &t, &first, &topk, &extras, &kwide, &vwide}) n += v->capacity() * sizeof(float);
    return n;
  }
};

template <class T>
inline void grow(aligned_vector<T>& v, index_t size) {
  if (v.size() < static_cast<std::size_t>(size)) v.resize(static_cast<std::size_t>(size));
}

/// The element type of a row source.
template <class Src>
using element_of = typename Src::element;

/// Whether `Arch` reads this source's rows with the AVX-512 kernels.
template <class Arch, class Src>
inline constexpr bool wide_rows = simd::has_wide_kv_kernels<Arch>;

/// Whether the logits of bf16 keys use `vdpbf16ps` (simd/decode_kernels.hpp).
template <class Arch, class Src>
inline constexpr bool native_bf16_rows =
    std::is_same_v<element_of<Src>, bfloat16> && simd::has_native_bf16_dot<Arch>;

/// Query head and position of task row r.
template <class C>
inline std::pair<index_t, index_t> head_and_position(const C& c, const decode_task& t, index_t r) {
  const index_t R = t.r0 + r, Lq = c.shape.q_len;
  return {t.g * c.shape.group() + R / Lq, R % Lq};
}

/// A row's state before its first key.
template <class C>
inline void reset_row(const C& c, decode_scratch& sc, int r) {
  sc.m[r] = neg_inf;
  sc.l[r] = 0.0f;
  sc.t[r] = 0.0f;
  sc.first[r] = neg_inf;
  std::fill_n(sc.topk.data() + r * c.topk, c.topk, neg_inf);
  std::fill_n(sc.o.data() + r * c.dv_stride, c.dv_stride, 0.0f);
}

/// Step 1: the task's scaled query rows, their key intervals (clipped to the task's
/// keys) and zeroed states. Returns the union of the intervals ([lo, lo) if empty).
template <class Arch, class C>
key_range load_rows(const C& c, const decode_task& t, decode_scratch& sc) {
  const index_t D = c.shape.head_dim, n = t.n;
  grow(sc.q, n * D);
  grow(sc.s, n * decode_block_stride);
  grow(sc.o, n * c.dv_stride);
  for (auto* x : {&sc.m, &sc.l, &sc.t, &sc.first}) grow(*x, n);
  grow(sc.topk, n * std::max(1, c.topk));
  for (auto* x : {&sc.lo, &sc.hi, &sc.count}) grow(*x, n);
  index_t lo_min = t.j1, hi_max = t.j0;
  for (int r = 0; r < n; ++r) {
    const auto [h, i] = head_and_position(c, t, r);
    simd::scale_copy<Arch>(c.q.row(t.b, h, i), c.q_scale, sc.q.data() + r * D, D);
    const key_range kr = analytic_range(c.opt, t.bk, i);
    sc.lo[r] = std::max(kr.lo, t.j0);
    sc.hi[r] = std::max(sc.lo[r], std::min(kr.hi, t.j1));
    sc.count[r] = c.elementwise ? 0 : sc.hi[r] - sc.lo[r];
    if (sc.hi[r] > sc.lo[r]) {
      lo_min = std::min(lo_min, sc.lo[r]);
      hi_max = std::max(hi_max, sc.hi[r]);
    }
    reset_row(c, sc, r);
  }
  if constexpr (native_bf16_rows<Arch, typename C::k_source>) {
    const index_t dp = simd::bf16_padded(D);
    grow(sc.qsplit, 2 * n * dp);
    for (int r = 0; r < n; ++r)
      simd::split_bf16(sc.q.data() + r * D, D, sc.qsplit.data() + 2 * r * dp, sc.qsplit.data() + (2 * r + 1) * dp);
  }
  return {std::min(lo_min, hi_max), hi_max};
}

/// The n rows of a run as fp32 rows (stride d) in `dst` (exact).
template <class Arch, class E>
void widen_block(const row_run<E>& run, int n, index_t d, aligned_vector<float>& dst) {
  grow(dst, n * d);
  for (int x = 0; x < n; ++x) {
    if constexpr (is_q8_v<E>)
      simd::dequantize_row<Arch>(run.data + x * run.stride, d, dst.data() + x * d);
    else
      widen(run.data + x * run.stride, dst.data() + x * d, d);
  }
}

/// Step 2: logits of rows [ra, rb) for keys [j, j + n) (one run of K rows, n ≤ 32)
/// into sc.s (row stride 32; keys a row may not see, and the padding, are −inf),
/// with the options' element terms and the observer's per-row statistics.
template <class Arch, class Obs, class C, class E>
void block_logits(const C& c, const decode_task& t, decode_scratch& sc, int ra, int rb, index_t j, int n,
                  const row_run<E>& kr) {
  constexpr int SB = decode_block_stride;
  const index_t D = c.shape.head_dim;
  float* S = sc.s.data();
  for (int r = ra; r < rb; ++r) std::fill_n(S + r * SB, padded_block(n), neg_inf);
  if constexpr (wide_rows<Arch, typename C::k_source>) {
    if constexpr (is_q8_v<E>)
      if (rb - ra >= decode_widen_rows) {  // many rows: dequantise the block once, then fp32 kernels
        widen_block<Arch>(kr, n, D, sc.kwide);
        block_logits<Arch, Obs>(c, t, sc, ra, rb, j, n, row_run<float>{sc.kwide.data(), D, n});
        return;
      }
    // Sixteen keys per kernel call, widened (or dequantised) in registers; the
    // block's K rows come from memory for the first row and from L1 for the others.
    for (int r = ra; r < rb; ++r) {
      const index_t a = std::max(j, sc.lo[r]), e = std::min<index_t>(j + n, sc.hi[r]);
      const float* qr = sc.q.data() + r * D;
      for (index_t x = a; x < e; x += 16) {
        const int m = static_cast<int>(std::min<index_t>(16, e - x));
        const E* k0 = kr.data + (x - j) * kr.stride;
        float* dst = S + r * SB + (x - j);
        if constexpr (is_q8_v<E>) {
          simd::dot16_q8<Arch>(qr, D, k0, kr.stride, m, dst);
        } else if constexpr (native_bf16_rows<Arch, typename C::k_source> && std::is_same_v<E, bfloat16>) {
          const index_t dp = simd::bf16_padded(D);
          simd::dot16_bf16<Arch>(qr, sc.qsplit.data() + 2 * r * dp, sc.qsplit.data() + (2 * r + 1) * dp, D, k0,
                                 kr.stride, m, dst);
        } else {
          simd::dot16<Arch>(qr, D, k0, kr.stride, m, dst);
        }
      }
    }
  } else {
    // Key by key: each K row (widened once) against every row that sees it.
    grow(sc.kwide, D);
    for (int x = 0; x < n; ++x) {
      const index_t key = j + x;
      const E* src = kr.data + x * kr.stride;
      const float* krow = nullptr;
      for (int r = ra; r < rb; ++r) {
        if (key < sc.lo[r] || key >= sc.hi[r]) continue;
        if (!krow) {
          if constexpr (std::is_same_v<E, float>) {
            krow = src;
          } else {
            row_to_float(src, sc.kwide.data(), D);
            krow = sc.kwide.data();
          }
        }
        S[r * SB + x] = simd::dot<Arch>(sc.q.data() + r * D, krow, D);
      }
    }
  }
  if (c.elementwise)
    for (int r = ra; r < rb; ++r) {
      const auto [h, i] = head_and_position(c, t, r);
      apply_elementwise(S + r * SB, SB, n, 1, i, j, c.opt, t.b, h, t.bk, &sc.lo[r], &sc.hi[r], logit_unit<Pol_of<C>>);
    }
  if constexpr (Obs::enabled)
    for (int r = ra; r < rb; ++r) {
      const float* Sr = S + r * SB;
      if (c.elementwise)
        for (int x = 0; x < n; ++x) sc.count[r] += Sr[x] != neg_inf;
      if (j == 0) sc.first[r] = Sr[0];
      for (int x = 0; x < n && c.topk > 0; ++x) topk_insert(sc.topk.data() + r * c.topk, c.topk, Sr[x]);
    }
}

/// Step 3: the block's weights in place of its logits, and the row states. Softmax
/// keeps a running maximum m per row: when a block raises it, the row's l, t and o
/// are rescaled by 2^(m_old − m_new) first, so every weight is 2^(s − m) with the m
/// of its own block. A NaN logit makes the row NaN. Other weight functions weigh
/// each logit as their author wrote it (masked keys weigh 0).
template <class Arch, bool Entropy, class C>
void block_weights(const C& c, decode_scratch& sc, int ra, int rb, int n, const weight_params_t<Pol_of<C>>& wp) {
  using O = simd::ops<Arch>;
  using Pol = Pol_of<C>;
  constexpr int SB = decode_block_stride, W = O::width;
  const int NB = padded_block(n);  // a multiple of 16, so of W
  const index_t Dv = c.shape.value_dim;
  for (int r = ra; r < rb; ++r) {
    float* Sr = sc.s.data() + r * SB;
    float* orow = sc.o.data() + r * c.dv_stride;
    if constexpr (online_softmax<Pol>) {
      float& m = sc.m[r];
      if (m != m) {  // already NaN: the row's output is NaN whatever follows
        std::fill_n(Sr, NB, 0.0f);
        continue;
      }
      typename O::vf mv = O::set1(neg_inf);
      bool nan = false;
      for (int x = 0; x < NB; x += W) {
        const auto s = O::load(Sr + x);
        nan = nan || O::has_nan(s);
        mv = O::max(s, mv);
      }
      const float mb = O::reduce_max(mv);
      if (nan) [[unlikely]] {
        m = sc.l[r] = sc.t[r] = std::numeric_limits<float>::quiet_NaN();
        std::fill_n(orow, Dv, m);
        std::fill_n(Sr, NB, 0.0f);
        continue;
      }
      if (mb == neg_inf) {  // nothing visible in this block
        std::fill_n(Sr, NB, 0.0f);
        continue;
      }
      if (mb > m) {
        if (m != neg_inf) {
          const float a = std::exp2(m - mb);
          if constexpr (Entropy) sc.t[r] = sc.l[r] > 0.0f ? a * (sc.t[r] + sc.l[r] * (m - mb)) : 0.0f;
          sc.l[r] *= a;
          simd::scale_copy<Arch>(orow, a, orow, Dv);
        }
        m = mb;
      }
      const typename O::vf mm = O::set1(m);
      typename O::vf lv = O::set1(0.0f), tv = O::set1(0.0f);
      for (int x = 0; x < NB; x += W) {
        const typename O::vf d = O::load(Sr + x) - mm;
        const typename O::vf p = O::exp2_fast(d);
        lv = lv + p;
        if constexpr (Entropy) tv = O::fma(p, O::max(d, O::set1(-200.0f)), tv);
        O::store(Sr + x, p);
      }
      sc.l[r] += O::reduce_add(lv);
      if constexpr (Entropy) sc.t[r] += O::reduce_add(tv);
    } else {
      weigh_logits_any<Arch, Pol, keeps_row_sum<Pol>, Entropy>(c.pol, wp, Sr, NB, sc.l[r], sc.t[r]);
    }
  }
}

/// Step 4: o[r] += P[r]·V for rows [ra, rb) and the block's n V rows. `careful`:
/// only nonzero weights are multiplied (the redo of a row whose output turned
/// non-finite through a key it gives weight 0: 0·NaN must not leak in).
template <class Arch, class C, class E>
void block_pv(const C& c, decode_scratch& sc, int ra, int rb, int n, const row_run<E>& vr, bool careful) {
  constexpr int SB = decode_block_stride;
  const index_t Dv = c.shape.value_dim, os = c.dv_stride;
  const float* P = sc.s.data();
  float* o = sc.o.data();
  if (careful) [[unlikely]] {
    grow(sc.vwide, Dv);
    for (int r = ra; r < rb; ++r)
      for (int x = 0; x < n; ++x)
        if (const float p = P[r * SB + x]; p != 0.0f) {
          row_to_float(vr.data + x * vr.stride, sc.vwide.data(), Dv);
          simd::axpy<Arch>(p, sc.vwide.data(), o + r * os, Dv);
        }
    return;
  }
  if constexpr (wide_rows<Arch, typename C::v_source>) {
    if constexpr (is_q8_v<E>)
      if (rb - ra >= decode_widen_rows) {  // many rows: dequantise the block once, then fp32 kernels
        widen_block<Arch>(vr, n, Dv, sc.vwide);
        block_pv<Arch>(c, sc, ra, rb, n, row_run<float>{sc.vwide.data(), Dv, n}, false);
        return;
      }
    for (int r0 = ra; r0 < rb; r0 += 6) {
      const int R = std::min(6, rb - r0);
      if constexpr (is_q8_v<E>)
        simd::pv_rows_q8<Arch>(R, P + r0 * SB, SB, vr.data, vr.stride, n, o + r0 * os, os, Dv);
      else
        simd::pv_rows_kv<Arch>(R, P + r0 * SB, SB, vr.data, vr.stride, n, o + r0 * os, os, Dv);
    }
  } else {
    using O = simd::ops<Arch>;
    constexpr int W = O::width;
    const float* v0 = nullptr;
    index_t vs = 0;
    if constexpr (std::is_same_v<E, float>) {
      v0 = vr.data;
      vs = vr.stride;
    } else {  // widen the block's V rows once for every row strip
      grow(sc.vwide, n * Dv);
      for (int x = 0; x < n; ++x) row_to_float(vr.data + x * vr.stride, sc.vwide.data() + x * Dv, Dv);
      v0 = sc.vwide.data();
      vs = Dv;
    }
    const index_t dfull = Dv / W * W;
    const float ones[6] = {1, 1, 1, 1, 1, 1};
    for (int r0 = ra; r0 < rb; r0 += 6) {
      const int R = std::min(6, rb - r0);
      if (dfull > 0) simd::pv_rows<Arch>(R, static_cast<int>(dfull / W), P + r0 * SB, SB, v0, vs, n, o + r0 * os, os, ones);
      for (int r = r0; r < r0 + R; ++r)
        for (int x = 0; x < n; ++x)
          for (index_t d = dfull; d < Dv; ++d) o[r * os + d] += P[r * SB + x] * v0[x * vs + d];
    }
  }
}

/// Asks for the K and V rows of keys [j, e) into L2 (a hint; no effect on results):
/// the next block's, while this one is computed. Into L2 rather than L1: a block's
/// 32 rows of K and V are more lines than L1 can have in flight, and the kernels'
/// loads then find them at L2 latency (measured best of L1 / L2 / two blocks
/// ahead / none, on Zen 5).
template <class C>
inline void prefetch_keys(const C& c, const decode_task& t, index_t j, index_t e) {
  using KE = element_of<typename C::k_source>;
  using VE = element_of<typename C::v_source>;
  const std::size_t kb = row_bytes<KE>(c.shape.head_dim), vb = row_bytes<VE>(c.shape.value_dim);
  for (index_t x = j; x < e; ++x) {
    simd::prefetch_row_l2(c.k.row(t.b, t.g, x), kb);
    simd::prefetch_row_l2(c.v.row(t.b, t.g, x), vb);
  }
}

/// Step 3b, dropout (options.dropout): after the row state took the undropped
/// weights (l, LSE), before P·V — kept weights × 1/(1 − p), each drawn by its
/// (b, h, i, j) exactly as the prefill kernels and the oracle draw it.
template <class C>
void block_dropout(const C& c, const decode_task& t, decode_scratch& sc, int ra, int rb, index_t j, int n) {
  const dropout_mask drop(c.opt.dropout);
  const auto scale = static_cast<float>(drop.scale());
  for (int r = ra; r < rb; ++r) {
    const auto [h, i] = head_and_position(c, t, r);
    drop_weights(drop, scale, t.b, h, i, j, sc.s.data() + r * decode_block_stride, n);
  }
}

/// Steps 2–4 over keys [lo, hi) for rows [ra, rb) of a task: block by block, the
/// next block's rows asked for while this one is computed.
template <class Arch, class Obs, class C>
void run_task_rows(const C& c, const decode_task& t, decode_scratch& sc, int ra, int rb, index_t lo, index_t hi,
                   bool careful) {
  constexpr bool entropy = Obs::enabled && Obs::wants_entropy;
  const index_t wlen = c.weight_length > 0 ? c.weight_length : t.bk.lk;
  const auto wp = resolve_weight(c.pol, weight_context{wlen, c.shape.q_len, c.shape.head_dim});
  const index_t block = rb - ra == 1 ? decode_single_row_block_keys : decode_block_keys;
  for (index_t j = lo; j < hi;) {
    const auto kr = c.k.run(t.b, t.g, j, std::min<index_t>(hi, j + block));
    const auto vr = c.v.run(t.b, t.g, j, j + kr.count);
    const int n = static_cast<int>(std::min(kr.count, vr.count));
    if (j + n < hi) prefetch_keys(c, t, j + n, std::min<index_t>(hi, j + n + block));
    block_logits<Arch, Obs>(c, t, sc, ra, rb, j, n, kr);
    block_weights<Arch, entropy>(c, sc, ra, rb, n, wp);
    if (c.opt.dropout.active()) [[unlikely]]
      block_dropout(c, t, sc, ra, rb, j, n);
    block_pv<Arch>(c, sc, ra, rb, n, vr, careful);
    j += n;
  }
}

}  // namespace attnkit::detail
