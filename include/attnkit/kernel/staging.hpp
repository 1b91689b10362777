#pragma once
/// \file
/// 16-bit calls end to end (q, k, v bfloat16 or float16; out 16-bit or float): the
/// entry points validate the caller's views, widen q (and whatever else the kernel
/// reads as float) into float copies, run the float kernel, and round the float
/// result into the caller's 16-bit out at the end.
///
/// Why staging and not a 16-bit kernel: q and out are O(N·D) against the kernel's
/// O(N²·D) (or, in decode, O(L·D) of cache) work, so one widening pass costs well
/// under 1% of a call; K and V, the large operands, are already read as 16-bit by
/// the kernels (widened when packed, or on the fly in decode), which is where the
/// halved memory traffic comes from. Accumulation is float throughout; out is
/// rounded once, to nearest even. The caller's 16-bit out is written only after
/// the kernel has finished, so an exception leaves it untouched.
#include <algorithm>
#include <type_traits>

#include "../core/aligned.hpp"
#include "../core/dtype.hpp"
#include "../core/dtype_rules.hpp"
#include "../core/tensor_view.hpp"
#include "../simd/widen.hpp"

namespace attnkit::detail {

/// Float copies of a 16-bit call's tensors (call-wide scratch, kept in the workspace).
/// `slot` tells apart the tensors of one call (q, out, k, v, ...).
template <int Slots>
struct staging_buffers {
  aligned_vector<float> slot[Slots];
  std::size_t bytes() const {
    std::size_t n = 0;
    for (const auto& s : slot) n += s.capacity() * sizeof(float);
    return n;
  }
};

template <class T>
index_t element_count(const tensor_view<T>& x) noexcept {
  return x.empty() ? 0 : x.extent[0] * x.extent[1] * x.extent[2] * x.extent[3];  // validated: no overflow
}

/// Contiguous float scratch with x's extents; contents unspecified.
template <class T>
tensor_view<float> float_like(const tensor_view<T>& x, aligned_vector<float>& buf) {
  const index_t n = element_count(x);
  if (buf.size() < static_cast<std::size_t>(n)) buf.resize(static_cast<std::size_t>(n));
  return bhsd(buf.data(), x.extent[0], x.extent[1], x.extent[2], x.extent[3]);
}

/// A contiguous float copy of a validated view (any strides, unit dim stride).
template <class T>
tensor_view<const float> widened(const tensor_view<T>& x, aligned_vector<float>& buf) {
  const tensor_view<float> f = float_like(x, buf);
  const index_t D = x.dim();
  for (index_t b = 0; b < x.batch(); ++b)
    for (index_t h = 0; h < x.heads(); ++h)
      for (index_t s = 0; s < x.seq(); ++s) widen(x.row(b, h, s), f.row(b, h, s), D);
  return f;
}

/// The float view a kernel reads for input x: x itself when it is float, else a
/// widened copy in `buf`.
template <class T>
tensor_view<const float> float_input(const tensor_view<T>& x, aligned_vector<float>& buf) {
  if constexpr (std::is_same_v<std::remove_const_t<T>, float>)
    return x;
  else
    return widened(x, buf);
}

/// dst = src rounded to dst's type, to nearest even (src: a float_like view of dst).
template <class T>
void narrow_into(const tensor_view<const float>& src, const tensor_view<T>& dst) noexcept {
  const index_t D = dst.dim();
  for (index_t b = 0; b < dst.batch(); ++b)
    for (index_t h = 0; h < dst.heads(); ++h)
      for (index_t s = 0; s < dst.seq(); ++s) narrow(src.row(b, h, s), dst.row(b, h, s), D);
}

/// The float view a kernel writes for the caller's `out`: out itself when it is
/// float, else scratch that finish_out() rounds into it.
template <class O>
tensor_view<float> float_out(const tensor_view<O>& out, aligned_vector<float>& buf) {
  if constexpr (std::is_same_v<O, float>)
    return out;
  else
    return float_like(out, buf);
}
template <class O>
void finish_out(const tensor_view<float>& staged, const tensor_view<O>& out) noexcept {
  if constexpr (!std::is_same_v<O, float>) narrow_into(tensor_view<const float>(staged), out);
}

}  // namespace attnkit::detail
