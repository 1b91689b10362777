#pragma once
/// \file
/// Packed variable-length batches (FlashAttention's cu_seqlens convention):
/// sequences are concatenated along the seq axis of a batch-1 view and sequence b
/// owns query rows [cu_q[b], cu_q[b+1]) and keys [cu_k[b], cu_k[b+1]).
#include <algorithm>
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

namespace detail {
/// Forwards rows of one sequence of a packed batch to the caller's observer with
/// their packed row index (the sequence's first row is row q0); begin() and end()
/// are called once for the whole packed call by attention_varlen.
template <class Obs>
struct packed_rows_observer {
  static constexpr bool enabled = Obs::enabled;
  static constexpr bool wants_entropy = Obs::wants_entropy;
  static constexpr bool wants_first_logit = Obs::wants_first_logit;
  Obs& inner;
  index_t q0 = 0;
  int top_k() const { return inner.top_k(); }
  void begin(const problem_shape&, const options&) {}
  void end() {}
  void on_row(row_state st) {
    st.row += q0;
    inner.on_row(st);
  }
};
}  // namespace detail

namespace detail {
template <class Arch, class P, class Q, class KV, class O, class Observer>
void attention_varlen_impl(const P& pol, tensor_view<const Q> q, tensor_view<const KV> k, tensor_view<const KV> v,
                           tensor_view<O> out, std::span<const std::int64_t> cu_seqlens_q,
                           std::span<const std::int64_t> cu_seqlens_k, const options& opt, Observer& obs) {
  const problem_shape packed = validate_call(q, k, v, out, opt);
  if (q.batch() != 1) detail::fail("q", "extent 'batch'", "1 (packed sequences)", q.batch());
  if (opt.mask.data) detail::fail("options.mask", "", "none with attention_varlen", "a mask");
  if (opt.bias.data) detail::fail("options.bias", "", "none with attention_varlen", "a bias");
  if (!opt.key_lengths.empty())
    detail::fail("options.key_lengths", "", "empty with attention_varlen (use cu_seqlens_k)", opt.key_lengths.size());
  detail::check_cu_seqlens("cu_seqlens_q", cu_seqlens_q, q.seq(), cu_seqlens_q.size());
  detail::check_cu_seqlens("cu_seqlens_k", cu_seqlens_k, k.seq(), cu_seqlens_q.size());

  const index_t Hq = q.heads(), total_q = q.seq();
  auto sub = [](auto view, index_t off, index_t len) {
    view.data += off * view.stride[seq_axis];
    view.extent[seq_axis] = len;
    return view;
  };
  std::vector<float> lse_tmp;  // one sequence's LSE [Hq, lq], copied into the packed layout
  index_t longest = 0;
  for (std::size_t b = 0; b + 1 < cu_seqlens_q.size(); ++b) longest = std::max(longest, cu_seqlens_q[b + 1] - cu_seqlens_q[b]);
  if (opt.lse) lse_tmp.resize(static_cast<std::size_t>(Hq * longest));
  options o = opt;  // a sequence's options: its LSE goes to lse_tmp
  if (opt.lse) o.lse = lse_tmp.data();
  // Pass 1: every sequence's checks, so that a bad one is reported before any write.
  for (std::size_t b = 0; b + 1 < cu_seqlens_q.size(); ++b) {
    const index_t q0 = cu_seqlens_q[b], lq = cu_seqlens_q[b + 1] - q0;
    const index_t k0 = cu_seqlens_k[b], lk = cu_seqlens_k[b + 1] - k0;
    if (lq == 0) continue;  // not run: nothing to check
    try {
      detail::check_call(pol, sub(q, q0, lq), sub(k, k0, lk), sub(v, k0, lk), sub(out, q0, lq), o);
    } catch (const invalid_argument_error& e) {
      throw invalid_argument_error(e.argument(), std::string(e.what()) + " (in sequence " + std::to_string(b) + ")");
    }
  }
  // Pass 2: the sequences, one call each.
  if constexpr (std::remove_cvref_t<Observer>::enabled) obs.begin(packed, opt);
  for (std::size_t b = 0; b + 1 < cu_seqlens_q.size(); ++b) {
    const index_t q0 = cu_seqlens_q[b], lq = cu_seqlens_q[b + 1] - q0;
    const index_t k0 = cu_seqlens_k[b], lk = cu_seqlens_k[b + 1] - k0;
    if (lq == 0) continue;
    if constexpr (std::remove_cvref_t<Observer>::enabled)
      attention<Arch>(pol, sub(q, q0, lq), sub(k, k0, lk), sub(v, k0, lk), sub(out, q0, lq), o,
                      detail::packed_rows_observer<std::remove_cvref_t<Observer>>{obs, q0});
    else
      attention<Arch>(pol, sub(q, q0, lq), sub(k, k0, lk), sub(v, k0, lk), sub(out, q0, lq), o);
    if (opt.lse)
      for (index_t h = 0; h < Hq; ++h)
        for (index_t i = 0; i < lq; ++i) opt.lse[h * total_q + q0 + i] = lse_tmp[static_cast<std::size_t>(h * lq + i)];
  }
  if constexpr (std::remove_cvref_t<Observer>::enabled) obs.end();
}
}  // namespace detail

/// Attention over a packed batch: q [1, Hq, total_q, D], k [1, Hkv, total_k, D],
/// v [1, Hkv, total_k, Dv], out [1, Hq, total_q, Dv]; cu_seqlens_q/k hold B+1
/// offsets. Causal alignment and windows apply per sequence (bottom-right uses each
/// sequence's own lengths). options.lse, if set, is laid out [Hq, total_q].
/// Not supported here (rejected): options.mask, options.bias, options.key_lengths.
/// Every sequence is validated (with the policy's own checks, which may depend on
/// its lengths: a 2-D grid, a block layout, self-attention for a permutation)
/// before any output is written. An observer sees one call: begin() with the
/// packed shape (batch 1, seq = total_q / total_k), each row once with its packed
/// row index, end().
template <class Arch = simd::default_arch, policy P, class Observer = null_observer>
  requires observer<Observer>
void attention_varlen(const P& pol, tensor_view<const float> q, tensor_view<const float> k,
                      tensor_view<const float> v, tensor_view<float> out, std::span<const std::int64_t> cu_seqlens_q,
                      std::span<const std::int64_t> cu_seqlens_k, const options& opt = {}, Observer&& obs = {}) {
  detail::attention_varlen_impl<Arch>(pol, q, k, v, out, cu_seqlens_q, cu_seqlens_k, opt, obs);
}

/// The same with 16-bit tensors, under attention()'s rule: K/V bfloat16 or float16
/// with a float q and out, or q, k, v all of one 16-bit type with out of that type
/// or float (each sequence runs as attention() does).
template <class Arch = simd::default_arch, policy P, class Q, class K, class V, class O,
          class Observer = null_observer>
  requires observer<Observer> && detail::io_dtypes<Q, K, V, O> && (!detail::fp32_dtypes<Q, K, V, O>)
void attention_varlen(const P& pol, tensor_view<Q> q, tensor_view<K> k, tensor_view<V> v, tensor_view<O> out,
                      std::span<const std::int64_t> cu_seqlens_q, std::span<const std::int64_t> cu_seqlens_k,
                      const options& opt = {}, Observer&& obs = {}) {
  using QT = std::remove_const_t<Q>;
  using KT = std::remove_const_t<K>;
  detail::attention_varlen_impl<Arch>(pol, tensor_view<const QT>(q), tensor_view<const KT>(k),
                                      tensor_view<const KT>(v), out, cu_seqlens_q, cu_seqlens_k, opt, obs);
}

/// Any other element types: a one-line compile error stating attention()'s rule.
template <class Arch = simd::default_arch, policy P, class Q, class K, class V, class O,
          class Observer = null_observer>
  requires(!detail::io_dtypes<Q, K, V, O>)
void attention_varlen(const P&, tensor_view<Q>, tensor_view<K>, tensor_view<V>, tensor_view<O>,
                      std::span<const std::int64_t>, std::span<const std::int64_t>, const options& = {},
                      Observer&& = {}) {
  detail::reject_io_dtypes<Q, K, V, O>();
}

}  // namespace attnkit
