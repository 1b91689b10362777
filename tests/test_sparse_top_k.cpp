// sparse{pattern::top_k} kernel vs the float64 oracle on every compiled arch.
// Tolerance as in test_sparse_oracle.cpp: max|out − oracle| ≤ 2e-5·max|oracle| (LSE
// too).
//
// Near-ties: the kernel ranks float32 logits, the oracle float64 ones, so where a
// row's k-th and (k+1)-th largest float64 logits differ by less than the float32
// error the two may keep different keys, and both are right. Such rows — gap g with
// 0 < g < 1e-4·max(1, |s_k|) (natural-log units; the float32 logit error here is
// ~1e-6) — are left out of the output comparison and counted; each case checks that
// they are rare. Exact ties (g = 0, e.g. duplicated keys) are compared: there both
// sides compute bitwise-equal logits and break the tie by the smaller key index.
#include <catch2/catch.hpp>

#include <attnkit/observe/entropy.hpp>

#include <algorithm>
#include <cstring>
#include <limits>
#include <memory>

#include "oracle.hpp"

using namespace attnkit;
using attnkit_test::problem;

namespace {
constexpr double tol = 2e-5;
constexpr double near_tie = 1e-4;

struct outcome {
  double out = 0, lse = 0;
  bool nan_mismatch = false;
  index_t rows = 0, skipped = 0;
};

/// Rows whose top-k set the float32 kernel may legitimately choose differently.
template <class TK>
std::vector<bool> near_tie_rows(index_t kk, const tensor_view<const float>& q, const tensor_view<const TK>& k,
                                const tensor_view<const TK>& v, const options& opt, index_t Dv) {
  const index_t B = q.batch(), H = q.heads(), Lq = q.seq(), Lk = k.seq();
  std::vector<double> scratch(static_cast<std::size_t>(B * H * Lq * Dv));
  options o = opt;
  o.lse = nullptr;
  o.sinks = {};
  const auto dense = reference::attention(softmax{}, q, k, v, bhsd(scratch.data(), B, H, Lq, Dv), o,
                                          {.keep_weights = true});
  std::vector<bool> skip(static_cast<std::size_t>(B * H * Lq), false);
  std::vector<double> s;
  for (index_t r = 0; r < B * H * Lq; ++r) {
    s.clear();
    for (index_t j = 0; j < Lk; ++j) {
      const double x = dense.logits[static_cast<std::size_t>(r * Lk + j)];
      if (x != -std::numeric_limits<double>::infinity()) s.push_back(x);
    }
    const bool nan = std::any_of(s.begin(), s.end(), [](double x) { return std::isnan(x); });
    if (nan || kk == 0 || static_cast<index_t>(s.size()) <= kk) continue;
    std::sort(s.begin(), s.end(), std::greater<double>());
    const double gap = s[static_cast<std::size_t>(kk - 1)] - s[static_cast<std::size_t>(kk)];
    skip[static_cast<std::size_t>(r)] = gap > 0 && gap < near_tie * std::max(1.0, std::abs(s[static_cast<std::size_t>(kk - 1)]));
  }
  return skip;
}

/// Kernel (Arch) vs oracle for `pol` (a sparse top_k policy), any K/V type.
template <class Arch, class Pol, class TK, class Obs = null_observer>
outcome compare(const Pol& pol, const tensor_view<const float>& q, const tensor_view<const TK>& k,
                const tensor_view<const TK>& v, index_t Dv, options opt, reference::result* ref_out = nullptr,
                Obs&& obs = {}) {
  constexpr bool normalized = decltype(pol.inner)::normalization == attnkit::normalization::softmax;
  const index_t B = q.batch(), H = q.heads(), Lq = q.seq(), rows = B * H * Lq;
  std::vector<float> out(static_cast<std::size_t>(rows * Dv), -7.0f), lse(static_cast<std::size_t>(rows));
  std::vector<double> ref(out.size());
  if (normalized) opt.lse = lse.data();
  attention<Arch>(pol, q, k, v, bhsd(out.data(), B, H, Lq, Dv), opt, obs);
  opt.lse = nullptr;
  const auto res = reference::attention(pol, q, k, v, bhsd(ref.data(), B, H, Lq, Dv), opt);
  const auto skip = near_tie_rows(pol.pattern.k, q, k, v, opt, Dv);
  outcome e;
  e.rows = rows;
  double scale = 1e-30;
  for (double x : ref) scale = std::max(scale, std::abs(x));
  for (index_t r = 0; r < rows; ++r) {
    if (skip[static_cast<std::size_t>(r)]) {
      ++e.skipped;
      continue;
    }
    for (index_t d = 0; d < Dv; ++d) {
      const auto u = static_cast<std::size_t>(r * Dv + d);
      if (std::isnan(ref[u]) != std::isnan(out[u])) e.nan_mismatch = true;
      if (!std::isnan(ref[u])) e.out = std::max(e.out, std::abs(out[u] - ref[u]) / scale);
    }
    if (!normalized) continue;
    const auto u = static_cast<std::size_t>(r);
    if (std::isfinite(res.lse[u]))
      e.lse = std::max(e.lse, std::abs(lse[u] - res.lse[u]) / std::max(1.0, std::abs(res.lse[u])));
    else if (lse[u] != static_cast<float>(res.lse[u]) && !(std::isnan(lse[u]) && std::isnan(res.lse[u])))
      e.lse = std::max(e.lse, 1.0);
  }
  if (ref_out) *ref_out = res;
  return e;
}

void require_close(const outcome& e) {
  INFO("rows " << e.rows << ", near-tie rows skipped " << e.skipped);
  CHECK(e.out <= tol);
  CHECK(e.lse <= tol);
  CHECK_FALSE(e.nan_mismatch);
  CHECK(e.skipped * 20 <= e.rows);  // the comparison is not vacuous
}

const char* causal_name(causal c) {
  return c == causal::none ? "none" : c == causal::top_left ? "top_left" : "bottom_right";
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("top_k matches the oracle: odd shapes, GQA, causal, k", "[sparse][top_k][oracle]",
                        simd::compiled_archs) {
  problem p(2, 4, 2, 37, 101, 24, 24, 31);  // Hq = 4 over Hkv = 2
  for (causal c : {causal::none, causal::top_left, causal::bottom_right})
    for (index_t kk : {index_t{0}, index_t{1}, index_t{7}, index_t{101}, index_t{150}}) {
      INFO(simd::arch_name<TestType>() << " causal " << causal_name(c) << " k " << kk);
      options o;
      o.causal = c;
      require_close(compare<TestType>(sparse{pattern::top_k{.k = kk}}, p.qv(), p.kv(), p.vv(), p.Dv, o));
      require_close(compare<TestType>(sparse{pattern::top_k{.k = kk}, sigmoid{}}, p.qv(), p.kv(), p.vv(), p.Dv, o));
    }
}

TEMPLATE_LIST_TEST_CASE("top_k with a mask, key_lengths, bias, ALiBi and softcap", "[sparse][top_k][oracle]",
                        simd::compiled_archs) {
  problem p(2, 4, 2, 37, 101, 24, 20, 41);
  std::unique_ptr<bool[]> mask(new bool[static_cast<std::size_t>(p.Lq * p.Lk)]);
  for (index_t x = 0; x < p.Lq * p.Lk; ++x) mask[static_cast<std::size_t>(x)] = (x * 7919) % 5 != 0;
  const std::vector<std::int64_t> kl{80, 101};
  const auto bias = attnkit_test::randn(static_cast<std::size_t>(p.Lq * p.Lk), 43);
  const float slopes[4] = {0.3f, 0.1f, 0.05f, 0.02f};
  for (causal c : {causal::none, causal::bottom_right})
    for (index_t kk : {index_t{1}, index_t{7}, index_t{60}}) {
      INFO(simd::arch_name<TestType>() << " causal " << causal_name(c) << " k " << kk);
      options o;
      o.causal = c;
      o.mask = bhsd(static_cast<const bool*>(mask.get()), 1, 1, p.Lq, p.Lk);
      o.key_lengths = kl;
      require_close(compare<TestType>(sparse{pattern::top_k{.k = kk}}, p.qv(), p.kv(), p.vv(), p.Dv, o));
      require_close(compare<TestType>(sparse{pattern::top_k{.k = kk}, sigmoid{}}, p.qv(), p.kv(), p.vv(), p.Dv, o));
      o.bias = bhsd(bias.data(), 1, 1, p.Lq, p.Lk);
      o.alibi_slopes = slopes;
      o.softcap = 3.0f;
      o.window = {20, 3};
      require_close(compare<TestType>(sparse{pattern::top_k{.k = kk}}, p.qv(), p.kv(), p.vv(), p.Dv, o));
    }
}

TEMPLATE_LIST_TEST_CASE("top_k: several query blocks and strips, strided Q, bf16 K/V", "[sparse][top_k][oracle]",
                        simd::compiled_archs) {
  const bool small = simd::is_scalar_v<TestType>;
  const index_t B = 1, H = 4, G = 2, Lq = small ? 160 : 300, Lk = small ? 170 : 333, D = 40;
  problem p(B, H, G, Lq, Lk, D, D, 51);
  // Q in [B, L, H, D] memory order (PyTorch layout): non-BHSD strides.
  std::vector<float> qs(p.q.size());
  for (index_t h = 0; h < H; ++h)
    for (index_t i = 0; i < Lq; ++i)
      for (index_t d = 0; d < D; ++d) qs[static_cast<std::size_t>((i * H + h) * D + d)] = p.q[static_cast<std::size_t>((h * Lq + i) * D + d)];
  const auto q = bshd(static_cast<const float*>(qs.data()), B, Lq, H, D);
  for (causal c : {causal::none, causal::top_left})
    for (index_t kk : {index_t{5}, index_t{64}}) {
      INFO(simd::arch_name<TestType>() << " causal " << causal_name(c) << " k " << kk);
      options o;
      o.causal = c;
      require_close(compare<TestType>(sparse{pattern::top_k{.k = kk}}, q, p.kv(), p.vv(), p.Dv, o));
    }
  std::vector<bfloat16> kb(p.k.size()), vb(p.v.size());
  for (std::size_t x = 0; x < kb.size(); ++x) kb[x] = bfloat16::from_float(p.k[x]);
  for (std::size_t x = 0; x < vb.size(); ++x) vb[x] = bfloat16::from_float(p.v[x]);
  const auto kv = bhsd(static_cast<const bfloat16*>(kb.data()), B, G, Lk, D);
  const auto vv = bhsd(static_cast<const bfloat16*>(vb.data()), B, G, Lk, D);
  options o;
  o.causal = causal::bottom_right;
  INFO(simd::arch_name<TestType>() << " bf16 K/V");
  require_close(compare<TestType>(sparse{pattern::top_k{.k = 16}}, p.qv(), kv, vv, p.Dv, o));
}

TEMPLATE_LIST_TEST_CASE("top_k breaks exact ties by the smaller key index", "[sparse][top_k][oracle]",
                        simd::compiled_archs) {
  // Keys repeat with period 10 (V does not): every logit appears ~10 times, equal
  // bitwise in float32 and float64, so which copies are kept decides the output.
  problem p(1, 2, 1, 29, 97, 16, 16, 61);
  for (index_t j = 10; j < p.Lk; ++j)
    for (index_t d = 0; d < p.D; ++d)
      p.k[static_cast<std::size_t>(j * p.D + d)] = p.k[static_cast<std::size_t>((j % 10) * p.D + d)];
  for (index_t kk : {index_t{3}, index_t{15}, index_t{42}}) {
    INFO(simd::arch_name<TestType>() << " k " << kk);
    const auto e = compare<TestType>(sparse{pattern::top_k{.k = kk}}, p.qv(), p.kv(), p.vv(), p.Dv, {});
    require_close(e);
    CHECK(e.skipped == 0);
  }
}

TEST_CASE("top_k: k = 0 masks every row (masked_rows convention)", "[sparse][top_k]") {
  problem p(1, 2, 2, 20, 30, 16, 8, 71);
  std::vector<float> out(p.out_size(), -7.0f), lse(static_cast<std::size_t>(p.B * p.Hq * p.Lq), 0.0f);
  options o;
  o.lse = lse.data();
  attention(sparse{pattern::top_k{.k = 0}}, p.qv(), p.kv(), p.vv(), p.ov(out), o);
  for (float x : out) CHECK(x == 0.0f);
  for (float x : lse) CHECK(x == -std::numeric_limits<float>::infinity());
  o.masked_rows = masked_rows::nan;
  attention(sparse{pattern::top_k{.k = 0}}, p.qv(), p.kv(), p.vv(), p.ov(out), o);
  for (float x : out) CHECK(std::isnan(x));
}

TEMPLATE_LIST_TEST_CASE("top_k: a NaN logit keeps its row NaN, as in the oracle", "[sparse][top_k][oracle]",
                        simd::compiled_archs) {
  problem p(1, 2, 1, 60, 70, 16, 16, 75);
  p.q[3 * 16 + 5] = std::numeric_limits<float>::quiet_NaN();  // row 3 of head 0: every logit NaN
  p.k[40 * 16 + 2] = std::numeric_limits<float>::quiet_NaN();  // key 40: one NaN logit in every row
  options o;
  o.causal = causal::top_left;  // rows i < 40 do not see key 40
  for (index_t kk : {index_t{0}, index_t{5}}) {
    INFO(simd::arch_name<TestType>() << " k " << kk);
    require_close(compare<TestType>(sparse{pattern::top_k{.k = kk}}, p.qv(), p.kv(), p.vv(), p.Dv, o));
  }
}

TEST_CASE("top_k: the entropy observer counts the kept keys", "[sparse][top_k][observe]") {
  problem p(2, 4, 2, 37, 101, 24, 24, 81);
  const std::vector<std::int64_t> kl{101, 50};
  for (causal c : {causal::none, causal::top_left})
    for (index_t kk : {index_t{0}, index_t{1}, index_t{7}, index_t{200}}) {
      INFO("causal " << causal_name(c) << " k " << kk);
      options o;
      o.causal = c;
      o.key_lengths = kl;
      entropy_stats st;
      reference::result ref;
      require_close(compare<simd::default_arch>(sparse{pattern::top_k{.k = kk}}, p.qv(), p.kv(), p.vv(), p.Dv, o,
                                                &ref, observe(st)));
      REQUIRE(st.complete());
      const auto skip = near_tie_rows(kk, p.qv(), p.kv(), p.vv(), o, p.Dv);
      for (index_t b = 0; b < p.B; ++b)
        for (index_t h = 0; h < p.Hq; ++h)
          for (index_t i = 0; i < p.Lq; ++i) {
            const auto u = static_cast<std::size_t>(ref.row(b, h, i));
            const key_range kr = analytic_range(o, keys_of_batch(o, b, p.Lq, p.Lk), i);
            INFO("row " << u);
            CHECK(st.allowed[u] == std::min(kk, kr.size()));
            CHECK(ref.allowed[u] == st.allowed[u]);
            if (st.allowed[u] > 0 && !skip[u])
              CHECK(std::abs(st.entropy[u] - ref.entropy[u]) <=
                    1e-4 * std::max(1.0, std::log(static_cast<double>(st.allowed[u]))));
          }
    }
}

TEST_CASE("top_k: results do not depend on the thread count", "[sparse][top_k]") {
  problem p(2, 4, 2, 333, 300, 32, 32, 91);
  for (causal c : {causal::none, causal::bottom_right}) {
    std::vector<float> one(p.out_size()), three(p.out_size());
    options o;
    o.causal = c;
    o.num_threads = 1;
    attention(sparse{pattern::top_k{.k = 24}}, p.qv(), p.kv(), p.vv(), p.ov(one), o);
    o.num_threads = 3;
    attention(sparse{pattern::top_k{.k = 24}}, p.qv(), p.kv(), p.vv(), p.ov(three), o);
    CHECK(std::memcmp(one.data(), three.data(), one.size() * sizeof(float)) == 0);
  }
}
