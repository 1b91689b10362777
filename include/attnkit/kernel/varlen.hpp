#pragma once
/// \file
/// Packed variable-length batches (FlashAttention's cu_seqlens convention):
/// sequences are concatenated along the seq axis of a batch-1 view and sequence b
/// owns query rows [cu_q[b], cu_q[b+1]) and keys [cu_k[b], cu_k[b+1]).
#include <span>
#include <string>
#include <vector>

#include "dispatch.hpp"

namespace attnkit {

namespace detail {
inline void check_cu_seqlens(const char* name, std::span<const std::int64_t> cu, index_t total, std::size_t n) {
  if (cu.size() < 2) fail(name, "size", ">= 2 (number of sequences + 1)", cu.size());
  if (cu.size() != n) fail(name, "size", std::to_string(n) + " (= cu_seqlens_q.size())", cu.size());
  if (cu.front() != 0) fail(name, "element 0", 0, cu.front());
  for (std::size_t b = 1; b < cu.size(); ++b)
    if (cu[b] < cu[b - 1])
      fail(name, "element " + std::to_string(b), ">= " + std::to_string(cu[b - 1]) + " (non-decreasing)", cu[b]);
  if (cu.back() != total) fail(name, "last element", std::to_string(total) + " (= total tokens of the view)", cu.back());
}
}  // namespace detail

/// Attention over a packed batch: q [1, Hq, total_q, D], k [1, Hkv, total_k, D],
/// v [1, Hkv, total_k, Dv], out [1, Hq, total_q, Dv]; cu_seqlens_q/k hold B+1
/// offsets. Causal alignment and windows apply per sequence (bottom-right uses each
/// sequence's own lengths). options.lse, if set, is laid out [Hq, total_q].
/// Not supported here (rejected): options.mask, options.bias, options.key_lengths.
template <class Arch = simd::default_arch, policy P>
void attention_varlen(const P& pol, tensor_view<const float> q, tensor_view<const float> k,
                      tensor_view<const float> v, tensor_view<float> out, std::span<const std::int64_t> cu_seqlens_q,
                      std::span<const std::int64_t> cu_seqlens_k, const options& opt = {}) {
  validate_call(q, k, v, out, opt);
  if (q.batch() != 1) detail::fail("q", "extent 'batch'", "1 (packed sequences)", q.batch());
  if (opt.mask.data) detail::fail("options.mask", "", "none with attention_varlen", "a mask");
  if (opt.bias.data) detail::fail("options.bias", "", "none with attention_varlen", "a bias");
  if (!opt.key_lengths.empty())
    detail::fail("options.key_lengths", "", "empty with attention_varlen (use cu_seqlens_k)", opt.key_lengths.size());
  detail::check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.seq(), cu_seqlens_q.size());
  detail::check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.seq(), cu_seqlens_q.size());

  const index_t Hq = q.heads(), total_q = q.seq();
  std::vector<float> lse_tmp;
  for (std::size_t b = 0; b + 1 < cu_seqlens_q.size(); ++b) {
    const index_t q0 = cu_seqlens_q[b], lq = cu_seqlens_q[b + 1] - q0;
    const index_t k0 = cu_seqlens_k[b], lk = cu_seqlens_k[b + 1] - k0;
    if (lq == 0) continue;
    auto sub = [](auto view, index_t off, index_t len) {
      view.data += off * view.stride[seq_axis];
      view.extent[seq_axis] = len;
      return view;
    };
    options o = opt;
    if (opt.lse) {
      lse_tmp.resize(static_cast<std::size_t>(Hq * lq));
      o.lse = lse_tmp.data();
    }
    attention<Arch>(pol, sub(q, q0, lq), sub(k, k0, lk), sub(v, k0, lk), sub(out, q0, lq), o);
    if (opt.lse)
      for (index_t h = 0; h < Hq; ++h)
        for (index_t i = 0; i < lq; ++i) opt.lse[h * total_q + q0 + i] = lse_tmp[static_cast<std::size_t>(h * lq + i)];
  }
}

}  // namespace attnkit
