// Sparse patterns and stochastic permutation vs the float64 oracle on every
// compiled arch. Tolerance: max|out − oracle| ≤ 2e-5·max|oracle| (LSE too).
#include <catch2/catch.hpp>

#include "oracle.hpp"

using namespace attnkit;
using attnkit_test::compare_with_oracle;
using attnkit_test::problem;

namespace {
constexpr double tol = 2e-5;

template <class Arch, class P>
void check(const P& pol, const problem& p, const options& o, const char* what) {
  const auto e = compare_with_oracle<Arch>(pol, p, o, true);
  INFO(what << " arch " << simd::arch_name<Arch>() << " causal " << static_cast<int>(o.causal) << " Lq " << p.Lq
            << " Lk " << p.Lk);
  CHECK(e.out <= tol);
  CHECK(e.lse <= tol);
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("static and block-selection patterns match the oracle", "[sparse][oracle]",
                        attnkit_test::archs) {
  const bool small = simd::is_scalar_v<TestType>;
  const index_t Lq = small ? 90 : 260, Lk = small ? 100 : 300;
  problem p(2, 4, 2, Lq, Lk, 40, 24, 17);
  std::vector<char> layout(5 * 6);
  for (std::size_t i = 0; i < layout.size(); ++i) layout[i] = (i * 7) % 3 != 0;
  for (causal c : {causal::none, causal::bottom_right}) {
    options o;
    o.causal = c;
    check<TestType>(sparse{pattern::sliding_window{37, 5}}, p, o, "sliding window");
    check<TestType>(sparse{pattern::dilated_window{9, 3}}, p, o, "dilated window");
    check<TestType>(sparse{pattern::sink_window{4, 50}}, p, o, "sink window");
    check<TestType>(sparse{pattern::block_sparse{reinterpret_cast<const bool*>(layout.data()), 64, 64, 5, 6}}, p, o,
                    "block sparse");
    check<TestType>(sparse{pattern::neighborhood_1d{13, 2}}, p, o, "neighbourhood 1-D");
    check<TestType>(sparse{pattern::power_attention{16, 1, 1}}, p, o, "PowerAttention");
    check<TestType>(sparse{pattern::flex_prefill{0.9, 32, 2}}, p, o, "FlexPrefill");
    const auto e = compare_with_oracle<TestType>(sparse{pattern::sliding_window{37, 5}, sigmoid{}}, p, o);
    CHECK(e.out <= tol);
  }
  problem grid(1, 2, 1, 300, 300, 16, 16, 18);
  check<TestType>(sparse{pattern::neighborhood_2d{15, 20, 5, 7, 1}}, grid, {}, "neighbourhood 2-D");
  const float slopes[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
  options ab;
  ab.alibi_slopes = slopes;
  ab.softcap = 4.0f;
  check<TestType>(sparse{pattern::sink_window{4, 30}}, p, ab, "sink window + ALiBi + softcap");
}

// Self-attention on a 2-D grid with dilation 1 and no positional option gathers each
// grid row's band of keys column by column (kernel/sparse/pattern_keys.hpp,
// gathered_keys): every query's keys become one run. Kernels odd and even, clipped
// at the borders or larger than the grid, a one-column grid, GQA, softcap, the
// sigmoid inner policy, the entropy observer (key 0 sits inside a gathered block);
// dilation 2 and a causal mask take the position-space path.
TEMPLATE_LIST_TEST_CASE("2-D neighbourhood (gathered grid rows) matches the oracle", "[sparse][oracle]",
                        attnkit_test::archs) {
  struct grid_case {
    index_t h, w, kh, kw, d;
  };
  const grid_case cases[] = {{15, 20, 5, 7, 1}, {7, 13, 4, 6, 1}, {5, 6, 9, 9, 1},
                             {11, 1, 3, 3, 1},  {9, 17, 1, 1, 1}, {12, 10, 5, 3, 2}};
  options capped;
  capped.softcap = 5.0f;
  options causal_opt;
  causal_opt.causal = causal::bottom_right;
  for (const grid_case& g : cases) {
    const index_t L = g.h * g.w;
    problem p(2, 4, 2, L, L, 40, 24, 23);
    const pattern::neighborhood_2d na{g.h, g.w, g.kh, g.kw, g.d};
    INFO("grid " << g.h << "x" << g.w << " kernel " << g.kh << "x" << g.kw << " dilation " << g.d);
    for (const options& o : {options{}, capped, causal_opt}) check<TestType>(sparse{na}, p, o, "neighbourhood 2-D");
    const auto e = compare_with_oracle<TestType>(sparse{na, sigmoid{}}, p, {});
    CHECK(e.out <= tol);
    // Same shapes, other K/V bytes: what a worker packed in the previous call (same
    // heads, same key lists) must not be reused.
    check<TestType>(sparse{na}, problem(2, 4, 2, L, L, 40, 24, 24), {}, "neighbourhood 2-D, next call");
  }
}

// Self-attention with dilation > 1 and no positional option runs in residue order
// (kernel/sparse/pattern_keys.hpp, rank_keys): queries and keys of one residue class side by
// side, a plain band on ranks. Odd lengths (groups of unequal size), groups smaller
// than the kernel, GQA, softcap (position-free), the sigmoid inner policy; with a
// causal mask the same patterns take the position-space path (checked above too).
TEMPLATE_LIST_TEST_CASE("dilated patterns in residue order match the oracle", "[sparse][oracle]",
                        attnkit_test::archs) {
  const index_t L = simd::is_scalar_v<TestType> ? 97 : 301;
  problem p(2, 4, 2, L, L, 40, 24, 21);
  options capped;
  capped.softcap = 5.0f;
  for (const options& o : {options{}, capped}) {
    check<TestType>(sparse{pattern::dilated_window{9, 3}}, p, o, "dilated window, d = 3");
    check<TestType>(sparse{pattern::dilated_window{40, 2}}, p, o, "dilated window, d = 2");
    check<TestType>(sparse{pattern::dilated_window{3, 150}}, p, o, "dilated window, d = 150 (groups of 2 or 3)");
    check<TestType>(sparse{pattern::neighborhood_1d{13, 2}}, p, o, "neighbourhood 1-D, d = 2");
    check<TestType>(sparse{pattern::neighborhood_1d{64, 4}}, p, o, "neighbourhood 1-D, kernel 64, d = 4");
    check<TestType>(sparse{pattern::neighborhood_1d{8, 7}}, p, o, "neighbourhood 1-D, even kernel, d = 7");
    check<TestType>(sparse{pattern::neighborhood_1d{50, 9}}, p, o, "neighbourhood 1-D, groups below the kernel");
    const auto e = compare_with_oracle<TestType>(sparse{pattern::neighborhood_1d{21, 3}, sigmoid{}}, p, o);
    CHECK(e.out <= tol);
  }
  options c;
  c.causal = causal::top_left;
  check<TestType>(sparse{pattern::neighborhood_1d{13, 2}}, p, c, "neighbourhood 1-D, d = 2, causal (positions)");
}

TEMPLATE_LIST_TEST_CASE("stochastic permutation matches the oracle", "[permutation][oracle]", attnkit_test::archs) {
  const index_t L = simd::is_scalar_v<TestType> ? 60 : 300;
  problem p(2, 4, 2, L, L, 40, 24, 19);
  const auto bias = attnkit_test::randn(static_cast<std::size_t>(L * L), 20);
  const float slopes[4] = {0.1f, 0.05f, 0.02f, 0.01f};
  for (auto kind : {window_kind::symmetric, window_kind::one_sided, window_kind::circular})
    for (bool shared : {false, true})
      for (causal c : {causal::none, causal::top_left}) {
        stochastic_permutation pol{.window = 32, .seed = 7, .layer = 2, .kind = kind, .share_across_heads = shared};
        options o;
        o.causal = c;
        check<TestType>(pol, p, o, "permutation");
        o.bias = bhsd(bias.data(), 1, 1, L, L);
        o.alibi_slopes = slopes;
        check<TestType>(pol, p, o, "permutation + bias + ALiBi (original indices)");
      }
}

TEST_CASE("gated permutation + sliding window matches the oracle", "[permutation][oracle]") {
  problem p(2, 4, 2, 200, 200, 16, 8, 23);
  const auto g1 = attnkit_test::randn(4 * 8, 24), g2 = attnkit_test::randn(4 * 8, 25);
  const auto G1 = strided(g1.data(), {1, 4, 1, 8}, {0, 8, 0, 1}), G2 = strided(g2.data(), {1, 4, 1, 8}, {0, 8, 0, 1});
  std::vector<float> out(p.out_size());
  std::vector<double> ref(p.out_size());
  stochastic_permutation pol{.window = 16, .seed = 3};
  options o;
  o.causal = causal::top_left;
  attention_gated(pol, G1, G2, p.qv(), p.kv(), p.vv(), p.ov(out), o);
  reference::gated(pol, G1, G2, p.qv(), p.kv(), p.vv(), bhsd(ref.data(), 2, 4, 200, 8), o);
  double err = 0, mx = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    err = std::max(err, std::abs(out[i] - ref[i]));
    mx = std::max(mx, std::abs(ref[i]));
  }
  CHECK(err <= tol * mx);
}

TEST_CASE("permutation coverage grows like log_w n (non-causal)", "[permutation]") {
  const index_t n = 4096, w = 16;
  const auto rep = permutation_coverage(n, w, 8, 1);
  const double bound = std::ceil(std::log(static_cast<double>(n)) / std::log(static_cast<double>(w)));  // 3
  INFO("depth to full coverage " << rep.depth_to_full << ", ceil(log_w n) = " << bound);
  REQUIRE(rep.depth_to_full > 0);
  CHECK(rep.depth_to_full <= 2 * bound);
  for (std::size_t l = 1; l < rep.fraction.size(); ++l) CHECK(rep.fraction[l] >= rep.fraction[l - 1]);
}
