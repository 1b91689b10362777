// Overflow-prone fields at their extremes (issue #19, class 1): windows, pattern
// sizes, dilations and blocks of INT64_MAX (a natural "unbounded") must give the
// result of the equivalent finite call, never wrap into "nothing visible" or index
// past a buffer. Each case checks two things:
//   - the float64 oracle at the extreme equals, exactly, the oracle of an
//     equivalent call written without extremes (so the oracle itself is sound);
//   - the kernel matches that oracle (2e-5 · max|oracle|, LSE too, NaN pattern).
// Shapes cover Lq > Lk (negative query positions), Lq < Lk, self-attention, the
// decode path (Lq · group <= 16) and the tiled path. ASan/UBSan builds run this
// file too (scripts/test.sh --sanitize), where a wrap is a UBSan report.
#include <catch2/catch.hpp>

#include <chrono>
#include <cstring>
#include <limits>
#include <tuple>

#include "oracle.hpp"

using namespace attnkit;
using attnkit_test::problem;

namespace {
// The index arithmetic under test is shared by every SIMD path: the scalar path
// and the best one here; the sanitizer build (ATTNKIT_TEST_ARCHS=best) keeps the
// best one only, which halves this file's instrumented compile time (~5 CPU-min).
#if defined(ATTNKIT_TEST_BEST_ARCH_ONLY)
using overflow_archs = std::tuple<simd::default_arch>;
#else
using overflow_archs = attnkit_test::best_archs;
#endif

constexpr double tol = 2e-5;
constexpr index_t big = std::numeric_limits<index_t>::max();

struct shape {
  index_t B, Hq, Hkv, Lq, Lk;
};
// Lq > Lk, Lq < Lk, self-attention, decode (1 and 3 rows × group 2), one row past a tile.
constexpr shape shapes[] = {{2, 4, 2, 70, 40}, {1, 4, 2, 40, 70}, {1, 2, 1, 64, 64},
                            {2, 4, 2, 1, 50},  {1, 2, 1, 3, 200}, {1, 2, 2, 33, 97}};

problem make(const shape& s, std::uint32_t seed) { return problem(s.B, s.Hq, s.Hkv, s.Lq, s.Lk, 16, 8, seed); }

/// Oracle output (and LSE when softmax-like) of one call.
template <class P>
std::pair<std::vector<double>, std::vector<double>> oracle(const P& pol, const problem& p, const options& o) {
  std::vector<double> out(p.out_size());
  auto res = reference::attention(pol, p.qv(), p.kv(), p.vv(), bhsd(out.data(), p.B, p.Hq, p.Lq, p.Dv), o);
  return {out, res.lse};
}

bool same(const std::vector<double>& a, const std::vector<double>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (!(a[i] == b[i] || (std::isnan(a[i]) && std::isnan(b[i])))) return false;
  return true;
}

/// The extreme call `pol`/`o` against the equivalent call `eq`/`eo`.
template <class Arch, class P, class Q>
void check_extreme(const P& pol, const options& o, const Q& eq, const options& eo, const char* what,
                   bool with_lse = true) {
  for (const shape& s : shapes) {
    const problem p = make(s, 41);
    INFO(what << " arch " << simd::arch_name<Arch>() << " B " << s.B << " Hq " << s.Hq << " Lq " << s.Lq << " Lk "
              << s.Lk << " causal " << static_cast<int>(o.causal));
    const auto [ref, ref_lse] = oracle(pol, p, o);
    const auto [want, want_lse] = oracle(eq, p, eo);
    CHECK(same(ref, want));
    CHECK(same(ref_lse, want_lse));
    const auto e = attnkit_test::compare_with_oracle<Arch>(pol, p, o, with_lse);
    CHECK(e.out <= tol);
    CHECK(e.lse <= tol);
    CHECK_FALSE(e.nan_mismatch);
  }
}

template <class Arch, class P, class Q>
void check_extreme(const P& pol, const Q& eq, const char* what, bool with_lse = true) {
  for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
    options o;
    o.causal = c;
    check_extreme<Arch>(pol, o, eq, o, what, with_lse);
  }
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("options.window at INT64_MAX equals an unbounded side", "[overflow][window]",
                        overflow_archs) {
  // (extreme window, equivalent window): a side >= every distance is unbounded.
  const window cases[][2] = {{{-1, big}, {-1, -1}},      {{big, -1}, {-1, -1}},   {{big, big}, {-1, -1}},
                             {{big, 0}, {-1, 0}},        {{0, big}, {0, -1}},     {{big - 1, big - 1}, {-1, -1}},
                             {{big / 2 + 1, 3}, {-1, 3}}, {{5, big / 2 + 1}, {5, -1}}};
  for (const auto& c : cases)
    for (causal cz : {causal::none, causal::top_left, causal::bottom_right}) {
      options o, eo;
      o.causal = eo.causal = cz;
      o.window = c[0];
      eo.window = c[1];
      INFO("window " << c[0].left << "," << c[0].right);
      check_extreme<TestType>(softmax{}, o, softmax{}, eo, "softmax window");
      check_extreme<TestType>(sigmoid{}, o, sigmoid{}, eo, "sigmoid window", false);
    }
}

TEMPLATE_LIST_TEST_CASE("pattern fields at INT64_MAX equal their finite equivalents", "[overflow][sparse]",
                        overflow_archs) {
  using namespace pattern;
  options br;
  br.causal = causal::bottom_right;
  // Sides, windows and blocks past every distance.
  check_extreme<TestType>(sparse{sliding_window{big, big}}, softmax{}, "sliding_window{max,max}");
  check_extreme<TestType>(sparse{sliding_window{-1, big}}, softmax{}, "sliding_window{-1,max}");
  check_extreme<TestType>(sparse{sliding_window{big, -1}}, softmax{}, "sliding_window{max,-1}");
  check_extreme<TestType>(sparse{sliding_window{big, 0}}, {}, softmax{}, br, "sliding_window{max,0}");
  check_extreme<TestType>(sparse{sliding_window{0, big}}, {}, sparse{sliding_window{0, -1}}, {}, "sliding_window{0,max}");
  check_extreme<TestType>(sparse{dilated_window{big, 1}}, softmax{}, "dilated_window{max,1}");
  check_extreme<TestType>(sparse{dilated_window{big, big}}, sparse{sliding_window{0, 0}}, "dilated_window{max,max}");
  check_extreme<TestType>(sparse{dilated_window{1, big}}, sparse{sliding_window{0, 0}}, "dilated_window{1,max}");
  check_extreme<TestType>(sparse{dilated_window{3, index_t{1} << 40}}, sparse{sliding_window{0, 0}},
                          "dilated_window{3,2^40}");
  check_extreme<TestType>(sparse{sink_window{big, big}}, {}, softmax{}, br, "sink_window{max,max}");
  check_extreme<TestType>(sparse{sink_window{0, big}}, {}, softmax{}, br, "sink_window{0,max}");
  check_extreme<TestType>(sparse{sink_window{big, 0}}, {}, softmax{}, br, "sink_window{max,0}");
  check_extreme<TestType>(sparse{power_attention{big, 1, 1}}, {}, softmax{}, br, "power_attention{max,1,1}");
  check_extreme<TestType>(sparse{power_attention{1, big, big}}, {}, softmax{}, br, "power_attention{1,max,max}");
  check_extreme<TestType>(sparse{top_k{big}}, softmax{}, "top_k{max}");
  const bool one = true;
  check_extreme<TestType>(sparse{block_sparse{&one, big, big, 1, 1}}, softmax{}, "block_sparse{max blocks}");
  check_extreme<TestType>(sparse{flex_prefill{.gamma = 0.9, .block = big}}, softmax{}, "flex_prefill{.block=max}");
  check_extreme<TestType>(sparse{flex_prefill{.gamma = 1.0, .block = big - 1, .min_budget = big}}, softmax{},
                          "flex_prefill{.block=max-1,.min_budget=max}");
}

TEMPLATE_LIST_TEST_CASE("neighbourhoods with huge kernels and dilations", "[overflow][sparse]",
                        overflow_archs) {
  using namespace pattern;
  // Queries with a position in [0, Lk) only (Lq <= Lk): a kernel past the line sees
  // the whole line; a dilation past it leaves each residue class one token.
  for (const shape& s : {shape{1, 4, 2, 40, 70}, shape{1, 2, 1, 64, 64}, shape{2, 4, 2, 1, 50}, shape{1, 2, 1, 3, 200}})
    for (causal c : {causal::none, causal::bottom_right}) {
      const problem p = make(s, 43);
      options o;
      o.causal = c;
      INFO("Lq " << s.Lq << " Lk " << s.Lk << " causal " << static_cast<int>(c));
      const std::pair<sparse<neighborhood_1d>, sparse<sliding_window>> cases[] = {
          {sparse{neighborhood_1d{big, 1}}, sparse{sliding_window{-1, -1}}},
          {sparse{neighborhood_1d{big, big}}, sparse{sliding_window{0, 0}}},
          {sparse{neighborhood_1d{3, big}}, sparse{sliding_window{0, 0}}}};
      for (int x = 0; x < 3; ++x) {
        CHECK(same(oracle(cases[x].first, p, o).first, oracle(cases[x].second, p, o).first));
        const auto e = attnkit_test::compare_with_oracle<TestType>(cases[x].first, p, o, true);
        CHECK(e.out <= tol);
        CHECK(e.lse <= tol);
      }
      // kernel = max, dilation 2: its residue class, all of it (the dilated window of
      // reach max over the same class).
      CHECK(same(oracle(sparse{neighborhood_1d{big, 2}}, p, o).first, oracle(sparse{dilated_window{big, 2}}, p, o).first));
      CHECK(attnkit_test::compare_with_oracle<TestType>(sparse{neighborhood_1d{big, 2}}, p, o, true).out <= tol);
      CHECK(attnkit_test::compare_with_oracle<TestType>(sparse{dilated_window{big, 2}}, p, o, true).out <= tol);
    }
  // 2-D grid: kernels and dilation past the grid.
  const problem g(1, 2, 1, 48, 48, 16, 8, 44);
  const auto all = oracle(softmax{}, g, {}).first;
  CHECK(same(oracle(sparse{neighborhood_2d{6, 8, big, big, 1}}, g, {}).first, all));
  CHECK(same(oracle(sparse{neighborhood_2d{6, 8, 3, 3, big}}, g, {}).first, oracle(sparse{sliding_window{0, 0}}, g, {}).first));
  CHECK(attnkit_test::compare_with_oracle<TestType>(sparse{neighborhood_2d{6, 8, big, big, 1}}, g, {}, true).out <= tol);
  CHECK(attnkit_test::compare_with_oracle<TestType>(sparse{neighborhood_2d{6, 8, 3, 3, big}}, g, {}, true).out <= tol);
  CHECK(attnkit_test::compare_with_oracle<TestType>(sparse{neighborhood_2d{6, 8, big, 2, big}}, g, {}, true).out <= tol);
}

TEMPLATE_LIST_TEST_CASE("stochastic permutation with a window of INT64_MAX", "[overflow][permutation]",
                        overflow_archs) {
  // Symmetric and circular windows past n see every key; a one-sided window past n
  // sees every rank predecessor (0 <= r(i) − r(j)), as the window n − 1 does; the
  // finite equivalents are the smallest windows that cover every rank.
  for (window_kind kind : {window_kind::symmetric, window_kind::one_sided, window_kind::circular})
    for (index_t w : {big, big - 1, big / 2 + 1}) {
      INFO("kind " << static_cast<int>(kind) << " window " << w);
      const stochastic_permutation pol{.window = w, .seed = 3, .kind = kind};
      for (index_t n : {1, 5, 64, 97}) {
        const problem p(2, 4, 2, n, n, 16, 8, 45);
        stochastic_permutation finite = pol;
        finite.window = kind == window_kind::one_sided ? n - 1 : 2 * n;
        for (causal c : {causal::none, causal::bottom_right}) {
          options o;
          o.causal = c;
          const auto ref = oracle(pol, p, o).first;
          CHECK(same(ref, oracle(finite, p, o).first));
          if (kind != window_kind::one_sided) CHECK(same(ref, oracle(softmax{}, p, o).first));
          const auto e = attnkit_test::compare_with_oracle<TestType>(pol, p, o, true);
          CHECK(e.out <= tol);
          CHECK(e.lse <= tol);
        }
      }
    }
  // The coverage analysis (it looped over window + 1 candidate ranks per token).
  const auto sym = permutation_coverage(50, big, 1, 7, window_kind::symmetric);
  REQUIRE(sym.fraction.size() == 1);
  CHECK(sym.fraction[0] == 1.0);
  CHECK(sym.depth_to_full == 1);
  const auto one = permutation_coverage(50, big, 2, 7, window_kind::one_sided);
  const auto one_finite = permutation_coverage(50, 49, 2, 7, window_kind::one_sided);
  CHECK(one.fraction == one_finite.fraction);
}

TEST_CASE("a huge valid dilation runs in O(n), not O(dilation)", "[overflow][sparse]") {
  // dilation 2^40 (and INT64_MAX) on 8 tokens: each residue class holds one token,
  // so every query sees itself only. The residue order used to loop over all d
  // residues (hours); the bound below is generous for a loaded machine.
  const problem p(1, 2, 1, 8, 8, 16, 8, 46);
  for (index_t d : {index_t{1} << 40, big}) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto e1 = attnkit_test::compare_with_oracle<simd::default_arch>(sparse{pattern::dilated_window{2, d}}, p, {}, true);
    const auto e2 = attnkit_test::compare_with_oracle<simd::default_arch>(sparse{pattern::neighborhood_1d{3, d}}, p, {}, true);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    CHECK(e1.out <= tol);
    CHECK(e2.out <= tol);
    CHECK(secs < 30.0);
    CHECK(same(oracle(sparse{pattern::dilated_window{2, d}}, p, {}).first,
               oracle(sparse{pattern::sliding_window{0, 0}}, p, {}).first));
  }
}

TEST_CASE("checked arithmetic saturates and reports overflow", "[overflow]") {
  using namespace attnkit::detail;
  constexpr index_t lo = std::numeric_limits<index_t>::min();
  STATIC_REQUIRE(sat_add(big, 1) == big);
  STATIC_REQUIRE(sat_add(lo, -1) == lo);
  STATIC_REQUIRE(sat_sub(-2, big) == lo);
  STATIC_REQUIRE(sat_sub(1, lo) == big);
  STATIC_REQUIRE(sat_mul(big, 2) == big);
  STATIC_REQUIRE(sat_mul(big, -2) == lo);
  STATIC_REQUIRE(sat_mul(-3, 4) == -12);
  STATIC_REQUIRE(ceil_div(7, big) == 1);
  STATIC_REQUIRE(ceil_div(big, big) == 1);
  STATIC_REQUIRE(ceil_div(0, 5) == 0);
  index_t r = 0;
  CHECK_FALSE(checked_mul(7, 7905747460161236412, r));
  CHECK(checked_mul(6, 6, r));
  CHECK(r == 36);
  // View helpers saturate instead of overflowing; validation then rejects the view.
  const auto v = bhsd(static_cast<const float*>(nullptr), 1, 2, index_t{1} << 62, 8);
  CHECK(v.stride[0] == big);
}
