#pragma once
/// \file
/// The block-diagonal softmax half of a kernelised policy whose engine asks for it
/// (LLN+Diag): query position p = i + Δ sees the keys of its block
/// [⌊p/D⌋·D, ⌊p/D⌋·D + D), intersected with the call's prefix; out = s·out +
/// (1 − s)·softmax half, s = the engine's kernel_share. Runs on the quadratic
/// skeleton (kernel/prefill/schedule.hpp).
#include <algorithm>

#include "../../core/aligned.hpp"
#include "../../observe/observer.hpp"
#include "../../policy/softmax.hpp"
#include "../prefill/schedule.hpp"

namespace attnkit::detail {

/// Keys of the block-diagonal softmax: query position p = i + Δ sees the keys of its
/// block [⌊p/D⌋·D, ⌊p/D⌋·D + D) (then intersected with the options' masks).
struct block_diagonal_keys : key_set_base {
  const options& opt;
  index_t q_len = 0, k_len = 0, block = 1;
  key_range hull(index_t b, index_t, index_t i) const {
    const index_t p = i + keys_of_batch(opt, b, q_len, k_len).delta;
    const index_t blk = p >= 0 ? p / block : -((-p + block - 1) / block);
    return {std::max<index_t>(blk * block, 0), std::max<index_t>(blk * block + block, 0)};
  }
  tile_class classify(const block_scratch&, index_t, index_t, index_t, index_t, index_t, index_t) const {
    return tile_class::full;
  }
  bool allowed(index_t, index_t, index_t, index_t) const { return true; }
};

/// out ← share·out + (1 − share)·(block-diagonal softmax over the same prefix).
template <class Arch, class KV>
void mix_block_diagonal(double share, const problem_shape& sh, const tensor_view<const float>& q,
                        const tensor_view<const KV>& k, const tensor_view<const KV>& v, const tensor_view<float>& out,
                        const options& opt, workspace& ws) {
  aligned_vector<float> diag(static_cast<std::size_t>(sh.batch * sh.q_heads * sh.q_len * sh.value_dim));
  const auto dv = bhsd(diag.data(), sh.batch, sh.q_heads, sh.q_len, sh.value_dim);
  options o = opt;
  o.masked_rows = masked_rows::zero;
  o.lse = nullptr;
  null_observer none;
  run_quadratic<Arch>(softmax{}, sh, q, k, v, dv, o, none, ws, block_diagonal_keys{{}, opt, sh.q_len, sh.k_len, sh.head_dim},
                      sh.head_dim);
  const float a = static_cast<float>(share), b = static_cast<float>(1.0 - share);
  for (index_t bb = 0; bb < sh.batch; ++bb)
    for (index_t h = 0; h < sh.q_heads; ++h)
      for (index_t i = 0; i < sh.q_len; ++i) {
        float* dst = out.row(bb, h, i);
        const float* src = dv.row(bb, h, i);
        for (index_t d = 0; d < sh.value_dim; ++d) dst[d] = a * dst[d] + b * src[d];
      }
}

}  // namespace attnkit::detail
