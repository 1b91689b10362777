// attnkit/interop/eigen.hpp: Eigen matrices (one head) in both storage orders, Maps
// and Blocks, against attnkit::attention on the same data in BHSD buffers.
#include <catch2/catch.hpp>

#include <attnkit/interop/eigen.hpp>

#include <vector>

#include "support.hpp"

using namespace attnkit;
using attnkit_test::randn;
using row_matrix = attnkit::eigen::row_matrix;
using col_matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

namespace {
struct head {
  index_t lq, lk, d, dv;
  std::vector<float> q, k, v;
  head(index_t lq_, index_t lk_, index_t d_, index_t dv_, std::uint32_t seed)
      : lq(lq_), lk(lk_), d(d_), dv(dv_), q(randn(static_cast<std::size_t>(lq * d), seed)),
        k(randn(static_cast<std::size_t>(lk * d), seed + 1)), v(randn(static_cast<std::size_t>(lk * dv), seed + 2)) {}
  row_matrix Q() const { return Eigen::Map<const row_matrix>(q.data(), lq, d); }
  row_matrix K() const { return Eigen::Map<const row_matrix>(k.data(), lk, d); }
  row_matrix V() const { return Eigen::Map<const row_matrix>(v.data(), lk, dv); }
  /// attnkit::attention on the raw buffers, as [1, 1, L, D] BHSD views.
  std::vector<float> expected(const options& opt = {}) const {
    std::vector<float> o(static_cast<std::size_t>(lq * dv));
    attnkit::attention(softmax{}, bhsd(q.data(), 1, 1, lq, d), bhsd(k.data(), 1, 1, lk, d),
                       bhsd(v.data(), 1, 1, lk, dv), bhsd(o.data(), 1, 1, lq, dv), opt);
    return o;
  }
};

double max_diff(const row_matrix& a, const std::vector<float>& b) {
  std::vector<float> av(a.data(), a.data() + a.size());
  return attnkit_test::max_abs_diff(av, b);
}
}  // namespace

TEST_CASE("head_view follows Eigen's storage order through strides", "[interop][eigen]") {
  row_matrix r(3, 5);
  col_matrix c(3, 5);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 5; ++j) r(i, j) = c(i, j) = static_cast<float>(10 * i + j);
  const auto rv = eigen::head_view(r), cv = eigen::head_view(c);
  CHECK(rv.extent == std::array<index_t, 4>{1, 1, 3, 5});
  CHECK(cv.extent == std::array<index_t, 4>{1, 1, 3, 5});
  CHECK(rv.stride[2] == 5);
  CHECK(rv.stride[3] == 1);
  CHECK(cv.stride[2] == 1);
  CHECK(cv.stride[3] == 3);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 5; ++j) {
      CHECK(rv(0, 0, i, j) == r(i, j));
      CHECK(cv(0, 0, i, j) == c(i, j));
    }
  // A block keeps the parent's outer stride.
  const auto bv = eigen::head_view(r.block(1, 2, 2, 3));
  CHECK(bv.extent[2] == 2);
  CHECK(bv.stride[2] == 5);
  CHECK(bv(0, 0, 1, 2) == r(2, 4));
}

TEST_CASE("eigen::attention matches attnkit::attention (row-major, in place)", "[interop][eigen]") {
  const head h(37, 53, 64, 48, 11);
  row_matrix O;  // resized by attention()
  eigen::attention(softmax{}, h.Q(), h.K(), h.V(), O);
  REQUIRE(O.rows() == 37);
  REQUIRE(O.cols() == 48);
  CHECK(max_diff(O, h.expected()) == 0.0);  // same kernel, same data: bitwise equal
}

TEST_CASE("eigen::attention accepts column-major inputs and output", "[interop][eigen]") {
  const head h(29, 29, 32, 32, 21);
  options opt;
  opt.causal = causal::bottom_right;
  const col_matrix Q = h.Q(), K = h.K(), V = h.V();
  col_matrix O(29, 32);
  eigen::attention(softmax{}, Q, K, V, O, opt);
  const row_matrix O_row = O;
  CHECK(max_diff(O_row, h.expected(opt)) == 0.0);
}

TEST_CASE("eigen::attention writes into a block and reads Maps", "[interop][eigen]") {
  const head h(16, 40, 16, 16, 31);
  const Eigen::Map<const row_matrix> Q(h.q.data(), h.lq, h.d), K(h.k.data(), h.lk, h.d), V(h.v.data(), h.lk, h.dv);
  row_matrix big = row_matrix::Constant(20, 24, -7.0f);
  eigen::attention(softmax{}, Q, K, V, big.block(2, 4, 16, 16));
  const row_matrix inner = big.block(2, 4, 16, 16);
  CHECK(max_diff(inner, h.expected()) == 0.0);
  CHECK(big(0, 0) == -7.0f);  // outside the block untouched
  CHECK(big(19, 23) == -7.0f);
}

TEST_CASE("eigen views work with any attnkit entry point (sigmoid)", "[interop][eigen]") {
  const head h(8, 12, 16, 16, 41);
  const row_matrix Q = h.Q(), K = h.K(), V = h.V();
  row_matrix O(8, 16);
  attnkit::attention(sigmoid{}, eigen::head_view(Q), eigen::head_view(K), eigen::head_view(V), eigen::output_view(O));
  std::vector<float> ref(static_cast<std::size_t>(8 * 16));
  attnkit::attention(sigmoid{}, bhsd(h.q.data(), 1, 1, 8, 16), bhsd(h.k.data(), 1, 1, 12, 16),
                     bhsd(h.v.data(), 1, 1, 12, 16), bhsd(ref.data(), 1, 1, 8, 16));
  CHECK(max_diff(O, ref) == 0.0);
}

TEST_CASE("column-major views are rejected by the kernels with a clear error", "[interop][eigen]") {
  const col_matrix Q = col_matrix::Random(4, 8), K = col_matrix::Random(4, 8), V = col_matrix::Random(4, 8);
  row_matrix O(4, 8);
  CHECK_THROWS_AS(attnkit::attention(softmax{}, eigen::head_view(Q), eigen::head_view(K), eigen::head_view(V),
                                     eigen::output_view(O)),
                  invalid_argument_error);
}
