#pragma once
/// \file
/// Decode skeleton (few query rows, long key cache): memory-bound, so K and V are
/// read in place, once per kv head for all query heads of its GQA group, with no
/// packing. Keys are split into fixed chunks of `decode_chunk` (never dependent on
/// the thread count) that run in parallel; per-chunk partial states (m, l, t, o)
/// are merged in chunk order, so results are bitwise identical for any thread count.
#include <algorithm>
#include <cmath>

#include "../simd/decode_kernels.hpp"
#include "../parallel/thread_pool.hpp"
#include "../parallel/workspace.hpp"
#include "dropout_bits.hpp"
#include "prefill/call.hpp"
#include "prefill/epilogue.hpp"
#include "prefill/logits.hpp"
#include "weights.hpp"
#include "../simd/widen.hpp"

namespace attnkit::detail {

/// Keys per split-KV chunk.
inline constexpr index_t decode_chunk = 512;
/// The decode path is taken when q_len · group <= this many rows.
inline constexpr index_t decode_max_rows = 16;

/// A worker's decode buffers beyond block_scratch (in its workspace slot).
struct decode_scratch {
  aligned_vector<std::uint16_t> qsplit;  ///< bf16 hi/lo halves of the scaled query rows
  aligned_vector<float> kwide, vwide;    ///< 16-bit K row / V rows widened to float
  std::size_t bytes() const {
    return qsplit.capacity() * sizeof(std::uint16_t) + (kwide.capacity() + vwide.capacity()) * sizeof(float);
  }
};

/// The per-chunk partial states of a decode call (call-wide, in the workspace).
struct decode_partials {
  aligned_vector<float> records;
  std::size_t bytes() const { return records.capacity() * sizeof(float); }
};

template <class Arch, class Pol, class Obs, class KV>
void run_decode(const Pol& pol, const problem_shape& sh, const tensor_view<const float>& q,
                const tensor_view<const KV>& k, const tensor_view<const KV>& v, const tensor_view<float>& out,
                const options& opt, Obs& obs, workspace& ws) {
  using O = simd::ops<Arch>;
  constexpr bool normalized = online_softmax<Pol>;
  const int threads = resolve_num_threads(opt.num_threads);
  const index_t G = sh.group(), Lq = sh.q_len, Lk = sh.k_len, D = sh.head_dim, Dv = sh.value_dim;
  const index_t rows = G * Lq;  // query rows sharing one kv head
  const index_t chunks = std::max<index_t>(1, (Lk + decode_chunk - 1) / decode_chunk);
  const index_t heads = sh.batch * sh.kv_heads;
  int K = 0;  // top-k logits tracked per row for the observer
  if constexpr (Obs::enabled) K = std::max(0, obs.top_k());
  const index_t rec = Dv + 5 + K;  // partial record: m, l, t, count, first, o[Dv], topk[K]
  const double tau = resolved_scale(opt, sh.head_dim);
  const float q_scale = static_cast<float>(tau * logit_unit<Pol>);
  const bool elementwise = has_elementwise_terms(opt);

  ws.reserve_slots(threads);
  auto& partial_storage = ws.shared().get<decode_partials>().records;
  const std::size_t need = static_cast<std::size_t>(heads * chunks * rows * rec);
  if (partial_storage.size() < need) partial_storage.resize(need);
  float* partial = partial_storage.data();

  parallel_for(heads * chunks, threads, [&](index_t task, int slot) {
    const index_t bg = task / chunks, ch = task % chunks;
    const index_t b = bg / sh.kv_heads, g = bg % sh.kv_heads;
    const index_t j0 = ch * decode_chunk, j1 = std::min(Lk, j0 + decode_chunk);
    const batch_keys bk = keys_of_batch(opt, b, Lq, Lk);
    block_scratch& sc = ws.slot(slot).get<block_scratch>();
    decode_scratch& dsc = ws.slot(slot).get<decode_scratch>();
    auto grow = [](auto& vec, std::size_t size) {
      if (vec.size() < size) vec.resize(size);
    };
    grow(sc.q, static_cast<std::size_t>(rows * D));
    grow(sc.tile, static_cast<std::size_t>(rows * decode_chunk));
    for (auto* x : {&sc.lo, &sc.hi, &sc.count}) grow(*x, static_cast<std::size_t>(rows));

    // Rows r = (query head g·G + r / Lq, position r % Lq); clip key ranges to the chunk.
    index_t lo_min = j1, hi_max = j0;
    for (index_t r = 0; r < rows; ++r) {
      const index_t h = g * G + r / Lq, i = r % Lq;
      const float* qr = q.row(b, h, i);
      for (index_t d = 0; d < D; ++d) sc.q[r * D + d] = qr[d] * q_scale;
      const key_range kr = analytic_range(opt, bk, i);
      sc.lo[r] = std::max(kr.lo, j0);
      sc.hi[r] = std::max(sc.lo[r], std::min(kr.hi, j1));
      sc.count[r] = elementwise ? 0 : sc.hi[r] - sc.lo[r];
      if (sc.hi[r] > sc.lo[r]) {
        lo_min = std::min(lo_min, sc.lo[r]);
        hi_max = std::max(hi_max, sc.hi[r]);
      }
    }
    const index_t len = j1 - j0;
    float* S = sc.tile.data();
    // One row of the cache is memory-bound work: prefetch K a few rows ahead and
    // this chunk's V rows (the P·V pass then finds them in L2), so both streams are
    // in flight while the dot products run.
    const std::size_t k_row_bytes = static_cast<std::size_t>(D) * sizeof(KV),
                      v_row_bytes = static_cast<std::size_t>(Dv) * sizeof(KV);
    const index_t prefetch_ahead = std::max<index_t>(8, static_cast<index_t>(4096 / k_row_bytes));  // ≥ 4 KiB
    if constexpr (simd::has_wide_kv_kernels<Arch> && !std::is_same_v<KV, float>) {
      // 16-bit cache: sixteen keys per step, widened in registers (bf16 on
      // AVX512-BF16: not widened at all), simd/decode_kernels.hpp. An fp32 cache
      // keeps the row-by-row loop below, which streams better (sixteen fp32 rows
      // read side by side measured 3-8% slower); simd::dot1 sums in the order of
      // simd::dot16, so 16-bit and fp32 storage of the same values agree bitwise.
      constexpr bool native_bf16 = std::is_same_v<KV, bfloat16> && simd::has_native_bf16_dot<Arch>;
      const index_t dp = native_bf16 ? simd::bf16_padded(D) : 0;
      auto& qsplit = dsc.qsplit;
      if constexpr (native_bf16) {
        if (qsplit.size() < static_cast<std::size_t>(2 * rows * dp)) qsplit.resize(static_cast<std::size_t>(2 * rows * dp));
        for (index_t r = 0; r < rows; ++r)
          simd::split_bf16(sc.q.data() + r * D, D, qsplit.data() + 2 * r * dp, qsplit.data() + (2 * r + 1) * dp);
      }
      std::fill_n(S, rows * len, neg_inf);
      const index_t kstride = k.stride[seq_axis];
      for (index_t j = lo_min; j < hi_max; j += 16) {
        const int n = static_cast<int>(std::min<index_t>(16, hi_max - j));
        for (index_t x = j + 16; x < std::min(j + 32, hi_max); ++x)  // the next block's K rows
          simd::prefetch_row(k.row(b, g, x), k_row_bytes);
        for (index_t x = j; x < j + n; ++x) simd::prefetch_row(v.row(b, g, x), v_row_bytes);
        for (index_t r = 0; r < rows; ++r) {
          const index_t a = std::max(j, sc.lo[r]), e = std::min<index_t>(j + n, sc.hi[r]);
          if (a >= e) continue;
          float* Sr = S + r * len + (a - j0);
          const float* qr = sc.q.data() + r * D;
          if constexpr (native_bf16)
            simd::dot16_bf16<Arch>(qr, qsplit.data() + 2 * r * dp, qsplit.data() + (2 * r + 1) * dp, D, k.row(b, g, a),
                                   kstride, static_cast<int>(e - a), Sr);
          else
            simd::dot16<Arch>(qr, D, k.row(b, g, a), kstride, static_cast<int>(e - a), Sr);
        }
      }
    } else {
      // Logits: each K row is read once for every row of the group (16-bit storage
      // is widened into a per-thread row first).
      auto& kwide = dsc.kwide;
      if constexpr (!std::is_same_v<KV, float>)
        if (kwide.size() < static_cast<std::size_t>(D)) kwide.resize(static_cast<std::size_t>(D));
      for (index_t j = j0; j < j1; ++j) {
        const bool any = j >= lo_min && j < hi_max;
        if (any) {
          if (j + prefetch_ahead < hi_max) simd::prefetch_row(k.row(b, g, j + prefetch_ahead), k_row_bytes);
          simd::prefetch_row(v.row(b, g, j), v_row_bytes);
        }
        const float* kr = nullptr;
        if (any) {
          if constexpr (std::is_same_v<KV, float>) {
            kr = k.row(b, g, j);
          } else {
            widen(k.row(b, g, j), kwide.data(), D);
            kr = kwide.data();
          }
        }
        const auto dot = [&](const float* qr) {
          if constexpr (simd::has_wide_kv_kernels<Arch>)
            return simd::dot1<Arch>(qr, D, kr);
          else
            return simd::dot<Arch>(qr, kr, D);
        };
        for (index_t r = 0; r < rows; ++r)
          S[r * len + (j - j0)] = (kr && j >= sc.lo[r] && j < sc.hi[r]) ? dot(sc.q.data() + r * D) : neg_inf;
      }
    }
    if (elementwise)
      for (index_t r = 0; r < rows; ++r)
        apply_elementwise(S + r * len, len, len, 1, r % Lq, j0, opt, b, g * G + r / Lq, bk, &sc.lo[r], &sc.hi[r],
                          logit_unit<Pol>);
    if constexpr (Obs::enabled)
      if (elementwise)
        for (index_t r = 0; r < rows; ++r)
          for (index_t j = 0; j < len; ++j) sc.count[r] += S[r * len + j] != neg_inf;
    if constexpr (Obs::enabled)
      for (index_t r = 0; r < rows; ++r) {
        float* pr = partial + ((bg * chunks + ch) * rows + r) * rec;
        pr[4] = (j0 == 0 && len > 0) ? S[r * len] : neg_inf;
        float* list = pr + 5 + Dv;
        std::fill_n(list, K, neg_inf);
        if (K > 0)
          for (index_t j = 0; j < len; ++j) topk_insert(list, K, S[r * len + j]);
      }
    // Weights and per-row partial state.
    const auto wp = resolve_weight(pol, weight_context{bk.lk, Lq, D});
    const dropout_mask drop(opt.dropout);
    for (index_t r = 0; r < rows; ++r) {
      float* rowS = S + r * len;
      float* pr = partial + ((bg * chunks + ch) * rows + r) * rec;
      float m = neg_inf, l = 0.0f, t = 0.0f;
      if constexpr (normalized) {
        for (index_t j = 0; j < len; ++j) m = rowS[j] != rowS[j] ? rowS[j] : std::max(m, rowS[j]);
        if (m != m) [[unlikely]] {  // a NaN logit: the row is NaN (set here, not left to exp2's bit tricks)
          m = l = t = std::numeric_limits<float>::quiet_NaN();
          std::fill_n(rowS, len, m);
        } else if (m != neg_inf) {
          constexpr int W = O::width;
          const typename O::vf mv = O::set1(m);
          typename O::vf lv = O::set1(0.0f), tv = O::set1(0.0f);
          index_t j = 0;
          for (; j + W <= len; j += W) {
            const typename O::vf x = O::load(rowS + j) - mv;
            const typename O::vf p = O::exp2_fast(x);
            lv = lv + p;
            if constexpr (Obs::enabled && Obs::wants_entropy) tv = O::fma(p, O::max(x, O::set1(-200.0f)), tv);
            O::store(rowS + j, p);
          }
          l = O::reduce_add(lv);
          t = O::reduce_add(tv);
          for (; j < len; ++j) {
            const float x = rowS[j] - m;
            const float p = O::reduce_add(O::exp2_fast(O::set1(x))) / static_cast<float>(W);
            rowS[j] = p;
            l += p;
            if constexpr (Obs::enabled && Obs::wants_entropy) t += p == 0.0f ? 0.0f : p * x;
          }
        } else {
          std::fill_n(rowS, len, 0.0f);
        }
      } else {
        weigh_logits_any<Arch, Pol, keeps_row_sum<Pol>, Obs::enabled && Obs::wants_entropy>(pol, wp, rowS, len, l, t);
      }
      if (drop.active()) [[unlikely]]  // after l took the undropped weights, before P·V
        drop_weights(drop, static_cast<float>(drop.scale()), b, g * G + r / Lq, r % Lq, j0, rowS, len);
      pr[0] = m;
      pr[1] = l;
      pr[2] = t;
      pr[3] = static_cast<float>(sc.count[r]);
      std::fill_n(pr + 5, Dv, 0.0f);
    }
    // P·V with register-blocked accumulators (up to 6 rows × 4 vectors per pass);
    // the chunk's V rows stay in L2 across passes. Tail columns done scalar. On
    // AVX-512, 16-bit V is widened in registers (simd/decode_kernels.hpp); elsewhere
    // once per chunk into a per-thread copy.
    if (hi_max > lo_min) {
      constexpr int W = O::width;
      constexpr bool in_registers = simd::has_wide_kv_kernels<Arch>;
      const index_t keys = hi_max - lo_min;
      index_t vstride = v.stride[seq_axis];
      const float* v0 = nullptr;
      if constexpr (std::is_same_v<KV, float>) {
        v0 = v.row(b, g, lo_min);
      } else if constexpr (!in_registers) {  // widen this chunk's V rows once; reused from L2
        auto& vwide = dsc.vwide;
        if (vwide.size() < static_cast<std::size_t>(keys * Dv)) vwide.resize(static_cast<std::size_t>(keys * Dv));
        for (index_t j = 0; j < keys; ++j) widen(v.row(b, g, lo_min + j), vwide.data() + j * Dv, Dv);
        v0 = vwide.data();
        vstride = Dv;
      }
      const auto v_at = [&](index_t j, index_t d) -> float {  // V[lo_min + j][d] as float
        if constexpr (in_registers)
          return to_float(v.row(b, g, lo_min + j)[d]);
        else
          return v0[j * vstride + d];
      };
      const index_t dfull = Dv / W * W;
      const float ones[6] = {1, 1, 1, 1, 1, 1};
      for (index_t r0 = 0; r0 < rows; r0 += 6) {
        const int R = static_cast<int>(std::min<index_t>(6, rows - r0));
        const float* P = S + r0 * len + (lo_min - j0);
        float* o = partial + ((bg * chunks + ch) * rows + r0) * rec + 5;
        if constexpr (in_registers) {
          simd::pv_rows_kv<Arch>(R, P, len, v.row(b, g, lo_min), vstride, keys, o, rec, Dv);
        } else {
          for (index_t dc = 0; dc < dfull;) {
            const index_t nv = std::min<index_t>(4, (dfull - dc) / W);
            simd::pv_rows<Arch>(R, static_cast<int>(nv), P, len, v0 + dc, vstride, keys, o + dc, rec, ones);
            dc += nv * W;
          }
          for (int r = 0; r < R; ++r)
            for (index_t j = 0; j < keys; ++j)
              for (index_t d = dfull; d < Dv; ++d) o[r * rec + d] += P[r * len + j] * v0[j * vstride + d];
        }
        // A non-finite result with a finite row state came from V: redo the row with
        // only its nonzero weights, so a masked key's NaN/Inf (0·NaN) cannot leak in.
        for (int r = 0; r < R; ++r) {
          float* orow = o + r * rec;
          const float* prow = partial + ((bg * chunks + ch) * rows + r0 + r) * rec;
          float probe = 0.0f;
          for (index_t d = 0; d < Dv; ++d) probe += orow[d] * 0.0f;
          if (probe == probe || prow[1] != prow[1]) [[likely]] continue;
          std::fill_n(orow, Dv, 0.0f);
          for (index_t j = 0; j < keys; ++j)
            if (const float p = P[r * len + j]; p != 0.0f)
              for (index_t d = 0; d < Dv; ++d) orow[d] += p * v_at(j, d);
        }
      }
    }
  });

  // Fixed-order merge of the chunks, then the common row finalisation.
  parallel_for(heads * rows, threads, [&](index_t task, int slot) {
    const index_t bg = task / rows, r = task % rows;
    const index_t b = bg / sh.kv_heads, g = bg % sh.kv_heads;
    const index_t h = g * G + r / Lq, i = r % Lq;
    block_scratch& sc = ws.slot(slot).get<block_scratch>();
    if (sc.o.size() < static_cast<std::size_t>(Dv)) sc.o.resize(static_cast<std::size_t>(Dv));
    float* o = sc.o.data();
    std::fill_n(o, Dv, 0.0f);
    float m = neg_inf, l = 0.0f, t = 0.0f, first = neg_inf;
    index_t count = 0;
    auto& topk = sc.topk;
    if (topk.size() < static_cast<std::size_t>(K)) topk.resize(static_cast<std::size_t>(K));
    if (sc.extras.size() < static_cast<std::size_t>(K)) sc.extras.resize(static_cast<std::size_t>(K));
    std::fill_n(topk.data(), K, neg_inf);
    for (index_t ch = 0; ch < chunks; ++ch) {
      const float* pr = partial + ((bg * chunks + ch) * rows + r) * rec;
      count += static_cast<index_t>(pr[3]);
      if constexpr (Obs::enabled) {
        if (ch == 0) first = pr[4];
        for (int x = 0; x < K; ++x) topk_insert(topk.data(), K, pr[5 + Dv + x]);
      }
      if constexpr (normalized) {
        if (pr[0] == neg_inf) continue;
        const float m_new = pr[0] != pr[0] ? pr[0] : std::max(m, pr[0]);  // NaN propagates
        const float a = m == neg_inf ? 0.0f : std::exp2(m - m_new);  // rescale of the running state
        const float c = std::exp2(pr[0] - m_new);                     // rescale of the chunk
        if constexpr (Obs::enabled && Obs::wants_entropy)
          t = (l > 0.0f ? a * (t + l * (m - m_new)) : 0.0f) + c * (pr[2] + pr[1] * (pr[0] - m_new));
        l = l * a + pr[1] * c;
        for (index_t d = 0; d < Dv; ++d) o[d] = o[d] * a + pr[5 + d] * c;
        m = m_new;
      } else {
        l += pr[1];
        t += pr[2];
        for (index_t d = 0; d < Dv; ++d) o[d] += pr[5 + d];
      }
    }
    finalize_row<Arch, Pol>(sh, opt, out, obs, b, h, i, m, l, t, count, o, row_extras{first, K ? topk.data() : nullptr, K},
                            sc.extras.data());
  });
}

}  // namespace attnkit::detail
