#pragma once
/// \file
/// Validation of a KV-cache call, all of it before the first byte is written (the
/// cache included): shapes, cache_seqlens against the capacity, the new tokens'
/// fit, the block table (entries inside the pool, no page twice in one sequence, no
/// page written by one sequence and read by another), rotary tables, aliasing.
#include <algorithm>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "../../core/validate.hpp"
#include "types.hpp"

namespace attnkit::detail {

/// What validation learnt about a KV-cache call.
struct kv_call_facts {
  problem_shape shape;      ///< Lk = the capacity
  index_t capacity = 0;     ///< Lmax (dense) or max_pages · page_size (paged)
  index_t new_len = 0;      ///< Lnew (0: nothing appended)
  index_t max_pages = 0;    ///< block-table columns (paged)
};

/// The views of a dense cache, or the pool of a paged one as a view
/// [num_pages, heads, page_size, dim], for the generic view checks.
template <class T>
tensor_view<T> pool_view(const paged_cache<T>& c) noexcept {
  return {c.pool, {c.num_pages, c.heads, c.page_size, c.dim}, {c.page_stride, c.head_stride, c.row_stride, 1}};
}
template <class T>
const tensor_view<T>& pool_view(const tensor_view<T>& v) noexcept {
  return v;
}

/// The hint every "does not fit" message carries: the most common cause.
inline const char* cache_view_hint() {
  return " (the cache view's seq extent is its capacity: view the whole allocation, e.g. "
         "bshd(k_cache, B, Lmax, Hkv, D), not bshd(k_cache, B, cur_len, Hkv, D))";
}

/// cache_seqlens, the new tokens and the capacity.
inline void check_seqlens(const kv_cache_options& o, index_t batch, index_t capacity, index_t new_len, bool paged) {
  if (static_cast<index_t>(o.cache_seqlens.size()) != batch)
    fail("kv_cache_options.cache_seqlens", "size", std::to_string(batch) + " (= q.batch)", o.cache_seqlens.size());
  if (batch > 0 && o.cache_seqlens.data() == nullptr) fail("kv_cache_options.cache_seqlens", "data", "non-null", "nullptr");
  for (index_t b = 0; b < batch; ++b) {
    const index_t s = o.cache_seqlens[static_cast<std::size_t>(b)];
    const std::string el = "element " + std::to_string(b);
    if (s < 0) fail("kv_cache_options.cache_seqlens", el, ">= 0", s);
    if (s > capacity)
      fail("kv_cache_options.cache_seqlens", el,
           "<= the cache capacity " + std::to_string(capacity) + (paged ? " (max_pages · page_size)" : cache_view_hint()), s);
    if (new_len > capacity - s)
      fail("kv_cache_options.k_new", "extent 'seq'",
           "<= " + std::to_string(capacity - s) + ": cache_seqlens[" + std::to_string(b) + "] = " + std::to_string(s) +
               " plus the new tokens must fit in the capacity " + std::to_string(capacity) +
               (paged ? " (max_pages · page_size)" : cache_view_hint()),
           new_len);
  }
}

/// The block table: shape, entries of the pages in use inside the pool, no page
/// twice in one sequence, and no page that receives new tokens of one sequence
/// while another sequence reads it.
inline void check_block_table(const kv_cache_options& o, index_t batch, index_t num_pages, index_t page_size,
                              index_t new_len, index_t& max_pages) {
  const auto& t = o.block_table;
  if (batch == 0) return;
  if (t.empty() || t.data() == nullptr || static_cast<index_t>(t.size()) % batch != 0)
    fail("kv_cache_options.block_table", "size", "a positive multiple of the batch " + std::to_string(batch) + " ([B, max_pages])",
         t.size());
  max_pages = static_cast<index_t>(t.size()) / batch;
  std::vector<std::pair<std::int32_t, index_t>> used;  // (page, batch · 2 + writes)
  for (index_t b = 0; b < batch; ++b) {
    const index_t len = o.cache_seqlens[static_cast<std::size_t>(b)] + new_len;
    const index_t pages = ceil_div(len, page_size);
    const index_t first_written = new_len > 0 ? o.cache_seqlens[static_cast<std::size_t>(b)] / page_size : pages;
    for (index_t p = 0; p < pages; ++p) {
      const std::int32_t e = t[static_cast<std::size_t>(b * max_pages + p)];
      if (e < 0 || e >= num_pages)
        fail("kv_cache_options.block_table",
             "entry [" + std::to_string(b) + "][" + std::to_string(p) + "]",
             "a page of the pool, in [0, " + std::to_string(num_pages) + ")", e);
      used.emplace_back(e, b * 2 + (p >= first_written ? 1 : 0));
    }
  }
  std::sort(used.begin(), used.end());
  for (std::size_t x = 1; x < used.size(); ++x) {
    if (used[x].first != used[x - 1].first) continue;
    const index_t b0 = used[x - 1].second / 2, b1 = used[x].second / 2;
    const bool writes = (used[x - 1].second | used[x].second) & 1;
    if (b0 == b1)
      fail("kv_cache_options.block_table", "row " + std::to_string(b0),
           "distinct pages (page " + std::to_string(used[x].first) + " appears twice in the pages in use)", "a repeat");
    if (writes)
      fail("kv_cache_options.block_table", "page " + std::to_string(used[x].first),
           "a page that receives new tokens used by its own sequence only (sequences " + std::to_string(b0) + " and " +
               std::to_string(b1) + " share it; shared prefix pages must be full)",
           "a shared page written to");
  }
}

/// Rotary tables: present, shaped, covering every position of the call.
inline void check_rotary(const rotary_embedding& r, index_t head_dim, index_t last_position) {
  const char* n = "kv_cache_options.rotary";
  if (r.rotary_dim < 2 || r.rotary_dim % 2 != 0 || r.rotary_dim > head_dim)
    fail(n, "rotary_dim", "even, in [2, " + std::to_string(head_dim) + " = D]", r.rotary_dim);
  if (r.cos == nullptr || r.sin == nullptr) fail(n, "cos/sin", "non-null tables", "nullptr");
  if (r.max_positions <= last_position)
    fail(n, "max_positions", "> " + std::to_string(last_position) + " (the last position of this call)", r.max_positions);
  index_t elems = 0;
  if (!checked_mul(r.max_positions, r.rotary_dim / 2, elems) || elems > max_view_elements)
    fail(n, "max_positions", "a table that fits in memory", r.max_positions);
}

template <class A, class B>
inline void check_no_overlap(const char* a, const A& x, const char* b, const B& y) {
  if (overlaps(byte_range(x), byte_range(y)))
    fail(a, "memory", std::string("no overlap with ") + b, "overlap");
}

/// Everything of a KV-cache call. `Cache` is tensor_view<T> or paged_cache<T>.
template <class Cache, class Q, class O>
kv_call_facts validate_kv_call(const tensor_view<const Q>& q, const Cache& k_cache, const Cache& v_cache,
                               const tensor_view<O>& out, const kv_cache_options& o) {
  constexpr bool paged = is_paged_cache_v<Cache>;
  const auto kp = pool_view(k_cache);
  const auto vp = pool_view(v_cache);
  using stored = typename std::remove_cvref_t<decltype(kp)>::element_type;  // const for a read-only view
  constexpr index_t per = values_per_element<std::remove_const_t<stored>>;
  const char* kn = "k_cache";
  const char* vn = "v_cache";
  check_view_basics("q", q);
  check_view_basics("out", out);
  check_view_basics(kn, kp);
  check_view_basics(vn, vp);
  check_unit_dim_stride(kn, kp);
  check_unit_dim_stride(vn, vp);
  kv_call_facts f;
  const index_t B = q.batch(), D = q.dim(), Hkv = kp.heads(), Dv = vp.dim() * per;
  if (D == 0) fail("q", "extent 'dim'", "> 0", 0);
  if (per > 1 && D % per != 0) fail("q", "extent 'dim'", "a multiple of 32 (q8 caches store blocks of 32 values)", D);
  if (kp.dim() * per != D)
    fail(kn, "extent 'dim'", std::to_string(D / per) + (per > 1 ? " q8 blocks (= q.dim / 32)" : " (= q.dim)"), kp.dim());
  if (Dv == 0) fail(vn, "extent 'dim'", "> 0", 0);
  if (Hkv == 0 || q.heads() % Hkv != 0)
    fail(kn, "extent 'heads'", "a positive divisor of q.heads = " + std::to_string(q.heads()) + " (GQA)", Hkv);
  if (vp.heads() != Hkv) fail(vn, "extent 'heads'", std::to_string(Hkv) + " (= k_cache heads)", vp.heads());
  if constexpr (paged) {
    if (k_cache.page_size <= 0 || k_cache.page_size % 16 != 0)
      fail(kn, "page_size", "a positive multiple of 16", k_cache.page_size);
    if (v_cache.page_size != k_cache.page_size) fail(vn, "page_size", k_cache.page_size, v_cache.page_size);
    if (v_cache.num_pages != k_cache.num_pages) fail(vn, "num_pages", k_cache.num_pages, v_cache.num_pages);
  } else {
    check_extent(kn, kp, batch_axis, B, "= q.batch");
    check_extent(vn, vp, batch_axis, B, "= q.batch");
    check_extent(vn, vp, seq_axis, kp.seq(), "= k_cache seq, the capacity");
  }
  // The new tokens.
  const bool appends = o.k_new.data != nullptr || o.v_new.data != nullptr;
  if (appends) {
    if constexpr (std::is_const_v<stored>)
      fail(kn, "element type", "a mutable view (new tokens are written into it)", "a view of const elements");
    check_view_basics("kv_cache_options.k_new", o.k_new);
    check_view_basics("kv_cache_options.v_new", o.v_new);
    check_unit_dim_stride("kv_cache_options.k_new", o.k_new);
    check_unit_dim_stride("kv_cache_options.v_new", o.v_new);
    check_extent("kv_cache_options.k_new", o.k_new, batch_axis, B, "= q.batch");
    check_extent("kv_cache_options.k_new", o.k_new, head_axis, Hkv, "= the cache's heads");
    check_extent("kv_cache_options.k_new", o.k_new, dim_axis, D, "= q.dim");
    check_extent("kv_cache_options.v_new", o.v_new, batch_axis, B, "= q.batch");
    check_extent("kv_cache_options.v_new", o.v_new, head_axis, Hkv, "= the cache's heads");
    check_extent("kv_cache_options.v_new", o.v_new, seq_axis, o.k_new.seq(), "= k_new seq");
    check_extent("kv_cache_options.v_new", o.v_new, dim_axis, Dv, "= the cache's value dim");
    f.new_len = o.k_new.seq();
  }
  if constexpr (paged) {
    index_t cap = 0;
    if (B > 0) {
      if (o.block_table.empty() || static_cast<index_t>(o.block_table.size()) % B != 0)
        fail("kv_cache_options.block_table", "size", "a positive multiple of the batch " + std::to_string(B) + " ([B, max_pages])",
             o.block_table.size());
      if (!checked_mul(static_cast<index_t>(o.block_table.size()) / B, k_cache.page_size, cap) || cap > max_view_elements)
        fail("kv_cache_options.block_table", "size", "a capacity max_pages · page_size below 2^52", o.block_table.size());
    }
    f.capacity = cap;
  } else {
    if (!o.block_table.empty()) fail("kv_cache_options.block_table", "", "empty for a dense cache", o.block_table.size());
    f.capacity = kp.seq();
  }
  check_seqlens(o, B, f.capacity, f.new_len, paged);
  if constexpr (paged) check_block_table(o, B, k_cache.num_pages, k_cache.page_size, f.new_len, f.max_pages);
  if (o.rotary) {
    index_t last = 0;
    for (index_t b = 0; b < B; ++b) last = std::max(last, o.cache_seqlens[static_cast<std::size_t>(b)] + f.new_len - 1);
    for (index_t b = 0; b < B; ++b)
      if (o.cache_seqlens[static_cast<std::size_t>(b)] + f.new_len < q.seq())
        fail("kv_cache_options.cache_seqlens", "element " + std::to_string(b),
             ">= q.seq - Lnew with rotary (query i sits at position cache_seqlens + Lnew - q.seq + i)",
             o.cache_seqlens[static_cast<std::size_t>(b)]);
    check_rotary(*o.rotary, D, last);
  }
  if (o.weight_key_length < 0) fail("kv_cache_options.weight_key_length", "", ">= 0 (0: the capacity)", o.weight_key_length);
  const options& a = o.attention;
  if (!a.key_lengths.empty())
    fail("kv_cache_options.attention.key_lengths", "", "empty (cache_seqlens and the new tokens define them)", a.key_lengths.size());
  if (a.positions) fail("kv_cache_options.attention.positions", "", "unset (the cache defines the positions)", "set");
  if (a.causal == causal::top_left)
    fail("kv_cache_options.attention.causal", "", "none or bottom_right (top_left would count from the cache's first key)",
         "top_left");

  // Aliasing: nothing written may overlap what is read, nor the output.
  check_no_overlap(kn, kp, vn, vp);
  for (const auto* c : {&kp, &vp}) {
    const char* cn = c == &kp ? kn : vn;
    check_no_overlap("out", out, cn, *c);
    check_no_overlap("q", q, cn, *c);
    if (appends) {
      check_no_overlap("kv_cache_options.k_new", o.k_new, cn, *c);
      check_no_overlap("kv_cache_options.v_new", o.v_new, cn, *c);
    }
    if (a.lse) {
      const byte_span lr = bytes_at(a.lse, B * q.heads() * q.seq(), sizeof(float));
      if (overlaps(lr, byte_range(*c))) fail("options.lse", "memory", std::string("no overlap with ") + cn, "overlap");
    }
    if (a.mask.data && overlaps(byte_range(a.mask), byte_range(*c)))
      fail("options.mask", "memory", std::string("no overlap with ") + cn, "overlap");
    if (a.bias.data && overlaps(byte_range(a.bias), byte_range(*c)))
      fail("options.bias", "memory", std::string("no overlap with ") + cn, "overlap");
  }
  if (appends) {
    if (overlaps(byte_range(out), byte_range(o.k_new)) || overlaps(byte_range(out), byte_range(o.v_new)))
      fail("out", "memory", "no overlap with k_new / v_new", "overlap");
  }
  f.shape = problem_shape{B, q.heads(), Hkv, q.seq(), f.capacity, D, Dv};
  return f;
}

}  // namespace attnkit::detail
