#pragma once
/// \file
/// attention_with_kv_cache: decoding against a KV cache in one call, in the spirit
/// of FlashAttention's flash_attn_with_kvcache. The cache is the caller's memory:
///   - dense:  k_cache / v_cache views [B, Hkv, Lmax, D] over the whole allocation
///             (BSHD [B, Lmax, Hkv, D] or BHSD, by strides: bshd(p, B, Lmax, Hkv, D));
///   - paged:  paged_cache pools + kv_cache_options.block_table;
/// with elements float, bfloat16, float16 or block_q8 (8-bit blocks of 32 values).
/// The call validates everything, then writes the new keys (rotated) and values
/// at cache_seqlens[b], rotates q, and attends with q's rows as the last tokens of
/// each sequence (bottom-right causal among the new tokens). A linear-attention
/// policy takes its recurrent state (linear_state) in place of the caches.
///
/// \code
///   attnkit::kv_cache_options kv;
///   kv.cache_seqlens = seqlens;                       // tokens already cached
///   kv.k_new = attnkit::bshd(k_tok, B, 1, Hkv, D);     // this step's key and value
///   kv.v_new = attnkit::bshd(v_tok, B, 1, Hkv, D);
///   attnkit::attention_with_kv_cache(attnkit::softmax{}, attnkit::bshd(q, B, 1, Hq, D),
///       attnkit::bshd(k_cache, B, Lmax, Hkv, D), attnkit::bshd(v_cache, B, Lmax, Hkv, D),
///       attnkit::bshd(out, B, 1, Hq, D), kv);
///   for (auto& s : seqlens) s += 1;
/// \endcode
#include <cmath>
#include <type_traits>
#include <vector>

#include "../core/validate.hpp"
#include "../kernel/decode.hpp"
#include "../kernel/kv_cache/append.hpp"
#include "../kernel/kv_cache/types.hpp"
#include "../kernel/kv_cache/validate.hpp"
#include "../kernel/kernelized/recurrent.hpp"
#include "../kernel/prefill/schedule.hpp"
#include "../observe/observer.hpp"
#include "../policy/sigmoid.hpp"

namespace attnkit {

namespace detail {

/// Call-wide scratch of the KV-cache entry: key lengths after the append, rotated q.
struct kv_entry_scratch {
  std::vector<std::int64_t> lengths;
  aligned_vector<float> q;
  std::size_t bytes() const { return lengths.capacity() * sizeof(std::int64_t) + q.capacity() * sizeof(float); }
};

/// K/V row sources of a dense or paged cache for the decode skeleton.
template <class T>
dense_rows<std::remove_const_t<T>> rows_of(const tensor_view<T>& c, const kv_cache_options&, index_t) {
  return {tensor_view<const std::remove_const_t<T>>(c.data, c.extent, c.stride)};
}
template <class T>
paged_rows<std::remove_const_t<T>> rows_of(const paged_cache<T>& c, const kv_cache_options& o, index_t max_pages) {
  return {c.pool, c.page_stride, c.row_stride, c.head_stride, c.page_size, o.block_table.data(), max_pages};
}

/// A weight function whose parameters depend on the call (weight_context).
template <class P>
inline constexpr bool has_call_parameters = has_member_resolve<P>;

template <class Arch, class P, class Q, class Cache, class O, class Observer>
void kv_cache_impl(const P& pol, const tensor_view<const Q>& q_in, const Cache& kc, const Cache& vc,
                   const tensor_view<O>& out_in, const kv_cache_options& o, Observer& obs) {
  static_assert(std::is_same_v<typename P::family, family::quadratic>,
                "attnkit::attention_with_kv_cache: softmax-family weight functions (softmax, sigmoid, your own) "
                "and linear attention (with a linear_state) only");
  static_assert(check_weight_function<P>());
  const kv_call_facts f = validate_kv_call(q_in, kc, vc, out_in, o);
  check_weight_options<P>(o.attention);
  const index_t wlen = o.weight_key_length > 0 ? o.weight_key_length : f.capacity;
  if (weight_uses_key_length(pol) && o.weight_key_length == 0)
    fail("kv_cache_options.weight_key_length", "",
         "> 0 or a weight function that does not read the key length (e.g. an explicit sigmoid.bias): "
         "sigmoid's default bias -ln(Lk) needs one Lk for the whole sequence, stated once, so that prefill and "
         "token-by-token decoding give the same rows",
         0);
  const problem_shape& sh = f.shape;
  workspace_lease lease(o.attention.workspace);
  workspace& ws = lease.get();
  auto& scratch = ws.shared().get<kv_entry_scratch>();
  scratch.lengths.resize(static_cast<std::size_t>(sh.batch));
  for (index_t b = 0; b < sh.batch; ++b)
    scratch.lengths[static_cast<std::size_t>(b)] = o.cache_seqlens[static_cast<std::size_t>(b)] + f.new_len;
  options a = o.attention;
  a.key_lengths = scratch.lengths;
  // The options' own checks (scale, window, masks, ALiBi, sinks, LSE, ...), with
  // stand-ins for the caches, whose memory was checked above.
  const tensor_view<const Q> k_shape{q_in.data, {sh.batch, sh.kv_heads, sh.k_len, sh.head_dim}, {0, 0, 0, 1}};
  const tensor_view<const Q> v_shape{q_in.data, {sh.batch, sh.kv_heads, sh.k_len, sh.value_dim}, {0, 0, 0, 1}};
  validate_call(q_in, k_shape, v_shape, out_in, a);

  // Everything is valid: from here on the call writes. A 16-bit q is widened and a
  // 16-bit out staged in float (kernel/staging.hpp).
  auto& staged = ws.shared().get<staging_buffers<2>>();
  const tensor_view<const float> q = float_input(q_in, staged.slot[0]);
  const tensor_view<float> out = float_out(out_in, staged.slot[1]);
  const int threads = resolve_num_threads(a.num_threads);
  using stored = typename std::remove_cvref_t<decltype(pool_view(kc))>::element_type;
  if constexpr (!std::is_const_v<stored>)  // a view of const elements cannot take new tokens (validated)
    if (f.new_len > 0) append_new_tokens(kc, vc, o, f.max_pages, sh.kv_heads, sh.head_dim, sh.value_dim, threads);
  tensor_view<const float> qe = q;
  if (o.rotary) {
    grow(scratch.q, sh.batch * sh.q_heads * sh.q_len * sh.head_dim);
    rotate_queries(q, *o.rotary, scratch.lengths.data(), scratch.q.data());
    qe = bhsd(static_cast<const float*>(scratch.q.data()), sh.batch, sh.q_heads, sh.q_len, sh.head_dim);
  }
  if constexpr (Observer::enabled) obs.begin(sh, a);
  using T = std::remove_const_t<typename std::remove_cvref_t<decltype(pool_view(kc))>::value_type>;
  constexpr bool dense = !is_paged_cache_v<Cache>;
  const auto ks = rows_of(kc, o, f.max_pages);
  const auto vs = rows_of(vc, o, f.max_pages);
  // Many rows on a dense float / 16-bit cache: attention()'s prefill skeleton. A
  // weight function with per-call parameters resolves them with the sequence's one
  // stated length on both paths (the prefill skeleton would resolve per batch).
  const auto run = [&](const auto& weights) {
    if constexpr (dense && !is_q8_v<T>)
      if (sh.q_len * sh.group() > decode_max_rows) {
        run_quadratic<Arch>(weights, sh, qe, ks.view, vs.view, out, a, obs, ws);
        return;
      }
    run_decode_rows<Arch>(weights, sh, qe, ks, vs, out, a, obs, ws, wlen);
  };
  if constexpr (has_call_parameters<P>)
    run(with_key_length<P>(pol, wlen));
  else
    run(pol);
  finish_out(out, out_in);
  if constexpr (Observer::enabled) obs.end();
}

}  // namespace detail

/// Attention of q [B, Hq, Lq, D] against a dense KV cache k_cache / v_cache
/// [B, Hkv, Lmax, D] / [..., Dv] (views of the whole allocation; elements float,
/// bfloat16, float16 or block_q8, whose dim extent is D / 32) into out [B, Hq, Lq, Dv].
/// Sequence b holds cache_seqlens[b] tokens; kv_cache_options.k_new / v_new are
/// appended first. Query i of sequence b sits at position L_b − Lq + i, L_b =
/// cache_seqlens[b] + Lnew. Throws invalid_argument_error, before writing anything
/// (the cache included), if an argument is invalid.
template <class Arch = simd::default_arch, policy P, class T, class Observer = null_observer>
  requires observer<Observer>
void attention_with_kv_cache(const P& pol, tensor_view<const float> q, tensor_view<T> k_cache, tensor_view<T> v_cache,
                             tensor_view<float> out, const kv_cache_options& opt, Observer&& obs = {}) {
  static_assert(is_kv_storage_v<std::remove_const_t<T>> || is_q8_v<std::remove_const_t<T>>,
                "attnkit: cache elements are float, bfloat16, float16 or block_q8<float | float16>");
  detail::kv_cache_impl<Arch>(pol, q, k_cache, v_cache, out, opt, obs);
}

/// The same against paged caches (pools [num_pages, page_size, Hkv, D], see
/// attnkit::paged) and kv_cache_options.block_table.
template <class Arch = simd::default_arch, policy P, class T, class Observer = null_observer>
  requires observer<Observer>
void attention_with_kv_cache(const P& pol, tensor_view<const float> q, const paged_cache<T>& k_cache,
                             const paged_cache<T>& v_cache, tensor_view<float> out, const kv_cache_options& opt,
                             Observer&& obs = {}) {
  static_assert(is_kv_storage_v<std::remove_const_t<T>> || is_q8_v<std::remove_const_t<T>>,
                "attnkit: cache elements are float, bfloat16, float16 or block_q8<float | float16>");
  detail::kv_cache_impl<Arch>(pol, q, k_cache, v_cache, out, opt, obs);
}

/// A bfloat16 or float16 q (out of q's type or float), against a dense or paged
/// cache of any element type above: q is widened once, the cache is read as
/// stored, and a 16-bit out is rounded once after the kernel has finished.
/// (kv_cache_options.k_new / v_new, the appended tokens, are float views.)
template <class Arch = simd::default_arch, policy P, class Q, class T, class O, class Observer = null_observer>
  requires observer<Observer> && detail::is_half_v<std::remove_const_t<Q>> &&
           (std::is_same_v<O, float> || std::is_same_v<O, std::remove_const_t<Q>>)
void attention_with_kv_cache(const P& pol, tensor_view<Q> q, tensor_view<T> k_cache, tensor_view<T> v_cache,
                             tensor_view<O> out, const kv_cache_options& opt, Observer&& obs = {}) {
  static_assert(is_kv_storage_v<std::remove_const_t<T>> || is_q8_v<std::remove_const_t<T>>,
                "attnkit: cache elements are float, bfloat16, float16 or block_q8<float | float16>");
  detail::kv_cache_impl<Arch>(pol, tensor_view<const std::remove_const_t<Q>>(q), k_cache, v_cache, out, opt, obs);
}
template <class Arch = simd::default_arch, policy P, class Q, class T, class O, class Observer = null_observer>
  requires observer<Observer> && detail::is_half_v<std::remove_const_t<Q>> &&
           (std::is_same_v<O, float> || std::is_same_v<O, std::remove_const_t<Q>>)
void attention_with_kv_cache(const P& pol, tensor_view<Q> q, const paged_cache<T>& k_cache,
                             const paged_cache<T>& v_cache, tensor_view<O> out, const kv_cache_options& opt,
                             Observer&& obs = {}) {
  static_assert(is_kv_storage_v<std::remove_const_t<T>> || is_q8_v<std::remove_const_t<T>>,
                "attnkit: cache elements are float, bfloat16, float16 or block_q8<float | float16>");
  detail::kv_cache_impl<Arch>(pol, tensor_view<const std::remove_const_t<Q>>(q), k_cache, v_cache, out, opt, obs);
}

/// Linear attention through the same entry: its cache is the recurrent state. The
/// new tokens k_new / v_new [B, Hkv, T, ·] (T = q.seq) are absorbed in order, each
/// answering its query: a prompt of T tokens (prefill) leaves the state a decode
/// step continues. cache_seqlens, if given, must equal state.tokens for every
/// sequence; rotary embeds q and k_new at positions state.tokens + t. Causal by
/// construction (kv_cache_options.attention.causal: none or bottom_right).
template <class Arch = simd::default_arch, class F>
void attention_with_kv_cache(const linear<F>& pol, tensor_view<const float> q, linear_state& state,
                             tensor_view<float> out, const kv_cache_options& opt) {
  using detail::fail;
  if (opt.k_new.data == nullptr || opt.v_new.data == nullptr)
    fail("kv_cache_options.k_new", "data", "the new tokens' keys and values (linear attention keeps no cache)", "nullptr");
  for (std::size_t b = 0; b < opt.cache_seqlens.size(); ++b)
    if (opt.cache_seqlens[b] != state.tokens)
      fail("kv_cache_options.cache_seqlens", "element " + std::to_string(b),
           std::to_string(state.tokens) + " (= state.tokens: one state holds every sequence's position)", opt.cache_seqlens[b]);
  if (!opt.cache_seqlens.empty() && static_cast<index_t>(opt.cache_seqlens.size()) != q.batch())
    fail("kv_cache_options.cache_seqlens", "size", std::to_string(q.batch()) + " (= q.batch) or 0", opt.cache_seqlens.size());
  if (!opt.block_table.empty()) fail("kv_cache_options.block_table", "", "empty (linear attention keeps no pages)", "entries");
  if (opt.attention.causal == causal::top_left)
    fail("kv_cache_options.attention.causal", "", "none or bottom_right (the recurrence is causal)", "top_left");
  options a = opt.attention;
  a.causal = causal::none;  // linear_step is causal by construction
  if (!opt.rotary) {
    linear_step<Arch>(pol, q, opt.k_new, opt.v_new, out, state, a);
    return;
  }
  // Rotary: q and k rotated into copies (validated first, so nothing is half-done).
  const index_t B = q.batch(), H = q.heads(), L = q.seq(), D = q.dim();
  detail::check_view_basics("q", q);
  detail::check_view_basics("kv_cache_options.k_new", opt.k_new);
  if (opt.k_new.dim() != D) fail("kv_cache_options.k_new", "extent 'dim'", D, opt.k_new.dim());
  detail::check_rotary(*opt.rotary, D, state.tokens + L - 1);
  std::vector<float> qr(static_cast<std::size_t>(B * H * L * D));
  const index_t Hk = opt.k_new.heads(), Lk = opt.k_new.seq();
  std::vector<float> kr(static_cast<std::size_t>(opt.k_new.batch() * Hk * Lk * D));
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < L; ++i)
        detail::rotate_row(*opt.rotary, state.tokens + i, q.row(b, h, i), qr.data() + ((b * H + h) * L + i) * D, D);
  for (index_t b = 0; b < opt.k_new.batch(); ++b)
    for (index_t h = 0; h < Hk; ++h)
      for (index_t i = 0; i < Lk; ++i)
        detail::rotate_row(*opt.rotary, state.tokens + i, opt.k_new.row(b, h, i), kr.data() + ((b * Hk + h) * Lk + i) * D, D);
  linear_step<Arch>(pol, bhsd(static_cast<const float*>(qr.data()), B, H, L, D),
                    bhsd(static_cast<const float*>(kr.data()), opt.k_new.batch(), Hk, Lk, D), opt.v_new, out, state, a);
}

}  // namespace attnkit
