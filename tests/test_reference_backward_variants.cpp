// The float64 backward oracle beyond softmax: sigmoid and user weight functions
// (normalization none and sum, through their `derivative`), every sparse pattern
// (static ones through their allowed set; top_k and flex_prefill with the selection
// held constant) and stochastic permutation — against central finite differences
// of the forward oracle (backward_util.hpp: step 2^-17, |analytic − FD| ≤
// 1e-7·(1 + |analytic|) per element), plus exact zeros where nothing is visible.
#include "backward_util.hpp"

#include <memory>

using namespace attnkit;
using bwdtest::bias_buffer;
using bwdtest::check_fd;
using bwdtest::check_hidden_zero;
using bwdtest::layout;
using bwdtest::problem;

namespace {

/// ReLU attention relu(s)/Lk, unnormalised (Wortsman et al. 2023), defined here.
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

/// softplus(c·s) with c = log(max(Lk, 2)), ℓ1-normalised.
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

problem standard(std::uint64_t seed, layout l = layout::bhsd) { return problem(2, 4, 2, 7, 11, 5, 3, seed, l); }

/// Every option a quadratic weight function takes, one after another, then together.
template <class P>
void all_options(const P& pol, std::uint64_t seed) {
  const auto r = bwdtest::run(pol);
  problem p = standard(seed);
  check_fd(r, p, {}, "plain");
  for (causal c : {causal::top_left, causal::bottom_right}) {
    options o;
    o.causal = c;
    check_fd(r, p, o, "causal");
    o.window = {3, 1};
    check_fd(r, p, o, "causal + window");
  }
  problem mirror(2, 4, 2, 11, 7, 5, 3, seed + 1);
  options br;
  br.causal = causal::bottom_right;
  check_fd(r, mirror, br, "Lq > Lk, bottom-right (rows with no key)");
  CHECK(check_hidden_zero(r, mirror, br) == mirror.B * mirror.Hq * 4);
  const std::int64_t lens[2] = {0, 7};
  options kl;
  kl.key_lengths = lens;
  check_fd(r, p, kl, "key lengths {0, 7}");
  CHECK(check_hidden_zero(r, p, kl) >= p.Hq * p.Lq + p.Hkv * (p.Lk + p.Lk - 7));
  bias_buffer bias({1, p.Hq, p.Lq, p.Lk}, seed + 2, 1.0);
  options el;
  el.alibi_slopes = p.alibi;
  el.softcap = 1.5f;
  check_fd(r, p, el, "bias + ALiBi + softcap", &bias);
  options d;
  d.dropout = {0.25f, 77, 3};
  d.causal = causal::top_left;
  check_fd(r, p, d, "dropout + causal");
  problem bs = standard(seed + 3, layout::bshd);
  options all;
  all.causal = causal::bottom_right;
  all.window = {5, 0};
  all.key_lengths = lens;
  all.alibi_slopes = bs.alibi;
  all.dropout = {0.1f, 5, 0};
  check_fd(r, bs, all, "BSHD + every option", &bias);
}

}  // namespace

TEST_CASE("backward oracle: sigmoid and user weight functions through `derivative`", "[reference][backward][weight]") {
  SECTION("sigmoid (none)") { all_options(sigmoid{}, 100); }
  SECTION("sigmoid with an explicit bias") { all_options(sigmoid{.bias = 0.5f}, 110); }
  SECTION("relu / Lk (none, user)") { all_options(relu_attention{}, 120); }
  SECTION("relu^2 (sum, user)") { all_options(relu_squared_sum{}, 130); }
  SECTION("length-scaled softplus (sum, user)") { all_options(length_scaled_softplus{}, 140); }
}

TEST_CASE("backward oracle: a sum-normalised row whose weights sum to 0 has gradient 0", "[reference][backward][weight]") {
  // relu² of all-negative logits: the row outputs the masked-row fill, a constant.
  problem p(1, 1, 1, 3, 4, 2, 2, 150);
  for (auto& x : p.k.x) x = -std::abs(x) - 0.1;
  for (index_t d = 0; d < 2; ++d) p.q.x[static_cast<std::size_t>(d)] = 1.0;  // row 0: q > 0, k < 0 → s < 0
  bwdtest::tensor4 dq(p.q.e, p.lay, 0, 0), dk(p.k.e, p.lay, 0, 0), dv(p.v.e, p.lay, 0, 0);
  bwdtest::run(relu_squared_sum{}).backward(p, {}, {}, dq, dk, dv);
  CHECK(dq.x[0] == 0.0);
  CHECK(dq.x[1] == 0.0);
  check_fd(bwdtest::run(relu_squared_sum{}), p, {}, "relu^2 with a zero-mass row");
}

TEST_CASE("backward oracle: static sparse patterns", "[reference][backward][sparse]") {
  problem p = standard(200);
  const std::unique_ptr<bool[]> layout_bits(new bool[9]{true, false, true, true, true, false, false, true, true});
  auto each = [&](const auto& pol, const char* name) {
    const auto r = bwdtest::run(pol);
    INFO(name);
    check_fd(r, p, {}, name);
    options c;
    c.causal = causal::bottom_right;
    check_fd(r, p, c, name);
    check_hidden_zero(r, p, c);  // its CHECKs: exact zeros wherever the pattern hides a row or key
  };
  each(sparse{pattern::sliding_window{2, 1}}, "sliding_window");
  each(sparse{pattern::dilated_window{2, 2}}, "dilated_window");
  each(sparse{pattern::sink_window{1, 3}}, "sink_window");
  each(sparse{pattern::block_sparse{layout_bits.get(), 3, 4, 3, 3}}, "block_sparse");
  each(sparse{pattern::neighborhood_1d{3, 2}}, "neighborhood_1d");
  each(sparse{pattern::power_attention{2, 1, 1}}, "power_attention");
  each(sparse{pattern::sliding_window{3, 0}, sigmoid{}}, "sliding_window around sigmoid");
  each(sparse{pattern::neighborhood_1d{5, 1}, relu_squared_sum{}}, "neighborhood around relu^2");
  problem grid(2, 4, 2, 7, 12, 5, 3, 201, layout::bshd);  // Lk = 3 × 4
  const auto r2 = bwdtest::run(sparse{pattern::neighborhood_2d{3, 4, 3, 3, 1}});
  check_fd(r2, grid, {}, "neighborhood_2d 3x4, BSHD");
  const std::int64_t lens[2] = {5, 12};
  options kl;
  kl.key_lengths = lens;
  kl.sinks = grid.sinks;
  check_fd(bwdtest::run(sparse{pattern::sliding_window{2, 2}}), grid, kl, "sliding_window + key lengths + sinks");
  CHECK(check_hidden_zero(bwdtest::run(sparse{pattern::sink_window{1, 2}}), grid, kl) > 0);
}

TEST_CASE("backward oracle: data-dependent selections are constants", "[reference][backward][sparse]") {
  problem p = standard(300);
  for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
    options o;
    o.causal = c;
    check_fd(bwdtest::run(sparse{pattern::top_k{4}}), p, o, "top_k 4");
    check_fd(bwdtest::run(sparse{pattern::top_k{3}, sigmoid{}}), p, o, "top_k 3 around sigmoid");
    check_fd(bwdtest::run(sparse{pattern::flex_prefill{0.6, 3, 1}}), p, o, "flex_prefill gamma 0.6, block 3");
  }
  // The selection is the forward's: keys top_k drops get exactly 0 from that row.
  problem one(1, 1, 1, 1, 11, 5, 3, 301);
  const auto r = bwdtest::run(sparse{pattern::top_k{2}});
  CHECK(check_hidden_zero(r, one, {}) == 9);
}

TEST_CASE("backward oracle: stochastic permutation (permutations constant)", "[reference][backward][permutation]") {
  problem p(2, 4, 2, 9, 9, 5, 3, 400);
  for (window_kind kind : {window_kind::symmetric, window_kind::one_sided, window_kind::circular}) {
    stochastic_permutation pol;
    pol.window = 4;
    pol.seed = 12;
    pol.kind = kind;
    check_fd(bwdtest::run(pol), p, {}, "permutation window 4");
    options c;
    c.causal = causal::top_left;
    c.sinks = p.sinks;
    check_fd(bwdtest::run(pol), p, c, "permutation + causal + sinks");
    pol.share_across_heads = true;
    options d;
    d.dropout = {0.2f, 3, 1};
    check_fd(bwdtest::run(pol), p, d, "permutation shared across heads + dropout");
  }
}
