#pragma once
/// \file
/// Non-owning strided 4-D views. Every attention argument is a view with the
/// logical order [batch, heads, seq, dim]; the memory order is whatever the
/// strides say, so PyTorch's [batch, seq, heads, dim] (BSHD) buffers are used
/// in place, without a copy.
#include <array>
#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "checked.hpp"

namespace attnkit {

using index_t = std::int64_t;

/// Axis names of a 4-D attention tensor, in logical order.
enum axis : int { batch_axis = 0, head_axis = 1, seq_axis = 2, dim_axis = 3 };

/// A pointer plus extents and element strides in logical [batch, heads, seq, dim]
/// order. `T` is the element type (const-qualified for inputs).
///
/// \code
///   auto q = attnkit::bhsd(q_ptr, B, H, L, D);   // contiguous [B,H,L,D]
///   auto k = attnkit::bshd(k_ptr, B, L, H, D);   // PyTorch layout, same logical order
/// \endcode
template <class T>
struct tensor_view {
  using element_type = T;
  using value_type = std::remove_cv_t<T>;

  T* data = nullptr;
  std::array<index_t, 4> extent{};  ///< batch, heads, seq, dim
  std::array<index_t, 4> stride{};  ///< in elements, same order as extent

  constexpr index_t batch() const noexcept { return extent[batch_axis]; }
  constexpr index_t heads() const noexcept { return extent[head_axis]; }
  constexpr index_t seq() const noexcept { return extent[seq_axis]; }
  constexpr index_t dim() const noexcept { return extent[dim_axis]; }

  /// Pointer to element (b, h, s, 0): the start of one token's vector.
  constexpr T* row(index_t b, index_t h, index_t s) const noexcept {
    return data + b * stride[0] + h * stride[1] + s * stride[2];
  }
  constexpr T& operator()(index_t b, index_t h, index_t s, index_t d) const noexcept {
    return row(b, h, s)[d * stride[3]];
  }
  constexpr bool empty() const noexcept {
    return extent[0] == 0 || extent[1] == 0 || extent[2] == 0 || extent[3] == 0;
  }

  /// Implicit conversion float -> const float view (inputs accept mutable buffers).
  template <class U>
    requires(std::is_same_v<const U, T> && !std::is_same_v<U, T>)
  constexpr tensor_view(const tensor_view<U>& o) noexcept : data(o.data), extent(o.extent), stride(o.stride) {}
  /// A bool view converts to a byte view of the same memory (mask_view): masks are
  /// read as bytes, nonzero = true, so any byte value is defined behaviour.
  template <class U>
    requires(std::is_same_v<T, const std::uint8_t> && std::is_same_v<std::remove_const_t<U>, bool>)
  tensor_view(const tensor_view<U>& o) noexcept
      : data(reinterpret_cast<const std::uint8_t*>(o.data)), extent(o.extent), stride(o.stride) {}
  constexpr tensor_view() noexcept = default;
  constexpr tensor_view(T* p, std::array<index_t, 4> e, std::array<index_t, 4> s) noexcept
      : data(p), extent(e), stride(s) {}
};

/// View of a contiguous [batch, heads, seq, dim] buffer. (Strides saturate instead
/// of overflowing for absurd extents; validation then rejects the view.)
template <class T>
constexpr tensor_view<T> bhsd(T* data, index_t batch, index_t heads, index_t seq, index_t dim) noexcept {
  using detail::sat_mul;
  return {data, {batch, heads, seq, dim}, {sat_mul(heads, sat_mul(seq, dim)), sat_mul(seq, dim), dim, 1}};
}

/// View of a contiguous [batch, seq, heads, dim] buffer (PyTorch / FlashAttention
/// layout). Note the argument order follows the memory order.
template <class T>
constexpr tensor_view<T> bshd(T* data, index_t batch, index_t seq, index_t heads, index_t dim) noexcept {
  using detail::sat_mul;
  return {data, {batch, heads, seq, dim}, {sat_mul(seq, sat_mul(heads, dim)), dim, sat_mul(heads, dim), 1}};
}

/// View with explicit extents and strides, both in logical [batch, heads, seq, dim] order.
template <class T>
constexpr tensor_view<T> strided(T* data, std::array<index_t, 4> extent, std::array<index_t, 4> stride) noexcept {
  return {data, extent, stride};
}

/// An attention mask [batch|1, heads|1, Lq|1, Lk], one byte per element, nonzero =
/// attend. Extent 1 broadcasts along that axis. Build it with bhsd()/strided() over
/// `const bool*` or `const std::uint8_t*` (a bool view converts; every byte value
/// is read as nonzero or zero, never as a bool object).
using mask_view = tensor_view<const std::uint8_t>;
/// An additive logit bias [batch|1, heads|1, Lq|1, Lk], broadcast like mask_view.
using bias_view = tensor_view<const float>;

}  // namespace attnkit
