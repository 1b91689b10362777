#pragma once
/// \file
/// Eigen adapters (opt-in: the only attnkit header that includes Eigen). One head is
/// an Eigen matrix with rows = tokens and columns = head dimension:
///
/// \code
///   #include <attnkit/interop/eigen.hpp>
///   using mat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
///   mat Q = mat::Random(L, D), K = mat::Random(L, D), V = mat::Random(L, D), O;
///   attnkit::eigen::attention(attnkit::softmax{}, Q, K, V, O);   // O is resized to L × D
///
///   // or views, for any attnkit entry point (B = H = 1, no copy):
///   auto q = attnkit::eigen::head_view(Q);
///   auto o = attnkit::eigen::output_view(O);
/// \endcode
///
/// CMake: link `attnkit::eigen` (attnkit::attnkit + Eigen3::Eigen), defined when
/// Eigen 3.4 is found.
#include <Eigen/Core>

#include <type_traits>

#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../kernel/dispatch.hpp"
#include "../policy/family.hpp"
#include "../simd/arch.hpp"

namespace attnkit::eigen {

/// Row-major float matrix: the layout in which a token's vector is contiguous, the
/// layout the kernels read without a copy.
using row_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace detail {
template <class Derived>
constexpr void check_direct_float() {
  static_assert(std::is_same_v<typename Derived::Scalar, float>, "attnkit::eigen: matrices must hold float");
  static_assert(static_cast<bool>(Derived::Flags & Eigen::DirectAccessBit),
                "attnkit::eigen: the matrix must have direct storage access (a Matrix, Map, Ref or Block of one), "
                "not an unevaluated expression; call .eval() first");
}

/// Strides (in elements) of rows (tokens) and columns (dims) of a direct-access matrix.
template <class Derived>
std::array<index_t, 4> head_strides(const Eigen::MatrixBase<Derived>& m) {
  const Derived& d = m.derived();
  const index_t inner = d.innerStride(), outer = d.outerStride();
  const index_t row_stride = Derived::IsRowMajor ? outer : inner;
  const index_t col_stride = Derived::IsRowMajor ? inner : outer;
  const index_t span = static_cast<index_t>(d.rows()) * row_stride;  // any value works: B = H = 1
  return {span, span, row_stride, col_stride};
}

/// True when each row (token) is contiguous, as the SIMD kernels require.
template <class Derived>
bool rows_contiguous(const Eigen::MatrixBase<Derived>& m) {
  return m.cols() <= 1 || head_strides(m)[3] == 1;
}
}  // namespace detail

/// Read-only view of one head: extents [1, 1, rows, cols], strides taken from the
/// matrix (row- or column-major, Map/Block strides). No copy. The SIMD kernels need
/// a contiguous head dimension, i.e. a row-major matrix (or a single column); the
/// float64 reference accepts any layout.
template <class Derived>
tensor_view<const float> head_view(const Eigen::MatrixBase<Derived>& m) {
  detail::check_direct_float<Derived>();
  return {m.derived().data(), {1, 1, static_cast<index_t>(m.rows()), static_cast<index_t>(m.cols())},
          detail::head_strides(m)};
}

/// Writable view of one head (same rules as head_view). Takes `const MatrixBase&` so
/// that temporaries such as `O.middleRows(a, n)` work (the Eigen idiom for output
/// arguments); the expression must be an lvalue with writable storage.
template <class Derived>
tensor_view<float> output_view(const Eigen::MatrixBase<Derived>& m) {
  detail::check_direct_float<Derived>();
  static_assert(static_cast<bool>(Derived::Flags & Eigen::LvalueBit), "attnkit::eigen: the output must be writable");
  auto& w = const_cast<Eigen::MatrixBase<Derived>&>(m).derived();
  return {w.data(), {1, 1, static_cast<index_t>(w.rows()), static_cast<index_t>(w.cols())}, detail::head_strides(m)};
}

/// Attention of one head: Q [Lq × D], K [Lk × D], V [Lk × Dv] -> O [Lq × Dv].
/// O is resized when it is a resizable Matrix (a fixed-size matrix, Map or Block
/// must already have that shape). Any Eigen float matrix with direct storage works:
/// row-major inputs are read in place; an input whose rows are not contiguous
/// (column-major with more than one column, or a strided Map) is first copied into a
/// row-major temporary, and a column-major O is computed in a row-major temporary and
/// copied back. Pass row-major matrices to avoid those copies.
template <class Arch = simd::default_arch, policy P, class DQ, class DK, class DV, class DO>
void attention(const P& pol, const Eigen::MatrixBase<DQ>& q, const Eigen::MatrixBase<DK>& k,
               const Eigen::MatrixBase<DV>& v, const Eigen::MatrixBase<DO>& out, const options& opt = {}) {
  detail::check_direct_float<DQ>();
  detail::check_direct_float<DK>();
  detail::check_direct_float<DV>();
  detail::check_direct_float<DO>();
  auto& o = const_cast<Eigen::MatrixBase<DO>&>(out).derived();
  o.resize(q.rows(), v.cols());  // asserts (in debug) for expressions of another shape

  // Contiguous-row operands are viewed in place; the others are copied row-major.
  row_matrix qc, kc, vc;
  const auto in_view = [](const auto& m, row_matrix& copy) {
    if (detail::rows_contiguous(m)) return head_view(m);
    copy = m;
    return head_view(copy);
  };
  const tensor_view<const float> qv = in_view(q, qc), kv = in_view(k, kc), vv = in_view(v, vc);
  if (detail::rows_contiguous(o)) {
    attnkit::attention<Arch>(pol, qv, kv, vv, output_view(o), opt);
  } else {
    row_matrix oc(o.rows(), o.cols());
    attnkit::attention<Arch>(pol, qv, kv, vv, output_view(oc), opt);
    o = oc;
  }
}

}  // namespace attnkit::eigen
