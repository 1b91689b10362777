// The entropy observer on kernel calls against the float64 reference oracle
// (attnkit/reference): per-row H, Ĥ, LSE, n_i, first-token / top-k mass, and the
// per-head statistics (reference::statistics ⇔ entropy_stats::pooled_heads), plus
// the regulariser's row gradient against reference::entropy_gradient.
//
// Convention differences, converted here (see observe/entropy.hpp):
//  * sinks: the oracle's H is the entropy of the key distribution renormalised
//    without the sink; the observer's H includes the sink as a category. Grouping
//    rule: H_obs = M·H_ref − M log M − p_s log p_s (M = mass = 1 − p_s), and
//    Ĥ_obs = H_obs / log(n + 1).
//  * empty rows (n_i = 0): oracle 0, observer NaN; both leave them out of the stats.
//  * sigmoid first-token / top-k mass: the oracle has them, the observer reports NaN.
// Tolerances as in test_observe_entropy.cpp: |ΔH| ≤ 1e-4·max(1, log n), |ΔĤ| ≤ 1e-4,
// |Δlse| ≤ 1e-4·(1+|lse|), probabilities 1e-4; head means 1e-4.
#include <catch2/catch.hpp>

#include <attnkit/observe/entropy.hpp>
#include <attnkit/observe/regularizer.hpp>
#include <attnkit/reference/reference.hpp>

#include <cmath>
#include <vector>

#include "support.hpp"

using namespace attnkit;
using attnkit_test::problem;

namespace {

void compare(const entropy_stats& st, const reference::result& ref, bool softmax_family, bool sinks) {
  REQUIRE(st.complete());
  REQUIRE(static_cast<index_t>(st.entropy.size()) == ref.rows());
  for (index_t r = 0; r < ref.rows(); ++r) {
    const auto u = static_cast<std::size_t>(r);
    const index_t n = ref.allowed[u];
    INFO("row " << r << " n " << n);
    REQUIRE(st.allowed[u] == n);
    if (n == 0) {
      CHECK(std::isnan(st.entropy[u]));
      continue;
    }
    double H = ref.entropy[u], Hn = ref.norm_entropy[u];
    if (sinks) {
      const double M = ref.mass[u], ps = ref.sink_prob[u];
      H = M * H - (M > 0 ? M * std::log(M) : 0.0) - (ps > 0 ? ps * std::log(ps) : 0.0);
      Hn = H / std::log(static_cast<double>(n + 1));
    }
    CHECK(std::abs(st.entropy[u] - H) <= 1e-4 * std::max(1.0, std::log(static_cast<double>(n))));
    CHECK(std::abs(st.norm_entropy[u] - Hn) <= 1e-4);
    CHECK(std::abs(st.mass[u] - ref.mass[u]) <= 1e-4 * std::max(1.0, ref.mass[u]));
    if (softmax_family) {
      CHECK(std::abs(st.lse[u] - ref.lse[u]) <= 1e-4 * (1 + std::abs(ref.lse[u])));
      CHECK(std::abs(st.first_prob[u] - ref.first_prob[u]) <= 1e-4);
      if (!ref.topk_mass.empty()) CHECK(std::abs(st.topk_mass[u] - ref.topk_mass[u]) <= 1e-4);
    } else {
      CHECK(std::abs(st.lse[u] - std::log(ref.mass[u])) <= 1e-4 * (1 + std::abs(st.lse[u])));
    }
  }
}

}  // namespace

TEST_CASE("entropy observer vs reference oracle: softmax rows and head statistics", "[observe][reference]") {
  struct case_t {
    const char* name;
    index_t B, Hq, Hkv, Lq, Lk, D;
    causal c;
    window w;
    bool keylen;
  };
  const case_t cases[] = {
      {"odd shapes", 2, 4, 2, 67, 93, 40, causal::none, {}, false},
      {"top_left", 1, 2, 1, 50, 120, 40, causal::top_left, {}, false},
      {"bottom_right, Lq > Lk", 1, 2, 2, 80, 50, 40, causal::bottom_right, {}, false},
      {"window + key_lengths (one batch empty)", 2, 2, 1, 40, 90, 40, causal::none, {9, 2}, true},
      {"decode, 1500 keys", 2, 8, 2, 1, 1500, 40, causal::bottom_right, {}, false},
      {"2300 keys: several chunks and L2 spans per strip", 1, 2, 1, 40, 2300, 64, causal::bottom_right, {}, false},
  };
  for (const case_t& c : cases) {
    DYNAMIC_SECTION(c.name) {
      problem p(c.B, c.Hq, c.Hkv, c.Lq, c.Lk, c.D, c.D, 77, 1.5f);
      std::vector<float> out(p.out_size());
      std::vector<double> ref_out(p.out_size());
      const std::vector<std::int64_t> kl{c.Lk, 0};
      options o;
      o.causal = c.c;
      o.window = c.w;
      if (c.keylen) o.key_lengths = kl;
      entropy_stats st({.top_k = 6});
      attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o, observe(st));
      const auto ref = reference::attention(softmax{}, p.qv(), p.kv(), p.vv(),
                                            bhsd(ref_out.data(), p.B, p.Hq, p.Lq, p.Dv), o, {.top_k = 6});
      compare(st, ref, true, false);
      // Per-head statistics (pooled over batches), same thresholds.
      const auto rs = reference::statistics(ref, {.sink_eps = 0.3, .collapse_below = 0.1, .overload_above = 0.8});
      REQUIRE(rs.heads.size() == st.pooled_heads.size());
      for (std::size_t h = 0; h < rs.heads.size(); ++h) {
        const auto& a = st.pooled_heads[h];
        const auto& b = rs.heads[h];
        INFO("head " << h);
        CHECK(a.rows == b.rows);
        CHECK(a.norm_rows == b.norm_rows);
        CHECK(std::abs(a.entropy_mean - b.mean_entropy) <= 1e-4);
        CHECK(std::abs(a.entropy_min - b.min_entropy) <= 1e-4);
        CHECK(std::abs(a.entropy_max - b.max_entropy) <= 1e-4);
        CHECK(std::abs(a.norm_entropy_mean - b.mean_norm_entropy) <= 1e-4);
        CHECK(std::abs(a.norm_entropy_min - b.min_norm_entropy) <= 1e-4);
        CHECK(std::abs(a.norm_entropy_max - b.max_norm_entropy) <= 1e-4);
        CHECK(std::abs(a.sink_mass - b.sink_mass) <= 1e-4);
        CHECK(std::abs(a.topk_mass - b.topk_mass) <= 1e-4);
        // Flags and rates: equal unless a value sits within tolerance of its threshold.
        if (std::abs(b.mean_norm_entropy - 0.1) > 1e-4) CHECK(a.collapsed == b.collapse);
        if (std::abs(b.mean_norm_entropy - 0.8) > 1e-4) CHECK(a.overloaded == b.overload);
        CHECK(std::abs(a.sink_rate - b.sink_row_rate) <= 2.0 / std::max<index_t>(1, b.rows));
      }
      CHECK(std::abs(st.spread - rs.norm_entropy_spread) <= 1e-4);
    }
  }
}

TEST_CASE("entropy observer vs reference oracle: reordered and gathered patterns", "[observe][reference]") {
  // Self-attention with dilation > 1 runs on ranks in residue order (token 0 is
  // rank 0): rows, n_i, first-token and top-k mass must still be the tokens' own.
  problem p(1, 4, 2, 203, 203, 40, 40, 78, 1.5f);
  const auto run = [&](const auto& pol) {
    std::vector<float> out(p.out_size());
    std::vector<double> ref_out(p.out_size());
    entropy_stats st({.top_k = 6});
    attention(pol, p.qv(), p.kv(), p.vv(), p.ov(out), {}, observe(st));
    const auto ref = reference::attention(pol, p.qv(), p.kv(), p.vv(), bhsd(ref_out.data(), p.B, p.Hq, p.Lq, p.Dv),
                                          {}, {.top_k = 6});
    compare(st, ref, true, false);
  };
  SECTION("dilated window") { run(sparse{pattern::dilated_window{9, 3}}); }
  SECTION("neighbourhood 1-D") { run(sparse{pattern::neighborhood_1d{13, 4}}); }
  // 7 × 29 = 203 tokens: grid rows gather their bands, key 0 sits inside the first
  // rows' gathered blocks (first-token mass from the right column).
  SECTION("neighbourhood 2-D (gathered)") { run(sparse{pattern::neighborhood_2d{7, 29, 3, 5, 1}}); }
}

TEST_CASE("entropy observer vs reference oracle: sinks and sigmoid", "[observe][reference]") {
  for (index_t Lq : {index_t{2}, index_t{45}}) {  // decode and quadratic
    problem p(1, 4, 2, Lq, 700, 40, 40, 91);
    std::vector<float> out(p.out_size());
    std::vector<double> ref_out(p.out_size());
    const std::vector<float> sinks{-1.0f, 0.0f, 2.5f, 6.0f};
    options o;
    o.causal = causal::bottom_right;
    o.sinks = sinks;
    INFO("Lq " << Lq);
    {
      entropy_stats st({.top_k = 3});
      attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o, observe(st));
      const auto ref = reference::attention(softmax{}, p.qv(), p.kv(), p.vv(),
                                            bhsd(ref_out.data(), p.B, p.Hq, p.Lq, p.Dv), o, {.top_k = 3});
      compare(st, ref, true, true);
    }
    o.sinks = {};
    {
      entropy_stats st;
      attention(sigmoid{}, p.qv(), p.kv(), p.vv(), p.ov(out), o, observe(st));
      const auto ref =
          reference::attention(sigmoid{}, p.qv(), p.kv(), p.vv(), bhsd(ref_out.data(), p.B, p.Hq, p.Lq, p.Dv), o);
      compare(st, ref, false, false);
    }
  }
}

TEST_CASE("softmax_row_entropy gradient vs reference::entropy_gradient", "[observe][reference][regularizer]") {
  const auto x = attnkit_test::randn(64, 3, 2.5f);
  std::vector<double> s(x.begin(), x.end());
  s[5] = s[40] = -std::numeric_limits<double>::infinity();
  std::vector<double> g(s.size());
  const auto mine = softmax_row_entropy(s, {}, g);
  const auto ref = reference::entropy_gradient(s);
  CHECK(mine.entropy == Approx(ref.entropy).epsilon(1e-12));
  for (std::size_t j = 0; j < s.size(); ++j) CHECK(g[j] == Approx(ref.grad[j]).margin(1e-14));
}
