#pragma once
/// \file
/// Up-front validation of an attention call (CUTLASS's can_implement idea): every
/// check runs before any output byte is written; kernels themselves never throw.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <utility>

#include "checked.hpp"
#include "dropout.hpp"
#include "error.hpp"
#include "options.hpp"
#include "../parallel/num_threads.hpp"
#include "tensor_view.hpp"

namespace attnkit {
namespace detail {

inline const char* axis_name(int a) {
  static const char* names[] = {"batch", "heads", "seq", "dim"};
  return names[a];
}

/// Most elements (product of the extents) one view may have: 2^52, far beyond any
/// real tensor, so that the kernels' size arithmetic (element counts times tile
/// padding and element sizes) cannot overflow 64 bits.
inline constexpr index_t max_view_elements = index_t{1} << 52;

/// Elements a view spans, from its first to one past its last (0 for an empty
/// view), into `n`; false when that does not fit in index_t (huge strides or
/// extents). Extents and strides must be non-negative.
template <class T>
bool checked_span_elements(const tensor_view<T>& t, index_t& n) {
  n = 0;
  if (t.empty()) return true;
  index_t last = 0;
  for (int a = 0; a < 4; ++a) {
    index_t step = 0;
    if (!checked_mul(t.extent[a] - 1, t.stride[a], step) || !checked_add(last, step, last)) return false;
  }
  return checked_add(last, 1, n);
}

/// Elements a view spans; saturates at INT64_MAX (a span that does not fit then
/// overlaps everything, the safe answer for the overlap checks).
template <class T>
index_t span_elements(const tensor_view<T>& t) {
  index_t n = 0;
  return checked_span_elements(t, n) ? n : index_max;
}

/// [lo, hi) addresses of some memory, as integers (no pointer arithmetic past an
/// object); saturates at the top of the address space.
struct byte_span {
  std::uintptr_t lo = 0, hi = 0;
};

inline byte_span bytes_at(const void* p, index_t count, std::size_t elem_size) {
  const auto lo = reinterpret_cast<std::uintptr_t>(p);
  index_t bytes = 0;
  if (count <= 0 || p == nullptr) return {lo, lo};
  if (!checked_mul(count, static_cast<index_t>(elem_size), bytes)) return {lo, UINTPTR_MAX};
  std::uintptr_t hi = 0;
  if (__builtin_add_overflow(lo, static_cast<std::uintptr_t>(bytes), &hi)) hi = UINTPTR_MAX;
  return {lo, hi};
}

/// [begin, end) byte range a view touches.
template <class T>
byte_span byte_range(const tensor_view<T>& t) {
  return bytes_at(t.data, span_elements(t), sizeof(T));
}

/// [begin, end) byte range of a span.
template <class T>
byte_span byte_range(std::span<T> s) {
  return bytes_at(s.data(), static_cast<index_t>(s.size()), sizeof(T));
}

inline bool overlaps(byte_span a, byte_span b) {
  if (a.lo == a.hi || b.lo == b.hi) return false;
  return a.lo < b.hi && b.lo < a.hi;
}

/// Extents non-negative, strides non-negative, data present when non-empty, and
/// sizes that fit: at most max_view_elements elements, a byte span that neither
/// overflows 64 bits nor wraps around the address space. `last_axis` names axis 3
/// in messages ("dim", or "keys" for masks and biases).
template <class T>
void check_view_basics(const std::string& name, const tensor_view<T>& t, const char* last_axis = "dim") {
  auto axis = [&](int a) { return std::string(a == dim_axis ? last_axis : axis_name(a)); };
  for (int a = 0; a < 4; ++a)
    if (t.extent[a] < 0) fail(name, "extent '" + axis(a) + "'", ">= 0", t.extent[a]);
  for (int a = 0; a < 4; ++a)
    if (t.stride[a] < 0) fail(name, "stride '" + axis(a) + "'", ">= 0", t.stride[a]);
  if (!t.empty() && t.data == nullptr) fail(name, "data", "a non-null pointer for a non-empty view", "nullptr");
  index_t count = 1;
  for (int a = 0; a < 4; ++a)
    if (!checked_mul(count, t.extent[a], count) || count > max_view_elements)
      fail(name, "extents", "at most 2^52 elements in all", "a larger product of extents");
  index_t span = 0, bytes = 0;
  std::uintptr_t end = 0;
  if (!checked_span_elements(t, span) || !checked_mul(span, static_cast<index_t>(sizeof(T)), bytes) ||
      __builtin_add_overflow(reinterpret_cast<std::uintptr_t>(t.data), static_cast<std::uintptr_t>(bytes), &end))
    fail(name, "strides", "a memory span that fits in the address space", "extents × strides past 2^63 bytes");
}

template <class T>
void check_extent(const std::string& name, const tensor_view<T>& t, int a, index_t expected,
                  const std::string& because) {
  if (t.extent[a] != expected)
    fail(name, std::string("extent '") + axis_name(a) + "'", std::to_string(expected) + " (" + because + ")",
         t.extent[a]);
}

template <class T>
void check_unit_dim_stride(const std::string& name, const tensor_view<T>& t, const char* last_axis = "dim") {
  if (t.dim() > 1 && t.stride[dim_axis] != 1)
    fail(name, std::string("stride '") + last_axis + "'", std::string("1 (the ") + last_axis + " axis must be contiguous)",
         t.stride[dim_axis]);
}

/// Mask or bias: [B|1, Hq|1, Lq|1, Lk], the key axis ("keys") contiguous.
template <class T>
void check_broadcastable(const std::string& name, const tensor_view<T>& m, index_t B, index_t H, index_t Lq,
                         index_t Lk) {
  if (m.data == nullptr) return;
  check_view_basics(name, m, "keys");
  const index_t want[3] = {B, H, Lq};
  const char* what[3] = {"q.batch", "q.heads", "q.seq"};
  for (int a = 0; a < 3; ++a)
    if (m.extent[a] != want[a] && m.extent[a] != 1)
      fail(name, std::string("extent '") + axis_name(a) + "'",
           std::to_string(want[a]) + " (= " + what[a] + ") or 1 (broadcast)", m.extent[a]);
  if (m.extent[3] != Lk) fail(name, "extent 'keys'", std::to_string(Lk) + " (= k.seq)", m.extent[3]);
  check_unit_dim_stride(name, m, "keys");
}

/// options.positions: Δ = query − key computed without overflow and |Δ| <= max_position_delta.
inline void check_positions(const options& opt) {
  if (!opt.positions) return;
  const index_t a = opt.positions->query, b = opt.positions->key;
  constexpr index_t lo = std::numeric_limits<index_t>::min(), hi = std::numeric_limits<index_t>::max();
  const bool overflows = (b > 0 && a < lo + b) || (b < 0 && a > hi + b);  // a − b outside int64
  if (overflows || a - b > max_position_delta || a - b < -max_position_delta)
    fail("options.positions", "query - key",
         "|query - key| <= " + std::to_string(max_position_delta) + " (query " + std::to_string(opt.positions->query) +
             ", key " + std::to_string(opt.positions->key) + ")",
         overflows ? std::string("a distance beyond int64") : std::to_string(a - b));
}

/// Families that compute positions of their own (sparse patterns, permutations,
/// kernelised prefixes) do not take options.positions yet.
inline void reject_positions(const options& opt, const char* who) {
  if (opt.positions) fail("options.positions", "", std::string("unset (not supported by ") + who + ")", "positions");
}

/// No two elements of an output view share an address. Exact for nested layouts
/// (every BHSD / BSHD / padded or permuted one): taken by increasing stride, each
/// axis of extent > 1 must step past everything the smaller-stride axes reach.
/// A row stride smaller than Dv, say, would make two outputs one memory cell.
template <class T>
void check_distinct_elements(const std::string& name, const tensor_view<T>& t) {
  if (t.empty()) return;
  int order[4], n = 0;
  for (int a = 0; a < 4; ++a)
    if (t.extent[a] > 1) order[n++] = a;
  for (int i = 1; i < n; ++i)  // insertion sort by stride (GCC 12 warns falsely on std::sort of 4)
    for (int j = i; j > 0 && t.stride[order[j]] < t.stride[order[j - 1]]; --j) std::swap(order[j], order[j - 1]);
  index_t reach = 0;  // largest offset of the axes taken so far (fits: the span was checked)
  for (int i = 0; i < n; ++i) {
    const int a = order[i];
    if (t.stride[a] <= reach)
      fail(name, std::string("stride '") + axis_name(a) + "'",
           "> " + std::to_string(reach) + " (each element at its own address: the axes with smaller strides reach " +
               std::to_string(reach) + ")",
           t.stride[a]);
    reach += (t.extent[a] - 1) * t.stride[a];
  }
}

/// " (heads and seq swapped? …)" when view t has heads = want_seq and seq =
/// want_heads: a bshd buffer described in bhsd argument order, or the reverse.
template <class T>
std::string swap_hint(const tensor_view<T>& t, index_t want_heads, index_t want_seq) {
  if (t.heads() == t.seq() || t.heads() != want_seq || t.seq() != want_heads) return "";
  return "; heads and seq swapped? bshd() takes (data, batch, seq, heads, dim), bhsd() takes (data, batch, heads, "
         "seq, dim)";
}

/// The memory an argument occupies, for the overlap checks.
struct named_span {
  const char* name;
  byte_span span;
};

}  // namespace detail

/// Shape facts of a validated call.
struct problem_shape {
  index_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, k_len = 0, head_dim = 0, value_dim = 0;
  index_t group() const noexcept { return kv_heads ? q_heads / kv_heads : 0; }
};

namespace detail {
/// Extents of q, k, v and out against each other.
template <class TQ, class TK, class TV, class TO>
void check_shapes(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                  const tensor_view<TO>& out, const problem_shape& s) {
  if (s.head_dim == 0) fail("q", "extent 'dim'", "> 0", 0);
  if (s.value_dim == 0) fail("v", "extent 'dim'", "> 0", 0);
  // q and out with heads and seq swapped against each other: usually the inputs
  // were described in the wrong order (bshd buffers passed to bhsd(), or the
  // argument order of one mixed up), so q is named rather than out.
  if (q.heads() != q.seq() && out.heads() == q.seq() && out.seq() == q.heads())
    fail("q", "extents 'heads' and 'seq'",
         "heads = " + std::to_string(out.heads()) + " and seq = " + std::to_string(out.seq()) +
             " (as out; if q is right, out is the view to fix)" + swap_hint(q, out.heads(), out.seq()),
         "heads = " + std::to_string(q.heads()) + " and seq = " + std::to_string(q.seq()));
  check_extent("k", k, batch_axis, s.batch, "= q.batch");
  check_extent("v", v, batch_axis, s.batch, "= q.batch");
  check_extent("k", k, dim_axis, s.head_dim, "= q.dim");
  if (s.kv_heads == 0 && s.q_heads != 0) fail("k", "extent 'heads'", "> 0", 0);
  if (s.kv_heads != 0 && s.q_heads % s.kv_heads != 0) {
    std::string hint;
    if (k.seq() > 0 && s.q_heads % k.seq() == 0) hint = swap_hint(k, k.seq(), k.heads());
    fail("k", "extent 'heads'", "a divisor of q.heads = " + std::to_string(s.q_heads) + " (GQA)" + hint, s.kv_heads);
  }
  check_extent("v", v, head_axis, s.kv_heads, "= k.heads" + swap_hint(v, s.kv_heads, s.k_len));
  check_extent("v", v, seq_axis, s.k_len, "= k.seq" + swap_hint(v, s.kv_heads, s.k_len));
  check_extent("out", out, batch_axis, s.batch, "= q.batch");
  check_extent("out", out, head_axis, s.q_heads, "= q.heads");
  check_extent("out", out, seq_axis, s.q_len, "= q.seq");
  check_extent("out", out, dim_axis, s.value_dim, "= v.dim");
}
}  // namespace detail

/// Validates q/k/v/out/options of an attention call; throws invalid_argument_error
/// naming the argument and the expected vs actual value. `require_contiguous_dim`
/// is true for the SIMD kernels (the reference oracle accepts any stride). Kernel
/// entry points that do not implement options.dropout (varlen, gated, ring,
/// recurrent, diagnostics) reject it; attention() and attention_backward() pass
/// `kernel_takes_dropout` (the oracle always takes it).
template <class TQ, class TK, class TV, class TO>
problem_shape validate_call(const tensor_view<TQ>& q, const tensor_view<TK>& k, const tensor_view<TV>& v,
                            const tensor_view<TO>& out, const options& opt, bool require_contiguous_dim = true,
                            bool kernel_takes_dropout = false) {
  using detail::fail;
  detail::check_view_basics("q", q);
  detail::check_view_basics("k", k);
  detail::check_view_basics("v", v);
  detail::check_view_basics("out", out);
  const problem_shape s{q.batch(), q.heads(), k.heads(), q.seq(), k.seq(), q.dim(), v.dim()};
  detail::check_shapes(q, k, v, out, s);
  if (require_contiguous_dim) {
    detail::check_unit_dim_stride("q", q);
    detail::check_unit_dim_stride("k", k);
    detail::check_unit_dim_stride("v", v);
    detail::check_unit_dim_stride("out", out);
  }
  for (int a = 0; a < 4 && !out.empty(); ++a)
    if (out.extent[a] > 1 && out.stride[a] == 0)
      fail("out", std::string("stride '") + detail::axis_name(a) + "'", "> 0 (outputs may not broadcast)", 0);
  detail::check_distinct_elements("out", out);

  // Options.
  if (opt.scale && !std::isfinite(*opt.scale)) fail("options.scale", "", "a finite value", *opt.scale);
  if (opt.causal != causal::none && opt.causal != causal::top_left && opt.causal != causal::bottom_right)
    fail("options.causal", "", "causal::none, top_left or bottom_right", static_cast<int>(opt.causal));
  if (opt.window.left < -1) fail("options.window", "left", ">= -1 (-1 = unbounded)", opt.window.left);
  if (opt.window.right < -1) fail("options.window", "right", ">= -1 (-1 = unbounded)", opt.window.right);
  if (!(opt.softcap >= 0.0f) || !std::isfinite(opt.softcap))
    fail("options.softcap", "", ">= 0 and finite (0 = off)", opt.softcap);
  if (opt.masked_rows != masked_rows::zero && opt.masked_rows != masked_rows::nan)
    fail("options.masked_rows", "", "masked_rows::zero or nan", static_cast<int>(opt.masked_rows));
  if (opt.num_threads < 0) fail("options.num_threads", "", ">= 0 (0 = automatic)", opt.num_threads);
  detail::check_positions(opt);
  detail::check_dropout(opt.dropout, s.batch, s.q_heads, s.q_len, s.k_len);
  if (require_contiguous_dim && !kernel_takes_dropout && opt.dropout.active())
    fail("options.dropout", "p",
         "0 (this entry point does not implement dropout; attention() and attention_backward() do)", opt.dropout.p);
  if (opt.num_threads == 0) detail::env_num_threads();  // an invalid ATTNKIT_NUM_THREADS is reported now
  detail::check_broadcastable("options.mask", opt.mask, s.batch, s.q_heads, s.q_len, s.k_len);
  detail::check_broadcastable("options.bias", opt.bias, s.batch, s.q_heads, s.q_len, s.k_len);
  if (!opt.key_lengths.empty()) {
    if (static_cast<index_t>(opt.key_lengths.size()) != s.batch)
      fail("options.key_lengths", "size", std::to_string(s.batch) + " (= q.batch)", opt.key_lengths.size());
    if (opt.key_lengths.data() == nullptr) fail("options.key_lengths", "data", "non-null", "nullptr");
    for (std::size_t b = 0; b < opt.key_lengths.size(); ++b)
      if (opt.key_lengths[b] < 0 || opt.key_lengths[b] > s.k_len)
        fail("options.key_lengths", "element " + std::to_string(b), "in [0, " + std::to_string(s.k_len) + "] (k.seq)",
             opt.key_lengths[b]);
  }
  if (!opt.alibi_slopes.empty() && static_cast<index_t>(opt.alibi_slopes.size()) != s.q_heads)
    fail("options.alibi_slopes", "size", std::to_string(s.q_heads) + " (= q.heads)", opt.alibi_slopes.size());
  if (!opt.alibi_slopes.empty() && opt.alibi_slopes.data() == nullptr)
    fail("options.alibi_slopes", "data", "non-null", "nullptr");
  if (!opt.sinks.empty() && static_cast<index_t>(opt.sinks.size()) != s.q_heads)
    fail("options.sinks", "size", std::to_string(s.q_heads) + " (= q.heads)", opt.sinks.size());
  if (!opt.sinks.empty() && opt.sinks.data() == nullptr) fail("options.sinks", "data", "non-null", "nullptr");

  // Aliasing: an output may not overlap any input (results would depend on the
  // order of reads and writes), nor the other output.
  const detail::named_span inputs[] = {
      {"q", detail::byte_range(q)},
      {"k", detail::byte_range(k)},
      {"v", detail::byte_range(v)},
      {"options.mask", opt.mask.data ? detail::byte_range(opt.mask) : detail::byte_span{}},
      {"options.bias", opt.bias.data ? detail::byte_range(opt.bias) : detail::byte_span{}},
      {"options.key_lengths", detail::byte_range(opt.key_lengths)},
      {"options.alibi_slopes", detail::byte_range(opt.alibi_slopes)},
      {"options.sinks", detail::byte_range(opt.sinks)},
  };
  const detail::byte_span o = detail::byte_range(out);
  for (const auto& in : inputs)
    if (detail::overlaps(o, in.span)) fail("out", "memory", std::string("no overlap with ") + in.name, "overlap");
  if (opt.lse) {
    const detail::byte_span lr = detail::bytes_at(opt.lse, s.batch * s.q_heads * s.q_len, sizeof(float));
    if (lr.hi == UINTPTR_MAX) fail("options.lse", "memory", "a buffer inside the address space", "a wrapping range");
    if (detail::overlaps(o, lr)) fail("options.lse", "memory", "no overlap with out", "overlap");
    for (const auto& in : inputs)
      if (detail::overlaps(lr, in.span)) fail("options.lse", "memory", std::string("no overlap with ") + in.name, "overlap");
  }
  return s;
}

}  // namespace attnkit
