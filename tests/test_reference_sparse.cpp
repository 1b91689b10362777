// The float64 reference oracle: sparse patterns (allowed sets checked by hand-counted
// keys per query), top-k and FlexPrefill selection. Tolerances: 1e-12 absolute.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>

#include "reference_util.hpp"

using namespace attnkit;
using reftest::tensor;

namespace {
constexpr double tol = 1e-12;

/// n_i of a sparse softmax call on an L×L self-attention problem.
template <class P>
std::vector<index_t> counts(const P& pat, index_t L, const options& opt = {}) {
  tensor q(1, 1, L, 2, 1), k(1, 1, L, 2, 2), v(1, 1, L, 1, 3), o(1, 1, L, 1);
  return reference::attention(sparse{pat}, q.cv(), k.cv(), v.cv(), o.v(), opt).allowed;
}
}  // namespace

TEST_CASE("sparse patterns: allowed counts by hand", "[reference][sparse]") {
  CHECK(counts(pattern::sliding_window{2, 0}, 6) == std::vector<index_t>{1, 2, 3, 3, 3, 3});
  CHECK(counts(pattern::sliding_window{1, 1}, 5) == std::vector<index_t>{2, 3, 3, 3, 2});
  CHECK(counts(pattern::dilated_window{1, 2}, 7) == std::vector<index_t>{2, 2, 3, 3, 3, 2, 2});
  CHECK(counts(pattern::sink_window{2, 2}, 6) == std::vector<index_t>{1, 2, 3, 4, 4, 4});
  const bool layout[4] = {true, false, true, true};
  CHECK(counts(pattern::block_sparse{layout, 2, 2, 2, 2}, 4) == std::vector<index_t>{2, 2, 4, 4});
  CHECK(counts(pattern::power_attention{1, 0, 0}, 8) == std::vector<index_t>{1, 2, 3, 3, 4, 4, 4, 4});
  CHECK(counts(pattern::power_attention{2, 0, 0}, 8) == std::vector<index_t>{1, 2, 3, 4, 5, 6, 5, 6});
  CHECK(counts(pattern::power_attention{2, 1, 0}, 8) == std::vector<index_t>{1, 2, 3, 4, 5, 6, 7, 8});
}

TEST_CASE("sparse patterns: neighbourhoods see exactly kernel keys", "[reference][sparse]") {
  CHECK(counts(pattern::neighborhood_1d{3}, 7) == std::vector<index_t>(7, 3));
  CHECK(counts(pattern::neighborhood_1d{3, 2}, 8) == std::vector<index_t>(8, 3));
  CHECK(counts(pattern::neighborhood_1d{5}, 3) == std::vector<index_t>(3, 3));  // L < kernel: all keys
  CHECK(counts(pattern::neighborhood_2d{3, 4, 3, 3}, 12) == std::vector<index_t>(12, 9));
  // Border shift: query 0 sees {0, 1, 2}; query 6 sees {4, 5, 6}; query 3 sees {2, 3, 4}.
  const pattern::neighborhood_1d n{3};
  for (index_t j = 0; j < 7; ++j) {
    CHECK(n.allowed(0, j, 7, 7) == (j <= 2));
    CHECK(n.allowed(6, j, 7, 7) == (j >= 4));
    CHECK(n.allowed(3, j, 7, 7) == (j >= 2 && j <= 4));
  }
  // Dilation 2 on 8 tokens: query 1 (odd group {1,3,5,7}) sees {1, 3, 5}.
  const pattern::neighborhood_1d nd{3, 2};
  for (index_t j = 0; j < 8; ++j) CHECK(nd.allowed(1, j, 8, 8) == (j == 1 || j == 3 || j == 5));
  // Causal masking from the options intersects.
  options opt;
  opt.causal = causal::top_left;
  CHECK(counts(pattern::neighborhood_1d{3}, 5, opt) == std::vector<index_t>{1, 2, 2, 2, 3});
}

TEST_CASE("sparse: sliding_window pattern equals options.window", "[reference][sparse]") {
  tensor q(1, 2, 6, 3, 11), k(1, 2, 6, 3, 12), v(1, 2, 6, 2, 13), o1(1, 2, 6, 2), o2(1, 2, 6, 2);
  reference::attention(sparse{pattern::sliding_window{2, 1}}, q.cv(), k.cv(), v.cv(), o1.v());
  options opt;
  opt.window = {2, 1};
  reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o2.v(), opt);
  CHECK(reftest::max_diff(o1.x, o2.x) < tol);
  // Inner sigmoid: masked keys weigh 0.
  const auto r = reference::attention(sparse{pattern::sliding_window{0, 0}, sigmoid{.bias = 0.0f}}, q.cv(), k.cv(), v.cv(),
                                      o1.v());
  CHECK(r.allowed == std::vector<index_t>(12, 1));
  double s00 = 0;  // logit of (row 0, key 0), τ = 1/sqrt(3)
  for (index_t d = 0; d < 3; ++d) s00 += q.at(0, 0, 0, d) * k.at(0, 0, 0, d) / std::sqrt(3.0);
  CHECK(r.mass[0] == Approx(1 / (1 + std::exp(-s00))).margin(tol));
  CHECK(o1.x[0] == Approx(r.mass[0] * v.x[0]).margin(tol));
}

TEST_CASE("sparse top_k keeps the k largest logits", "[reference][sparse]") {
  const index_t L = 9, K = 3;
  tensor q(1, 1, 4, 3, 21), k(1, 1, L, 3, 22), v(1, 1, L, 2, 23), o(1, 1, 4, 2), od(1, 1, 4, 2);
  reference::extras ex;
  ex.keep_weights = true;
  const auto dense = reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), od.v(), {}, ex);
  const auto r = reference::attention(sparse{pattern::top_k{K}}, q.cv(), k.cv(), v.cv(), o.v(), {}, ex);
  for (index_t i = 0; i < 4; ++i) {
    std::vector<double> s(dense.logits.begin() + i * L, dense.logits.begin() + (i + 1) * L);
    std::vector<double> sorted = s;
    std::sort(sorted.begin(), sorted.end(), std::greater<>());
    double kept = 0;
    for (index_t j = 0; j < L; ++j) {
      const bool top = s[static_cast<std::size_t>(j)] >= sorted[K - 1];
      CHECK((r.weights[static_cast<std::size_t>(i * L + j)] > 0) == top);
      if (top) kept += std::exp(s[static_cast<std::size_t>(j)]);
    }
    CHECK(r.allowed[static_cast<std::size_t>(i)] == K);
    CHECK(r.lse[static_cast<std::size_t>(i)] == Approx(std::log(kept)).margin(tol));
  }
  // k ≥ allowed keys: dense.
  reference::attention(sparse{pattern::top_k{L}}, q.cv(), k.cv(), v.cv(), o.v());
  CHECK(reftest::max_diff(o.x, od.x) < tol);
}

TEST_CASE("sparse flex_prefill block selection", "[reference][sparse]") {
  const index_t L = 8, D = 2;
  tensor q(1, 1, L, D), k(1, 1, L, D), v(1, 1, L, 1, 31), o(1, 1, L, 1), od(1, 1, L, 1);
  // Key block 1 (keys 4..7) points along the queries, block 0 away from them.
  for (index_t i = 0; i < L; ++i) q(0, 0, i, 0) = 3.0;
  for (index_t j = 0; j < L; ++j) k(0, 0, j, 0) = j < 4 ? -1.0 : 1.0;
  SECTION("gamma = 1 keeps every candidate block: dense") {
    reference::attention(sparse{pattern::flex_prefill{1.0, 4, 1}}, q.cv(), k.cv(), v.cv(), o.v());
    reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), od.v());
    CHECK(reftest::max_diff(o.x, od.x) < tol);
  }
  SECTION("small gamma keeps only the best-estimated block") {
    const auto r = reference::attention(sparse{pattern::flex_prefill{0.5, 4, 1}}, q.cv(), k.cv(), v.cv(), o.v());
    CHECK(r.allowed == std::vector<index_t>(8, 4));
    CHECK(r.first_prob[0] == 0.0);  // key 0 (block 0) dropped
  }
  SECTION("causal: the first query block has only block 0 as candidate") {
    options opt;
    opt.causal = causal::top_left;
    const auto r = reference::attention(sparse{pattern::flex_prefill{0.5, 4, 1}}, q.cv(), k.cv(), v.cv(), o.v(), opt);
    CHECK(r.allowed == std::vector<index_t>{1, 2, 3, 4, 1, 2, 3, 4});
  }
}

TEST_CASE("sparse: pattern shape checks", "[reference][sparse][validation]") {
  tensor q(1, 1, 5, 2, 1), k(1, 1, 5, 2, 2), v(1, 1, 5, 1, 3), o(1, 1, 5, 1);
  const bool layout[4] = {true, true, true, true};
  CHECK_THROWS_AS(reference::attention(sparse{pattern::block_sparse{layout, 2, 2, 2, 2}}, q.cv(), k.cv(), v.cv(), o.v()),
                  invalid_argument_error);
  CHECK_THROWS_AS(reference::attention(sparse{pattern::neighborhood_2d{2, 2, 1, 1}}, q.cv(), k.cv(), v.cv(), o.v()),
                  invalid_argument_error);
}
