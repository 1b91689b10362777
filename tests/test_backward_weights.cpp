// The backward kernels of sigmoid and user weight functions (normalization none and
// sum, through their `derivative`) vs the float64 oracle, with every option: the
// element passes differ per arch, so sigmoid and an ℓ1-normalised user function run
// on every compiled arch. out and lse come from the forward oracle (compare_o), so
// this file compiles no forward kernel.
// Tolerance (backward_kernel.hpp): max |kernel − oracle| ≤ 1e-4 · max |oracle| per tensor.
#include "backward_kernel.hpp"


using namespace attnkit;
using bwdk::layout;
using bwdk::problem;

namespace {

/// ReLU attention relu(s)/Lk, rows not normalised (Wortsman et al. 2023).
struct relu_attention {
  using family = attnkit::family::quadratic;
  static constexpr auto normalization = attnkit::normalization::none;
  struct params {
    double inv_len;
  };
  params resolve(const weight_context& c) const { return {c.key_length > 0 ? 1.0 / double(c.key_length) : 0.0}; }
  template <class V>
  V weight(V s, const params& p) const {
    return math::max(s, V(0)) * V(p.inv_len);
  }
  template <class V>
  V derivative(V s, const params& p) const {
    return math::select(s > V(0), V(p.inv_len), V(0));
  }
};

/// softplus(c·s), c = log(max(Lk, 2)), ℓ1-normalised rows.
struct length_scaled_softplus {
  using family = attnkit::family::quadratic;
  static constexpr auto normalization = attnkit::normalization::sum;
  struct params {
    double scale;
  };
  params resolve(const weight_context& c) const { return {std::log(double(std::max<index_t>(c.key_length, 2)))}; }
  template <class V>
  V weight(V s, const params& p) const {
    return math::softplus(s * V(p.scale));
  }
  template <class V>
  V derivative(V s, const params& p) const {
    return V(p.scale) * math::sigmoid(s * V(p.scale));
  }
};

/// ReLU², ℓ1-normalised, no parameters.
struct relu_squared_sum : weight_base {
  static constexpr auto normalization = attnkit::normalization::sum;
  template <class V>
  V weight(V s) const {
    const V r = math::max(s, V(0));
    return r * r;
  }
  template <class V>
  V derivative(V s) const {
    return V(2) * math::max(s, V(0));
  }
};

template <class Arch, class P>
void weight_options(const P& pol, std::uint32_t seed) {
  const problem p(2, 4, 2, 53, 77, 24, 16, seed);
  bwdk::check(bwdk::compare_o<Arch>(pol, p, {}), "plain");
  for (causal c : {causal::top_left, causal::bottom_right}) {
    options o;
    o.causal = c;
    o.window = {20, 2};
    bwdk::check(bwdk::compare_o<Arch>(pol, p, o), "causal + window");
  }
  const problem tall(1, 2, 1, 90, 30, 16, 16, seed + 1, layout::bshd);
  options br;
  br.causal = causal::bottom_right;
  bwdk::check(bwdk::compare_o<Arch>(pol, tall, br), "Lq > Lk bottom-right (empty rows), BSHD");
  const std::int64_t lens[2] = {0, 40};
  const auto bias = attnkit_test::randn(static_cast<std::size_t>(p.Hq * p.Lq * p.Lk), seed + 2);
  const float slopes[4] = {0.3f, 0.2f, 0.1f, 0.05f};
  options all;
  all.key_lengths = lens;
  all.bias = strided(bias.data(), {1, p.Hq, p.Lq, p.Lk}, {0, p.Lq * p.Lk, p.Lk, 1});
  all.alibi_slopes = slopes;
  all.softcap = 2.5f;
  bwdk::check(bwdk::compare_o<Arch>(pol, p, all), "key lengths + bias (d bias) + ALiBi + softcap");
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("sigmoid and user weight functions: backward matches the oracle", "[backward][weight]",
                        attnkit_test::archs) {
  SECTION("sigmoid (none)") { weight_options<TestType>(sigmoid{}, 100); }
  SECTION("sigmoid with an explicit bias") { weight_options<TestType>(sigmoid{.bias = 0.5f}, 110); }
  SECTION("length-scaled softplus (sum, user)") { weight_options<TestType>(length_scaled_softplus{}, 130); }
}

TEST_CASE("ReLU attention (none, user) backward matches the oracle", "[backward][weight]") {
  weight_options<simd::default_arch>(relu_attention{}, 120);
}

TEST_CASE("a sum-normalised row whose weights sum to 0 gets gradient 0", "[backward][weight]") {
  problem p(1, 1, 1, 9, 20, 8, 8, 150);
  for (auto& x : p.k) x = -std::abs(x) - 0.1f;
  for (index_t d = 0; d < 8; ++d) p.q[static_cast<std::size_t>(d)] = 1.0f;  // row 0: s < 0 everywhere
  const auto r = bwdk::compare_o<simd::default_arch>(relu_squared_sum{}, p, {});
  bwdk::check(r, "relu^2 with a zero-mass row");
  for (index_t d = 0; d < 8; ++d) CHECK(r.gq[static_cast<std::size_t>(d)] == 0.0f);
}

