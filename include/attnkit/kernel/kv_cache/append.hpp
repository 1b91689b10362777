#pragma once
/// \file
/// The writing half of a KV-cache call (after validation): the new keys, rotated,
/// and the new values go into the cache at cache_seqlens[b] (converted to 16 bits or
/// quantised to q8 blocks as the cache stores them); the queries are rotated into a
/// scratch copy.
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../../parallel/thread_pool.hpp"
#include "../../simd/vec.hpp"
#include "types.hpp"

namespace attnkit::detail {

/// y[0, d) = x[0, d) with its first rotary_dim values rotated to position p (x and
/// y may be the same row).
inline void rotate_row(const rotary_embedding& r, index_t p, const float* x, float* y, index_t d) noexcept {
  const index_t half = r.rotary_dim / 2;
  const float* c = r.cos + p * half;
  const float* s = r.sin + p * half;
  for (index_t i = 0; i < half; ++i) {
    const index_t a = r.interleaved ? 2 * i : i, b = r.interleaved ? 2 * i + 1 : i + half;
    const float x1 = x[a], x2 = x[b];
    y[a] = x1 * c[i] - x2 * s[i];
    y[b] = x1 * s[i] + x2 * c[i];
  }
  if (x != y)
    for (index_t i = r.rotary_dim; i < d; ++i) y[i] = x[i];
}

/// One row of d values into the cache's storage type.
template <class T>
inline void store_row(const float* src, T* dst, index_t d) noexcept {
  if constexpr (std::is_same_v<T, float>) {
    for (index_t i = 0; i < d; ++i) dst[i] = src[i];
  } else if constexpr (is_q8_v<T>) {
    quantize_q8(src, d, dst);
  } else {
    for (index_t i = 0; i < d; ++i) dst[i] = T::from_float(src[i]);
  }
}

/// The row of token `pos` of head g of sequence b, in a dense cache...
template <class T>
inline T* cache_row(const tensor_view<T>& c, const kv_cache_options&, index_t, index_t b, index_t g, index_t pos) noexcept {
  return c.row(b, g, pos);
}
/// ... or in a paged one.
template <class T>
inline T* cache_row(const paged_cache<T>& c, const kv_cache_options& o, index_t max_pages, index_t b, index_t g,
                    index_t pos) noexcept {
  const index_t page = o.block_table[static_cast<std::size_t>(b * max_pages + pos / c.page_size)];
  return c.pool + page * c.page_stride + (pos % c.page_size) * c.row_stride + g * c.head_stride;
}

/// Writes k_new (rotated) and v_new into the caches at cache_seqlens[b].
template <class Cache>
void append_new_tokens(const Cache& kc, const Cache& vc, const kv_cache_options& o, index_t max_pages, index_t kv_heads,
                       index_t D, index_t Dv, int threads) {
  const index_t B = o.k_new.batch(), L = o.k_new.seq();
  if (B == 0 || L == 0) return;
  parallel_for(B * kv_heads, threads, [&](index_t task, int) {
    const index_t b = task / kv_heads, g = task % kv_heads;
    const index_t s0 = o.cache_seqlens[static_cast<std::size_t>(b)];
    std::vector<float> row(static_cast<std::size_t>(D));
    for (index_t t = 0; t < L; ++t) {
      const float* k = o.k_new.row(b, g, t);
      if (o.rotary) {
        rotate_row(*o.rotary, s0 + t, k, row.data(), D);
        k = row.data();
      }
      store_row(k, cache_row(kc, o, max_pages, b, g, s0 + t), D);
      store_row(o.v_new.row(b, g, t), cache_row(vc, o, max_pages, b, g, s0 + t), Dv);
    }
  });
}

/// q rotated to its positions (query i of sequence b at lengths[b] − Lq + i) into a
/// contiguous [B, Hq, Lq, D] copy.
inline void rotate_queries(const tensor_view<const float>& q, const rotary_embedding& r, const std::int64_t* lengths,
                           float* dst) {
  const index_t B = q.batch(), H = q.heads(), L = q.seq(), D = q.dim();
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t i = 0; i < L; ++i)
        rotate_row(r, lengths[b] - L + i, q.row(b, h, i), dst + ((b * H + h) * L + i) * D, D);
}

}  // namespace attnkit::detail
