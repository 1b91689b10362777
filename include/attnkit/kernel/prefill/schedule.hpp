#pragma once
/// \file
/// The entry of the prefill skeleton (quadratic family, many query rows): packs
/// K/V, resolves the call once and hands query blocks to the thread pool head by
/// head, in an order that keeps each head's packed K/V cached.
///
/// Per (batch, kv-head) Kᵀ is packed into panels of BN keys and V into zero-padded
/// rows; each task takes (batch, head, block of BM query rows), walks only the key
/// tiles its rows may see, and for each 6-row strip
///   S = Q·Kᵀ (register tile) → masks → weights P → O = α·O + P·V.
/// Each output row is produced by one task, in a fixed order, so results are
/// bitwise identical for any thread count.
#include <algorithm>

#include "../../core/mask.hpp"
#include "../../parallel/thread_pool.hpp"
#include "../../parallel/workspace.hpp"
#include "block.hpp"
#include "keys.hpp"

namespace attnkit::detail {

/// Entry of the quadratic skeleton (called by attention() after validation).
template <class Arch, class Pol, class Obs, class KV, class Keys = no_pattern>
void run_quadratic(const Pol& pol, const problem_shape& sh, const tensor_view<const float>& q,
                   const tensor_view<const KV>& k, const tensor_view<const KV>& v, const tensor_view<float>& out,
                   const options& opt, Obs& obs, workspace& ws, const Keys& keys = {}, index_t band = 0) {
  if (sh.batch == 0 || sh.q_heads == 0 || sh.q_len == 0) return;
  const int threads = resolve_num_threads(opt.num_threads);
  ws.reserve_slots(threads);
  // A local window (options or pattern) bounds the keys each row sees.
  const bool right_bounded = opt.window.right >= 0 || opt.causal != causal::none;
  if (opt.window.left >= 0 && right_bounded) {
    const index_t w = sat_add(sat_add(opt.window.left, std::max<index_t>(opt.window.right, 0)), 1);  // sides up to INT64_MAX
    band = band > 0 ? std::min(band, w) : w;
  }
  // Banded calls pack lazily: each query block touches a few key tiles (packed_kv).
  packed_kv<Arch> kv;
  const identity_rows identity;
  [[maybe_unused]] const reordered_rows<Keys> reordered{keys};
  auto& storage = ws.shared().get<typename packed_kv<Arch>::storage>();
  const auto wide_of = [&](int slot) {
    auto& w = ws.slot(slot).get<block_scratch>().wide;
    if (w.size() < static_cast<std::size_t>(16 * sh.head_dim)) w.resize(static_cast<std::size_t>(16 * sh.head_dim));
    return w.data();
  };
  if constexpr (Keys::reordered) {
    kv.pack(k, v, threads, reordered, band > 0, storage, wide_of);
  } else if constexpr (!Keys::gathers) {  // a gathering key set packs each block's keys in its task
    kv.pack(k, v, threads, identity, band > 0, storage, wide_of);
  }

  quadratic_call<Arch, Pol, Keys> c{keys, pol, sh, q, out, opt, &kv, ws};
  c.q_scale = static_cast<float>(resolved_scale(opt, sh.head_dim) * logit_unit<Pol>);
  c.elementwise = has_elementwise_terms(opt);
  if constexpr (Obs::enabled) c.obs_topk = std::max(0, obs.top_k());
  c.count_dynamic = c.elementwise || Keys::active;
  c.block_rows = choose_block_rows<Arch>(band);
  if constexpr (Keys::gathers) {
    c.block_rows = static_cast<int>(keys.gather_rows());  // one gathering block per task
    c.call_id = next_gather_call();
  } else if constexpr (Keys::active) {
    // Whole pattern row blocks per task: a task that starts mid-block cuts its
    // strips short twice (strips never straddle a pattern block).
    const index_t rb = keys.row_block();
    if (rb > 0 && rb < c.block_rows) c.block_rows = static_cast<int>(c.block_rows / rb * rb);
  }
  c.band = band;
  const int BM = c.block_rows;
  const index_t q_blocks = (sh.q_len + BM - 1) / BM;
  const index_t heads = sh.batch * sh.q_heads;
  // Head by head: `threads` heads run side by side (task t on head t mod threads
  // of its group) and each head's query blocks follow one another, so the head's
  // packed K/V stay in L2/L3 from one block to the next instead of being evicted
  // by the other heads' (heads-first order cost 5-10% at N = 4096, H = 8, and a
  // sixth of a scattered block-sparse call, whose tiles the hardware prefetcher
  // cannot stream back in), and concurrent tasks rarely need the same lazily
  // packed tile. A band (every row sees at most `band` keys) makes all blocks
  // cost the same: its blocks go in order, so Q/O stream forward. Without one,
  // later query blocks may see more keys (causal masks, causal patterns): they
  // go first, so the call ends on short tasks.
  const bool ascending = band > 0;
  const index_t lanes = std::min<index_t>(threads, heads), full_groups = heads / lanes;
  const auto block_of = [&](index_t task) {
    const index_t group = task / (lanes * q_blocks);
    const index_t width = group < full_groups ? lanes : heads - full_groups * lanes;
    const index_t t = task - group * lanes * q_blocks;
    const index_t qb = ascending ? t / width : q_blocks - 1 - t / width, bh = group * lanes + t % width;
    const index_t row0 = qb * BM;
    return block_ref{bh / sh.q_heads, bh % sh.q_heads, row0, static_cast<int>(std::min<index_t>(BM, sh.q_len - row0))};
  };
  parallel_for(heads * q_blocks, threads, [&](index_t task, int slot) {
    const block_ref blk = block_of(task);
    // Tasks are handed out in order, so this thread's next is about `threads` on.
    const index_t next = task + threads;
    run_block<Arch>(c, obs, slot, blk.b, blk.h, blk.row0, blk.n,
                    next < heads * q_blocks ? block_of(next) : block_ref{}, k, v);
  });
}


}  // namespace attnkit::detail
