// The float64 reference oracle: softmax attention, masks, options, merge, entropy.
// Tolerances: hand-computed cases 1e-12 (absolute), invariants 1e-12 unless stated.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>

#include "reference_util.hpp"

using namespace attnkit;
using reftest::tensor;

namespace {
constexpr double tol = 1e-12;
}

TEST_CASE("reference softmax: 1 query x 2 keys by hand", "[reference][softmax]") {
  tensor q(1, 1, 1, 1), k(1, 1, 2, 1), v(1, 1, 2, 1), o(1, 1, 1, 1);
  q.x = {1.0};
  k.x = {0.0, 2.0};
  v.x = {1.0, 3.0};
  options opt;
  opt.scale = 1.0;
  const auto r = reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), opt);
  const double e2 = std::exp(2.0), p0 = 1 / (1 + e2), p1 = e2 / (1 + e2);
  CHECK(o.x[0] == Approx(p0 * 1 + p1 * 3).margin(tol));
  CHECK(r.lse[0] == Approx(std::log(1 + e2)).margin(tol));
  CHECK(r.entropy[0] == Approx(-(p0 * std::log(p0) + p1 * std::log(p1))).margin(tol));
  CHECK(r.norm_entropy[0] == Approx(r.entropy[0] / std::log(2.0)).margin(tol));
  CHECK(r.allowed[0] == 2);
  CHECK(r.first_prob[0] == Approx(p0).margin(tol));
  CHECK(r.mass[0] == Approx(1.0).margin(tol));
  CHECK(r.sink_prob[0] == 0.0);
}

TEST_CASE("reference softmax: rows sum to 1, GQA reads kv head h/(Hq/Hkv)", "[reference][softmax]") {
  tensor q(2, 4, 5, 3, 1), k(2, 2, 7, 3, 2), v(2, 2, 7, 2, 3), o(2, 4, 5, 2);
  reference::extras ex;
  ex.keep_weights = true;
  const auto r = reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), {}, ex);
  for (index_t row = 0; row < r.rows(); ++row) {
    double s = 0;
    for (index_t j = 0; j < 7; ++j) s += r.weights[static_cast<std::size_t>(row * 7 + j)];
    CHECK(s == Approx(1.0).margin(tol));
  }
  // Query head 3 of batch 1 must equal a single-head call on kv head 1.
  tensor q1(1, 1, 5, 3), k1(1, 1, 7, 3), v1(1, 1, 7, 2), o1(1, 1, 5, 2);
  for (index_t i = 0; i < 5; ++i)
    for (index_t d = 0; d < 3; ++d) q1(0, 0, i, d) = q.at(1, 3, i, d);
  for (index_t j = 0; j < 7; ++j) {
    for (index_t d = 0; d < 3; ++d) k1(0, 0, j, d) = k.at(1, 1, j, d);
    for (index_t d = 0; d < 2; ++d) v1(0, 0, j, d) = v.at(1, 1, j, d);
  }
  reference::attention(softmax{}, q1.cv(), k1.cv(), v1.cv(), o1.v());
  for (index_t i = 0; i < 5; ++i)
    for (index_t d = 0; d < 2; ++d) CHECK(o1.at(0, 0, i, d) == Approx(o.at(1, 3, i, d)).margin(tol));
}

TEST_CASE("reference softmax: non-causal output invariant under key permutation", "[reference][softmax]") {
  tensor q(1, 2, 4, 5, 11), k(1, 2, 6, 5, 12), v(1, 2, 6, 3, 13), o(1, 2, 4, 3);
  reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v());
  const index_t perm[6] = {3, 5, 0, 2, 1, 4};
  tensor kp(1, 2, 6, 5), vp(1, 2, 6, 3), op(1, 2, 4, 3);
  for (index_t h = 0; h < 2; ++h)
    for (index_t j = 0; j < 6; ++j) {
      for (index_t d = 0; d < 5; ++d) kp(0, h, j, d) = k.at(0, h, perm[j], d);
      for (index_t d = 0; d < 3; ++d) vp(0, h, j, d) = v.at(0, h, perm[j], d);
    }
  reference::attention(softmax{}, q.cv(), kp.cv(), vp.cv(), op.v());
  CHECK(reftest::max_diff(o.x, op.x) < tol);
}

TEST_CASE("reference softmax: causal alignments", "[reference][softmax][mask]") {
  tensor q(1, 1, 3, 4, 21), k(1, 1, 5, 4, 22), v(1, 1, 5, 2, 23), o(1, 1, 3, 2);
  options opt;
  SECTION("top-left: row 0 sees only key 0, so its output is v0") {
    opt.causal = causal::top_left;
    const auto r = reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), opt);
    CHECK(o.at(0, 0, 0, 0) == Approx(v.at(0, 0, 0, 0)).margin(tol));
    CHECK(o.at(0, 0, 0, 1) == Approx(v.at(0, 0, 0, 1)).margin(tol));
    CHECK(r.allowed == std::vector<index_t>{1, 2, 3});
    CHECK(r.entropy[0] == 0.0);
    CHECK(r.norm_entropy[0] == 0.0);  // n_i = 1: stored as 0 (Ĥ is undefined there)
    // Summaries: H over the 3 rows (n ≥ 1), Ĥ over rows 1 and 2 only (n ≥ 2).
    const auto st = reference::statistics(r);
    CHECK(st.heads[0].rows == 3);
    CHECK(st.heads[0].norm_rows == 2);
    CHECK(st.heads[0].min_entropy == 0.0);
    CHECK(st.heads[0].mean_entropy == Approx((r.entropy[1] + r.entropy[2]) / 3).margin(tol));
    CHECK(st.heads[0].min_norm_entropy == std::min(r.norm_entropy[1], r.norm_entropy[2]));
    CHECK(st.heads[0].min_norm_entropy > 0.0);
    CHECK(st.heads[0].mean_norm_entropy == Approx((r.norm_entropy[1] + r.norm_entropy[2]) / 2).margin(tol));
  }
  SECTION("bottom-right: j <= i + Lk - Lq") {
    opt.causal = causal::bottom_right;
    const auto r = reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), opt);
    CHECK(r.allowed == std::vector<index_t>{3, 4, 5});
  }
  SECTION("bottom-right with Lq = 1 sees every key (decoding)") {
    tensor q1(1, 1, 1, 4, 24), o1(1, 1, 1, 2), o2(1, 1, 1, 2);
    opt.causal = causal::bottom_right;
    const auto r = reference::attention(softmax{}, q1.cv(), k.cv(), v.cv(), o1.v(), opt);
    reference::attention(softmax{}, q1.cv(), k.cv(), v.cv(), o2.v());
    CHECK(r.allowed[0] == 5);
    CHECK(reftest::max_diff(o1.x, o2.x) < tol);
  }
  SECTION("bottom-right uses each batch's key length") {
    tensor qb(2, 1, 2, 4, 25), kb(2, 1, 5, 4, 26), vb(2, 1, 5, 2, 27), ob(2, 1, 2, 2);
    const std::int64_t lens[2] = {5, 3};
    opt.causal = causal::bottom_right;
    opt.key_lengths = lens;
    const auto r = reference::attention(softmax{}, qb.cv(), kb.cv(), vb.cv(), ob.v(), opt);
    CHECK(r.allowed == std::vector<index_t>{4, 5, 2, 3});
  }
}

TEST_CASE("reference softmax: window, bool mask, masked rows", "[reference][softmax][mask]") {
  tensor q(1, 1, 6, 2, 31), k(1, 1, 6, 2, 32), v(1, 1, 6, 2, 33), o(1, 1, 6, 2);
  options opt;
  SECTION("window (1, 1)") {
    opt.window = {1, 1};
    const auto r = reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), opt);
    CHECK(r.allowed == std::vector<index_t>{2, 3, 3, 3, 3, 2});
  }
  SECTION("window (2, 0) with Lq < Lk is offset by Lk - Lq") {
    tensor q2(1, 1, 2, 2, 34), o2(1, 1, 2, 2);
    opt.window = {2, 0};
    reference::extras ex;
    ex.keep_weights = true;
    const auto r = reference::attention(softmax{}, q2.cv(), k.cv(), v.cv(), o2.v(), opt, ex);
    CHECK(r.allowed == std::vector<index_t>{3, 3});
    CHECK(r.logits[1] == -INFINITY);  // row 0 sees keys 2..4
    CHECK(r.logits[2] != -INFINITY);
    CHECK(r.logits[5] == -INFINITY);
  }
  SECTION("bool mask broadcast over batch and heads; a fully masked row") {
    bool m[6 * 6];
    for (index_t i = 0; i < 6; ++i)
      for (index_t j = 0; j < 6; ++j) m[i * 6 + j] = i != 2 && (i + j) % 2 == 0;
    opt.mask = bhsd(static_cast<const bool*>(m), 1, 1, 6, 6);
    float lse[6];
    opt.lse = lse;
    const auto r = reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), opt);
    CHECK(r.allowed == std::vector<index_t>{3, 3, 0, 3, 3, 3});
    CHECK(o.at(0, 0, 2, 0) == 0.0);
    CHECK(r.lse[2] == -INFINITY);
    CHECK(lse[2] == -INFINITY);
    CHECK(lse[1] == Approx(r.lse[1]).margin(1e-6));  // float output
    opt.masked_rows = masked_rows::nan;
    reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), opt);
    CHECK(std::isnan(o.at(0, 0, 2, 1)));
    CHECK(lse[2] == -INFINITY);
  }
}

TEST_CASE("reference softmax: softcap before bias and ALiBi, by hand", "[reference][softmax]") {
  tensor q(1, 1, 1, 1), k(1, 1, 2, 1), v(1, 1, 2, 1), o(1, 1, 1, 1);
  q.x = {2.0};
  k.x = {1.0, 3.0};
  v.x = {-1.0, 1.0};
  const float bias[2] = {0.5f, -1.0f};
  const float slopes[1] = {0.25f};
  options opt;
  opt.scale = 1.0;
  opt.softcap = 4.0f;
  opt.bias = bhsd(static_cast<const float*>(bias), 1, 1, 1, 2);
  opt.alibi_slopes = slopes;
  reference::extras ex;
  ex.keep_weights = true;
  const auto r = reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), opt, ex);
  // Δ = Lk − Lq = 1: ALiBi distances |0 + 1 − j| = 1, 0.
  const double s0 = 4 * std::tanh(2.0 / 4) + 0.5 - 0.25, s1 = 4 * std::tanh(6.0 / 4) - 1.0;
  CHECK(r.logits[0] == Approx(s0).margin(tol));
  CHECK(r.logits[1] == Approx(s1).margin(tol));
  const double p1 = 1 / (1 + std::exp(s0 - s1));
  CHECK(o.x[0] == Approx(-(1 - p1) + p1).margin(tol));
}

TEST_CASE("reference softmax: sinks take mass but carry no value", "[reference][softmax]") {
  tensor q(1, 1, 1, 1), k(1, 1, 1, 1), v(1, 1, 1, 1), o(1, 1, 1, 1);
  q.x = {0.0};
  k.x = {1.0};
  v.x = {4.0};
  const float sinks[1] = {0.0f};
  options opt;
  opt.sinks = sinks;
  const auto r = reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), opt);
  CHECK(o.x[0] == Approx(2.0).margin(tol));  // p = 1/2
  CHECK(r.lse[0] == Approx(std::log(2.0)).margin(tol));
  CHECK(r.sink_prob[0] == Approx(0.5).margin(tol));
  CHECK(r.mass[0] == Approx(0.5).margin(tol));
  CHECK(r.entropy[0] == 0.0);  // one key: the key distribution (sink excluded) is a point mass
}

TEST_CASE("reference softmax: strides (BSHD) give the BHSD result", "[reference][softmax]") {
  const index_t B = 2, H = 3, L = 4, D = 5;
  tensor q(B, H, L, D, 41), k(B, H, L, D, 42), v(B, H, L, D, 43), o(B, H, L, D);
  std::vector<float> qs(q.x.size()), ks(q.x.size()), vs(q.x.size()), os(q.x.size());
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t l = 0; l < L; ++l)
        for (index_t d = 0; d < D; ++d) {
          const auto x = static_cast<std::size_t>(((b * L + l) * H + h) * D + d);
          qs[x] = static_cast<float>(q.at(b, h, l, d));
          ks[x] = static_cast<float>(k.at(b, h, l, d));
          vs[x] = static_cast<float>(v.at(b, h, l, d));
          q(b, h, l, d) = qs[x];
          k(b, h, l, d) = ks[x];
          v(b, h, l, d) = vs[x];
        }
  options opt;
  opt.causal = causal::top_left;
  reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), opt);
  reference::attention(softmax{}, bshd(static_cast<const float*>(qs.data()), B, L, H, D),
                       bshd(static_cast<const float*>(ks.data()), B, L, H, D),
                       bshd(static_cast<const float*>(vs.data()), B, L, H, D), bshd(os.data(), B, L, H, D), opt);
  double m = 0;
  for (index_t b = 0; b < B; ++b)
    for (index_t h = 0; h < H; ++h)
      for (index_t l = 0; l < L; ++l)
        for (index_t d = 0; d < D; ++d)
          m = std::max(m, std::abs(o.at(b, h, l, d) - os[static_cast<std::size_t>(((b * L + l) * H + h) * D + d)]));
  CHECK(m < 1e-6);  // float output rounding only
}

TEST_CASE("reference softmax: merging two key halves equals the whole", "[reference][softmax][merge]") {
  const index_t B = 1, H = 2, Lq = 3, Lk = 8, D = 4, half = 3;
  tensor q(B, H, Lq, D, 51), k(B, H, Lk, D, 52), v(B, H, Lk, D, 53), o(B, H, Lq, D), o1(B, H, Lq, D), o2(B, H, Lq, D),
      om(B, H, Lq, D);
  const auto full = reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v());
  auto part = [&](const tensor& t, index_t j0, index_t n) {
    return strided(t.x.data() + j0 * D, {B, H, n, D}, {H * Lk * D, Lk * D, D, 1});
  };
  const auto r1 = reference::attention(softmax{}, q.cv(), part(k, 0, half), part(v, 0, half), o1.v());
  const auto r2 = reference::attention(softmax{}, q.cv(), part(k, half, Lk - half), part(v, half, Lk - half), o2.v());
  const auto lse = reference::merge(o1.cv(), r1.lse, o2.cv(), r2.lse, om.v());
  CHECK(reftest::max_diff(o.x, om.x) < tol);
  CHECK(reftest::max_diff(lse, full.lse) < tol);
  // Entropy grouping rule H = Σ w_k H_k − Σ w_k log w_k, w_k = e^{lse_k − lse}.
  for (std::size_t r = 0; r < lse.size(); ++r) {
    const double w1 = std::exp(r1.lse[r] - lse[r]), w2 = std::exp(r2.lse[r] - lse[r]);
    const double H = w1 * r1.entropy[r] + w2 * r2.entropy[r] - w1 * std::log(w1) - w2 * std::log(w2);
    CHECK(H == Approx(full.entropy[r]).margin(tol));
  }
  SECTION("a side with LSE = -inf contributes nothing, even if NaN") {
    std::vector<double> nan_lse(lse.size(), -INFINITY);
    tensor onan(B, H, Lq, D);
    std::fill(onan.x.begin(), onan.x.end(), std::numeric_limits<double>::quiet_NaN());
    const auto l2 = reference::merge(o.cv(), full.lse, onan.cv(), nan_lse, om.v());
    CHECK(reftest::max_diff(o.x, om.x) < tol);
    CHECK(reftest::max_diff(l2, full.lse) < tol);
  }
}

TEST_CASE("reference softmax: entropy of a uniform row is log n", "[reference][entropy]") {
  tensor q(1, 1, 4, 3), k(1, 1, 9, 3, 61), v(1, 1, 9, 2, 62), o(1, 1, 4, 2);  // q = 0: equal logits
  options opt;
  opt.causal = causal::bottom_right;
  const auto r = reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), opt);
  for (index_t i = 0; i < 4; ++i) {
    CHECK(r.entropy[static_cast<std::size_t>(i)] == Approx(std::log(6.0 + static_cast<double>(i))).margin(tol));
    CHECK(r.norm_entropy[static_cast<std::size_t>(i)] == Approx(1.0).margin(tol));
  }
}

TEST_CASE("reference: entropy gradient matches finite differences", "[reference][entropy]") {
  const std::vector<double> s = {0.3, -1.2, 2.0, -INFINITY, 0.7};
  const auto g = reference::entropy_gradient(s);
  double sum = 0;
  for (std::size_t j = 0; j < s.size(); ++j) {
    sum += g.grad[j];
    if (s[j] == -INFINITY) {
      CHECK(g.grad[j] == 0.0);
      continue;
    }
    auto sp = s, sm = s;
    const double h = 1e-6;
    sp[j] += h;
    sm[j] -= h;
    const double fd = (reference::entropy_gradient(sp).entropy - reference::entropy_gradient(sm).entropy) / (2 * h);
    CHECK(g.grad[j] == Approx(fd).margin(1e-8));
  }
  CHECK(sum == Approx(0.0).margin(1e-14));
  const std::vector<double> w = {1.0, 1.0, 2.0};  // p = 1/4, 1/4, 1/2
  CHECK(reference::entropy_from_weights(w) == Approx(1.5 * std::log(2.0)).margin(tol));
  CHECK(g.entropy == Approx(reference::entropy_from_weights(std::vector<double>{
                                std::exp(0.3), std::exp(-1.2), std::exp(2.0), 0.0, std::exp(0.7)}))
                         .margin(tol));
}

TEST_CASE("reference: per-head statistics, sink and overload flags", "[reference][entropy][stats]") {
  // Head 0: key 0 dominates (sink, collapse); head 1: uniform (overload).
  const index_t L = 8, D = 2;
  tensor q(1, 2, L, D), k(1, 2, L, D), v(1, 2, L, 1, 71), o(1, 2, L, 1);
  for (index_t i = 0; i < L; ++i) q(0, 0, i, 0) = 10.0;
  k(0, 0, 0, 0) = 10.0;  // logit 100/sqrt(2) for key 0, 0 for the rest
  reference::extras ex;
  ex.top_k = 1;
  const auto r = reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v(), {}, ex);
  const auto st = reference::statistics(r);
  REQUIRE(st.heads.size() == 2);
  CHECK(st.heads[0].sink);
  CHECK(st.heads[0].sink_mass == Approx(1.0).margin(1e-12));
  CHECK(st.heads[0].sink_row_rate == 1.0);
  CHECK(st.heads[0].collapse);
  CHECK_FALSE(st.heads[0].overload);
  CHECK(st.heads[0].topk_mass == Approx(1.0).margin(1e-12));
  CHECK_FALSE(st.heads[1].sink);
  CHECK(st.heads[1].overload);
  CHECK(st.heads[1].mean_norm_entropy == Approx(1.0).margin(tol));
  CHECK(st.heads[1].min_entropy == Approx(std::log(8.0)).margin(tol));
  CHECK(st.heads[1].topk_mass == Approx(1.0 / 8).margin(tol));
  CHECK(st.sink_rate == 0.5);
  CHECK(st.norm_entropy_spread == Approx(0.5 * (1.0 - st.heads[0].mean_norm_entropy)).margin(1e-12));
}

TEST_CASE("reference: validation runs first", "[reference][validation]") {
  tensor q(1, 1, 2, 3, 81), k(1, 1, 2, 4, 82), v(1, 1, 2, 2, 83), o(1, 1, 2, 2);
  o.x = {7, 7, 7, 7};
  CHECK_THROWS_AS(reference::attention(softmax{}, q.cv(), k.cv(), v.cv(), o.v()), invalid_argument_error);
  CHECK(o.x == std::vector<double>{7, 7, 7, 7});
  tensor k3(1, 1, 2, 3, 84);
  options opt;
  float lse[2];
  opt.lse = lse;
  CHECK_THROWS_AS(reference::attention(sigmoid{}, q.cv(), k3.cv(), v.cv(), o.v(), opt), invalid_argument_error);
}
