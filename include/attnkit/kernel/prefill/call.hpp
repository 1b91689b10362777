#pragma once
/// \file
/// What a prefill task works with: the call's resolved facts (quadratic_call)
/// and a worker's scratch for one query block (block_scratch).
#include <cstdint>
#include <vector>

#include "../../core/aligned.hpp"
#include "../../core/options.hpp"
#include "../../core/validate.hpp"
#include "../../parallel/workspace.hpp"
#include "keys.hpp"
#include "packed_kv.hpp"

namespace attnkit::detail {

/// A strip of a query block: rows [r0, r0 + rows), the lowest and highest start
/// and end of their key intervals.
struct strip_keys {
  int r0, rows;
  index_t lo_lo, lo_hi, hi_lo, hi_hi;
};

/// A worker's scratch for one query block (in its workspace slot); reused across
/// calls, grown on demand.
struct block_scratch {
  aligned_vector<float> q, o, tile;
  aligned_vector<float> wide;       ///< 16 widened 16-bit K rows (packed_kv::ensure)
  aligned_vector<float> band;       ///< one strip's logits / weights over a chunk (strip_chunk)
  aligned_vector<float> chunk_max;  ///< per strip row, a vector of that chunk's logit maxima
  aligned_vector<float> m, l, t, row_scale, first, topk, extras;
  aligned_vector<float> lvec;  ///< per row, one vector of partial softmax denominators
  aligned_vector<index_t> lo, hi, count;
  std::vector<strip_keys> strips;
  /// Per-task state of data-dependent key sets (e.g. top_k's thresholds).
  scratch_set ext;

  std::size_t bytes() const {
    std::size_t n = ext.bytes() + strips.capacity() * sizeof(strip_keys);
    for (const auto* v : {&q, &o, &tile, &wide, &band, &chunk_max, &m, &l, &t, &row_scale, &first, &topk, &extras, &lvec})
      n += v->capacity() * sizeof(float);
    for (const auto* v : {&lo, &hi, &count}) n += v->capacity() * sizeof(index_t);
    return n;
  }
};

/// Everything a task needs to know about the call, resolved once.
template <class Arch, class Pol, class Keys = no_pattern>
struct quadratic_call {
  const Keys& keys;
  const Pol& pol;
  const problem_shape& shape;
  const tensor_view<const float>& q;
  const tensor_view<float>& out;
  const options& opt;
  const packed_kv<Arch>* kv;  ///< the call's packed K/V (a gathering block's own, in its task)
  workspace& ws;
  float q_scale = 1.0f;    ///< τ·logit_unit<Pol>
  bool elementwise = false;  ///< mask / bias / ALiBi / softcap present
  int obs_topk = 0;          ///< top-k logits the observer wants per row (0: none)
  int block_rows = 0;        ///< query rows per task (a multiple of the strip height)
  /// Allowed-key counts come from counting finite logits (masks, patterns) rather
  /// than from the analytic interval.
  bool count_dynamic = false;
  /// Every row sees at most this many keys (a local window or banded pattern), 0:
  /// unbounded. A narrow band is done a strip at once (strip_chunk).
  index_t band = 0;
  /// Where key 0 (the observer's first-token key) sits among the packed keys; −1:
  /// not packed (a gathered block without it).
  index_t key0 = 0;
  /// This call's number (next_gather_call): a gathering key set reuses what a
  /// worker's slot packed for the previous block only within one call.
  std::uint64_t call_id = 0;
};

}  // namespace attnkit::detail
