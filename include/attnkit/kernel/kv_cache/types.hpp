#pragma once
/// \file
/// The public types of the KV-cache entry point (api/kv_cache.hpp): the options of
/// a call, rotary-embedding tables and paged caches.
#include <cstdint>
#include <optional>
#include <span>

#include "../../core/dtype.hpp"
#include "../../core/options.hpp"
#include "../../core/quant.hpp"
#include "../../core/tensor_view.hpp"

namespace attnkit {

/// Rotary position embedding (RoPE) tables, FlashAttention's `rotary_cos` /
/// `rotary_sin`: row p of each holds cos(p·θ_i) / sin(p·θ_i), i < rotary_dim / 2,
/// for position p. The first rotary_dim dims of q and of the new keys are rotated
/// in pairs: (x[i], x[i + rotary_dim/2]) (GPT-NeoX, Llama: `interleaved = false`) or
/// (x[2i], x[2i+1]) (GPT-J: `interleaved = true`), y = (x₁c − x₂s, x₁s + x₂c).
struct rotary_embedding {
  const float* cos = nullptr;  ///< [max_positions, rotary_dim / 2], row-major
  const float* sin = nullptr;  ///< [max_positions, rotary_dim / 2], row-major
  index_t max_positions = 0;   ///< rows of each table (> every position used)
  index_t rotary_dim = 0;      ///< even, 2 <= rotary_dim <= D
  bool interleaved = false;
};

/// A paged K or V cache (vLLM / FlashAttention): a pool of pages, page p holding
/// page_size tokens × heads × dim elements. Element (page, token r, head g, e) is at
/// pool[page·page_stride + r·row_stride + g·head_stride + e]. `dim` counts stored
/// elements: D for float / bfloat16 / float16, D / 32 for block_q8. Build the
/// contiguous [num_pages, page_size, heads, dim] layout with attnkit::paged().
template <class T>
struct paged_cache {
  T* pool = nullptr;
  index_t num_pages = 0, page_size = 0, heads = 0, dim = 0;
  index_t page_stride = 0, row_stride = 0, head_stride = 0;  ///< in elements
};

/// A contiguous page pool [num_pages, page_size, heads, dim].
template <class T>
constexpr paged_cache<T> paged(T* pool, index_t num_pages, index_t page_size, index_t heads, index_t dim) noexcept {
  using detail::sat_mul;
  return {pool, num_pages, page_size, heads, dim, sat_mul(page_size, sat_mul(heads, dim)), sat_mul(heads, dim), dim};
}

namespace detail {
template <class C>
inline constexpr bool is_paged_cache_v = false;
template <class T>
inline constexpr bool is_paged_cache_v<paged_cache<T>> = true;
}  // namespace detail

/// The first `n` tokens of a cache view: same data and strides, seq extent n. (Not
/// `bshd(p, B, n, H, D)`, whose batch stride would be n·H·D instead of the
/// allocation's Lmax·H·D.)
template <class T>
constexpr tensor_view<T> first_tokens(tensor_view<T> v, index_t n) noexcept {
  v.extent[seq_axis] = n;
  return v;
}

/// Options of attention_with_kv_cache (FlashAttention's flash_attn_with_kvcache).
struct kv_cache_options {
  /// Tokens already in the cache, per batch entry ([B], required; FlashAttention's
  /// cache_seqlens). New keys go to positions cache_seqlens[b] … + Lnew − 1; the call
  /// does not change this array (add Lnew yourself).
  std::span<const std::int64_t> cache_seqlens{};
  /// New keys / values [B, Hkv, Lnew, D] / [B, Hkv, Lnew, Dv] written into the cache
  /// (rotated, converted or quantised to the cache's type) before attending; data
  /// == nullptr: none.
  tensor_view<const float> k_new{}, v_new{};
  /// Paged caches: the page of every block of page_size tokens, [B, max_pages]
  /// row-major (max_pages = size / B). Entries past a sequence's last used page
  /// are not read.
  std::span<const std::int32_t> block_table{};
  /// Rotary embedding of q and the new keys at their positions (none: unset).
  std::optional<rotary_embedding> rotary{};
  /// weight_context.key_length for the weight function (e.g. sigmoid's default
  /// bias −ln Lk): one length for every step of a sequence, so prefill and token-by-
  /// token decoding weigh alike. 0: the cache capacity (Lmax, or max_pages ·
  /// page_size). sigmoid{} without a bias needs it stated (see docs/kv-cache.md).
  index_t weight_key_length = 0;
  /// Everything else of the call (scale, window, softcap, ALiBi, sinks, masked_rows,
  /// LSE, threads, workspace; mask and bias over the cache's Lmax keys). Causal is
  /// bottom-right by default: the new queries are the last tokens of each sequence.
  /// key_lengths and positions must stay unset (the cache defines them).
  options attention{.causal = causal::bottom_right};
};

}  // namespace attnkit
