#pragma once
/// \file
/// Decode skeleton (few query rows, long key cache): memory-bound, so K and V are
/// read in place, once per task for all query rows of a kv head (every query head
/// of its GQA group, every new token), block by block with the logits, weights
/// and P·V of a block computed while its rows are in L1 (decode/steps.hpp). The
/// rows come from a dense cache (a strided view) or a paged one (decode/rows.hpp),
/// as float, bfloat16, float16 or q8 blocks.
///
/// Tasks are (batch, kv head, block of ≤ 64 rows, key chunk). When there are few
/// (batch · kv heads · row blocks < 64) the keys are split into fixed chunks of 512
/// whose partial states (m, l, t, o) are merged in chunk order; the choice and the
/// chunks depend on the shape only, never on the thread count, so results are
/// bitwise identical for any thread count.
#include <algorithm>
#include <cmath>

#include "../parallel/thread_pool.hpp"
#include "../parallel/workspace.hpp"
#include "decode/rows.hpp"
#include "decode/steps.hpp"
#include "prefill/epilogue.hpp"

namespace attnkit::detail {

/// Keys per split-KV chunk.
inline constexpr index_t decode_chunk = 512;
/// attention() takes the decode path when q_len · group <= this many rows.
inline constexpr index_t decode_max_rows = 16;
/// Query rows per decode task (one read of K/V serves them all).
inline constexpr index_t decode_block_rows = 64;
/// Keys are split into chunks when the call has fewer (head, row block) tasks.
inline constexpr index_t decode_split_below = 64;

/// The per-chunk partial states of a split decode call (call-wide, in the workspace).
struct decode_partials {
  aligned_vector<float> records;
  std::size_t bytes() const { return records.capacity() * sizeof(float); }
};

/// Record layout of one row's partial state: m, l, t, count, first, o[Dv], topk[K].
inline constexpr index_t decode_record_head = 5;

/// One task: load its rows, run its keys, redo a row whose output turned non-finite
/// through a zero weight, then hand each row's state to `done(r, sc)`.
template <class Arch, class Obs, class C, class Done>
void run_decode_task(const C& c, const decode_task& t, decode_scratch& sc, Done&& done) {
  const key_range keys = load_rows<Arch>(c, t, sc);
  run_task_rows<Arch, Obs>(c, t, sc, 0, t.n, keys.lo, keys.hi, false);
  const index_t Dv = c.shape.value_dim;
  for (int r = 0; r < t.n; ++r) {
    // A non-finite output with a finite row state came from V: a key the row gives
    // weight 0 (masked for it, or underflowed) holds NaN/Inf, and 0·NaN leaked in.
    float* orow = sc.o.data() + r * c.dv_stride;
    if (sc.l[r] != sc.l[r] || !simd::any_nonfinite<Arch>(orow, Dv)) [[likely]] continue;
    reset_row(c, sc, r);
    if (c.elementwise) sc.count[r] = 0;
    run_task_rows<Arch, Obs>(c, t, sc, r, r + 1, sc.lo[r], sc.hi[r], true);
  }
  for (int r = 0; r < t.n; ++r) done(r, sc);
}

/// The decode skeleton over any K/V row sources (dense_rows, paged_rows).
/// `weight_length` > 0 replaces the batch's key length in weight_context (the KV
/// cache entry states it once for the whole sequence).
template <class Arch, class Pol, class Obs, class KS, class VS>
void run_decode_rows(const Pol& pol, const problem_shape& sh, const tensor_view<const float>& q, const KS& k,
                     const VS& v, const tensor_view<float>& out, const options& opt, Obs& obs, workspace& ws,
                     index_t weight_length = 0) {
  if (sh.batch == 0 || sh.q_heads == 0 || sh.q_len == 0) return;
  const int threads = resolve_num_threads(opt.num_threads);
  ws.reserve_slots(threads);
  decode_call<Pol, KS, VS> c{pol, sh, q, k, v, opt};
  c.rows = sh.group() * sh.q_len;
  c.block_rows = std::min(c.rows, decode_block_rows);
  c.row_blocks = ceil_div(c.rows, c.block_rows);
  c.q_scale = static_cast<float>(resolved_scale(opt, sh.head_dim) * logit_unit<Pol>);
  c.elementwise = has_elementwise_terms(opt);
  if constexpr (Obs::enabled) c.topk = std::max(0, obs.top_k());
  c.dv_stride = (sh.value_dim + 15) / 16 * 16;
  c.weight_length = weight_length;
  index_t key_end = 0;  // keys past every batch's length are never read
  for (index_t b = 0; b < sh.batch; ++b) key_end = std::max(key_end, keys_of_batch(opt, b, sh.q_len, sh.k_len).lk);
  const index_t heads = sh.batch * sh.kv_heads;
  const bool split = heads * c.row_blocks < decode_split_below && key_end > decode_chunk;
  c.chunk = split ? decode_chunk : std::max<index_t>(key_end, 1);
  c.chunks = split ? ceil_div(key_end, decode_chunk) : 1;
  const index_t K = c.topk, Dv = sh.value_dim, rec = decode_record_head + Dv + K;

  const auto task_of = [&](index_t task) {
    const index_t ch = task % c.chunks, rest = task / c.chunks;
    const index_t rb = rest % c.row_blocks, bg = rest / c.row_blocks;
    decode_task t;
    t.b = bg / sh.kv_heads;
    t.g = bg % sh.kv_heads;
    t.r0 = rb * c.block_rows;
    t.n = static_cast<int>(std::min(c.block_rows, c.rows - t.r0));
    t.j0 = ch * c.chunk;
    t.j1 = std::min(key_end, t.j0 + c.chunk);
    t.bk = keys_of_batch(opt, t.b, sh.q_len, sh.k_len);
    return t;
  };
  const index_t tasks = heads * c.row_blocks * c.chunks;

  if (!split) {  // each task holds every key of its rows: finish them in place
    parallel_for(tasks, threads, [&](index_t task, int slot) {
      const decode_task t = task_of(task);
      decode_scratch& sc = ws.slot(slot).get<decode_scratch>();
      grow(sc.extras, std::max<index_t>(1, K));
      run_decode_task<Arch, Obs>(c, t, sc, [&](int r, decode_scratch& s) {
        const auto [h, i] = head_and_position(c, t, r);
        finalize_row<Arch, Pol>(sh, opt, out, obs, t.b, h, i, s.m[r], s.l[r], s.t[r], s.count[r],
                                s.o.data() + r * c.dv_stride,
                                row_extras{s.first[r], K ? s.topk.data() + r * K : nullptr, static_cast<int>(K)},
                                s.extras.data());
      });
    });
    return;
  }

  auto& storage = ws.shared().get<decode_partials>().records;
  const index_t need = heads * c.rows * c.chunks * rec;
  grow(storage, need);
  float* partial = storage.data();
  // Record of (kv head bg, row R, chunk ch).
  const auto record = [&](index_t bg, index_t R, index_t ch) { return partial + ((bg * c.rows + R) * c.chunks + ch) * rec; };
  parallel_for(tasks, threads, [&](index_t task, int slot) {
    const decode_task t = task_of(task);
    const index_t bg = t.b * sh.kv_heads + t.g, ch = t.j0 / c.chunk;
    run_decode_task<Arch, Obs>(c, t, ws.slot(slot).get<decode_scratch>(), [&](int r, decode_scratch& s) {
      float* pr = record(bg, t.r0 + r, ch);
      pr[0] = s.m[r];
      pr[1] = s.l[r];
      pr[2] = s.t[r];
      pr[3] = static_cast<float>(s.count[r]);
      pr[4] = s.first[r];
      std::copy_n(s.o.data() + r * c.dv_stride, Dv, pr + decode_record_head);
      std::copy_n(s.topk.data() + r * K, K, pr + decode_record_head + Dv);
    });
  });

  // Fixed-order merge of the chunks, then the common row finalisation.
  parallel_for(heads * c.rows, threads, [&](index_t task, int slot) {
    const index_t bg = task / c.rows, R = task % c.rows;
    const index_t b = bg / sh.kv_heads, g = bg % sh.kv_heads;
    const index_t h = g * sh.group() + R / sh.q_len, i = R % sh.q_len;
    decode_scratch& sc = ws.slot(slot).get<decode_scratch>();
    grow(sc.o, Dv);
    grow(sc.topk, std::max<index_t>(1, K));
    grow(sc.extras, std::max<index_t>(1, K));
    float* o = sc.o.data();
    std::fill_n(o, Dv, 0.0f);
    float m = neg_inf, l = 0.0f, t = 0.0f, first = neg_inf;
    index_t count = 0;
    std::fill_n(sc.topk.data(), K, neg_inf);
    for (index_t ch = 0; ch < c.chunks; ++ch) {
      const float* pr = record(bg, R, ch);
      count += static_cast<index_t>(pr[3]);
      if constexpr (Obs::enabled) {
        if (ch == 0) first = pr[4];
        for (index_t x = 0; x < K; ++x) topk_insert(sc.topk.data(), static_cast<int>(K), pr[decode_record_head + Dv + x]);
      }
      const float* po = pr + decode_record_head;
      if constexpr (online_softmax<Pol>) {
        if (pr[0] == neg_inf) continue;
        const float m_new = pr[0] != pr[0] ? pr[0] : std::max(m, pr[0]);  // NaN propagates
        const float a = m == neg_inf ? 0.0f : std::exp2(m - m_new);  // rescale of the running state
        const float cc = std::exp2(pr[0] - m_new);                    // rescale of the chunk
        if constexpr (Obs::enabled && Obs::wants_entropy)
          t = (l > 0.0f ? a * (t + l * (m - m_new)) : 0.0f) + cc * (pr[2] + pr[1] * (pr[0] - m_new));
        l = l * a + pr[1] * cc;
        for (index_t d = 0; d < Dv; ++d) o[d] = o[d] * a + po[d] * cc;
        m = m_new;
      } else {
        l += pr[1];
        t += pr[2];
        for (index_t d = 0; d < Dv; ++d) o[d] += po[d];
      }
    }
    finalize_row<Arch, Pol>(sh, opt, out, obs, b, h, i, m, l, t, count, o,
                            row_extras{first, K ? sc.topk.data() : nullptr, static_cast<int>(K)}, sc.extras.data());
  });
}

/// attention()'s decode path: K and V as strided views.
template <class Arch, class Pol, class Obs, class KV>
void run_decode(const Pol& pol, const problem_shape& sh, const tensor_view<const float>& q,
                const tensor_view<const KV>& k, const tensor_view<const KV>& v, const tensor_view<float>& out,
                const options& opt, Obs& obs, workspace& ws) {
  run_decode_rows<Arch>(pol, sh, q, dense_rows<KV>{k}, dense_rows<KV>{v}, out, opt, obs, ws);
}

}  // namespace attnkit::detail
