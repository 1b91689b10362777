// The entropy observer on real kernel calls, against a float64 computation written
// here (tiny loops over the documented mask conventions): per-row H, Ĥ, LSE, n_i,
// first-token and top-k mass, sinks, fully-masked rows, decode (split-KV) shapes,
// sigmoid, the observer contract, and the split/merge rule on kernel results.
//
// Tolerances (the kernels run in fp32 with a fast exp2):
//   |H − H_ref| ≤ 1e-4 · max(1, log n_i),  |Ĥ − Ĥ_ref| ≤ 1e-4,
//   |lse − lse_ref| ≤ 1e-4 · (1 + |lse_ref|),  probabilities (first, top-k, mass) ≤ 1e-4.
#include <catch2/catch.hpp>

#include <attnkit/observe/entropy.hpp>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <vector>

#include "support.hpp"

using namespace attnkit;
using attnkit_test::problem;

namespace {

constexpr double inf = std::numeric_limits<double>::infinity();

struct ref_row {
  double H = std::nan(""), Hn = std::nan(""), lse = -inf, first = std::nan(""), topk = std::nan(""), mass = 0;
  index_t n = 0;
};

// Visible keys of (b, h, i) from the option docs (options.hpp), not via kernel code.
bool visible(const options& o, const problem& p, index_t b, index_t h, index_t i, index_t j) {
  const index_t lk = o.key_lengths.empty() ? p.Lk : o.key_lengths[static_cast<std::size_t>(b)];
  const index_t delta = lk - p.Lq;
  if (j >= lk) return false;
  if (o.causal == causal::top_left && j > i) return false;
  if (o.causal == causal::bottom_right && j > i + delta) return false;
  if (o.window.left >= 0 && j < i + delta - o.window.left) return false;
  if (o.window.right >= 0 && j > i + delta + o.window.right) return false;
  if (o.mask.data && !o.mask(o.mask.extent[0] == 1 ? 0 : b, o.mask.extent[1] == 1 ? 0 : h,
                             o.mask.extent[2] == 1 ? 0 : i, j))
    return false;
  return true;
}

std::vector<double> ref_logits(const problem& p, const options& o, index_t b, index_t h, index_t i) {
  const double tau = o.scale ? *o.scale : 1.0 / std::sqrt(static_cast<double>(p.D));
  const index_t g = h / (p.Hq / p.Hkv);
  std::vector<double> s(static_cast<std::size_t>(p.Lk), -inf);
  for (index_t j = 0; j < p.Lk; ++j) {
    if (!visible(o, p, b, h, i, j)) continue;
    double d = 0;
    for (index_t x = 0; x < p.D; ++x)
      d += static_cast<double>(p.q[static_cast<std::size_t>(((b * p.Hq + h) * p.Lq + i) * p.D + x)]) *
           p.k[static_cast<std::size_t>(((b * p.Hkv + g) * p.Lk + j) * p.D + x)];
    s[static_cast<std::size_t>(j)] = tau * d;
  }
  return s;
}

// Softmax row; the sink (if any) is a category of the distribution.
ref_row ref_softmax(const problem& p, const options& o, index_t b, index_t h, index_t i, int top_k) {
  const auto s = ref_logits(p, o, b, h, i);
  ref_row r;
  for (double x : s) r.n += x != -inf;
  if (r.n == 0) return r;
  const bool sink = !o.sinks.empty();
  const double sv = sink ? o.sinks[static_cast<std::size_t>(h)] : -inf;
  double m = sv;
  for (double x : s) m = std::max(m, x);
  double l = sink ? std::exp(sv - m) : 0.0;
  for (double x : s) l += std::exp(x - m);
  r.lse = m + std::log(l);
  r.H = 0;
  std::vector<double> pk;
  r.mass = 0;
  for (double x : s)
    if (x != -inf) {
      const double pj = std::exp(x - r.lse);
      pk.push_back(pj);
      r.mass += pj;
      if (pj > 0) r.H -= pj * std::log(pj);
    }
  if (sink) {
    const double ps = std::exp(sv - r.lse);
    if (ps > 0) r.H -= ps * std::log(ps);
  }
  const index_t cats = r.n + (sink ? 1 : 0);
  r.Hn = cats == 1 ? 0.0 : r.H / std::log(static_cast<double>(cats));
  r.first = s[0] == -inf ? 0.0 : std::exp(s[0] - r.lse);
  if (top_k > 0) {
    std::sort(pk.begin(), pk.end(), std::greater<>());
    r.topk = 0;
    for (std::size_t x = 0; x < pk.size() && x < static_cast<std::size_t>(top_k); ++x) r.topk += pk[x];
  }
  return r;
}

// Sigmoid row: entropy of the normalised weights, row mass; lse = log(mass).
ref_row ref_sigmoid(const problem& p, const options& o, index_t b, index_t h, index_t i, double bias) {
  const auto s = ref_logits(p, o, b, h, i);
  ref_row r;
  std::vector<double> w;
  for (double x : s)
    if (x != -inf) w.push_back(1.0 / (1.0 + std::exp(-(x + bias))));
  r.n = static_cast<index_t>(w.size());
  if (r.n == 0) return r;
  for (double x : w) r.mass += x;
  r.H = 0;
  for (double x : w) r.H -= x / r.mass * std::log(x / r.mass);
  r.Hn = r.n == 1 ? 0.0 : r.H / std::log(static_cast<double>(r.n));
  r.lse = std::log(r.mass);
  return r;
}

void require_contract(const entropy_stats& st, const problem& p) {
  INFO("observer contract: begin() " << st.begin_calls << "x, end() " << st.end_calls << "x, rows reported "
                                     << st.rows_reported << " dropped " << st.rows_dropped << " missing "
                                     << st.rows_missing << " of " << p.B * p.Hq * p.Lq);
  INFO("(rows_dropped > 0 with begin_calls == 0: the kernel calls on_row() without begin())");
  REQUIRE(st.begin_calls == 1);
  REQUIRE(st.rows_dropped == 0);
  REQUIRE(st.end_calls == 1);
  REQUIRE(st.batch == p.B);
  REQUIRE(st.heads_count == p.Hq);
  REQUIRE(st.q_len == p.Lq);
  REQUIRE(st.rows_missing == 0);
  REQUIRE(st.rows_reported == p.B * p.Hq * p.Lq);  // with rows_missing == 0: each row exactly once
  REQUIRE(st.complete());
}

// Compares every row of `st` with `ref`; returns the number of empty rows seen.
index_t compare_rows(const entropy_stats& st, const problem& p, const std::function<ref_row(index_t, index_t, index_t)>& ref,
                     bool check_probs) {
  index_t empty = 0;
  for (index_t b = 0; b < p.B; ++b)
    for (index_t h = 0; h < p.Hq; ++h)
      for (index_t i = 0; i < p.Lq; ++i) {
        const ref_row r = ref(b, h, i);
        const auto u = static_cast<std::size_t>(st.index(b, h, i));
        INFO("b " << b << " h " << h << " i " << i << " n_ref " << r.n);
        REQUIRE(st.allowed[u] == r.n);
        if (r.n == 0) {
          ++empty;
          CHECK(std::isnan(st.entropy[u]));
          CHECK(std::isnan(st.norm_entropy[u]));
          CHECK(st.lse[u] == -inf);
          CHECK(st.mass[u] == 0.0);
          continue;
        }
        const double tolH = 1e-4 * std::max(1.0, std::log(static_cast<double>(r.n)));
        CHECK(std::abs(st.entropy[u] - r.H) <= tolH);
        CHECK(std::abs(st.norm_entropy[u] - r.Hn) <= 1e-4);
        CHECK(std::abs(st.lse[u] - r.lse) <= 1e-4 * (1 + std::abs(r.lse)));
        CHECK(std::abs(st.mass[u] - r.mass) <= 1e-4 * std::max(1.0, r.mass));
        if (check_probs) {
          CHECK(std::abs(st.first_prob[u] - r.first) <= 1e-4);
          if (st.config.top_k > 0) CHECK(std::abs(st.topk_mass[u] - r.topk) <= 1e-4);
        }
      }
  return empty;
}

struct case_t {
  const char* name;
  index_t B, Hq, Hkv, Lq, Lk, D;
  causal c;
  window w;
};

}  // namespace

TEST_CASE("entropy observer: per-row H, Ĥ, LSE, sink and top-k mass match float64 (softmax)", "[observe]") {
  const case_t cases[] = {
      {"odd shape, no mask", 2, 4, 2, 67, 93, 40, causal::none, {}},
      {"causal top_left Lq<Lk", 1, 2, 2, 45, 130, 40, causal::top_left, {}},
      {"causal bottom_right Lq<Lk", 1, 3, 1, 70, 133, 40, causal::bottom_right, {}},
      {"causal bottom_right Lq>Lk (fully masked rows)", 1, 2, 1, 90, 61, 40, causal::bottom_right, {}},
      {"local window", 2, 2, 1, 81, 100, 40, causal::none, {7, 3}},
      {"decode Lq=1 Lk=1500 (split-KV chunks)", 2, 4, 2, 1, 1500, 40, causal::bottom_right, {}},
      {"decode Lq=3 Lk=1500 window", 1, 4, 4, 3, 1500, 64, causal::bottom_right, {600, 0}},
  };
  for (const case_t& c : cases) {
    DYNAMIC_SECTION(c.name) {
      problem p(c.B, c.Hq, c.Hkv, c.Lq, c.Lk, c.D, c.D, 101, 1.3f);
      std::vector<float> out(p.out_size()), lse(static_cast<std::size_t>(p.B * p.Hq * p.Lq));
      options o;
      o.causal = c.c;
      o.window = c.w;
      o.lse = lse.data();
      entropy_stats st({.top_k = 5});
      attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o, observe(st));
      require_contract(st, p);
      const index_t empty =
          compare_rows(st, p, [&](index_t b, index_t h, index_t i) { return ref_softmax(p, o, b, h, i, 5); }, true);
      // The observer's LSE is the kernel's options.lse.
      for (std::size_t u = 0; u < lse.size(); ++u)
        if (st.allowed[u] > 0) CHECK(std::abs(st.lse[u] - lse[u]) <= 1e-5 * (1 + std::abs(st.lse[u])));
      // Summaries: empty rows counted and excluded.
      index_t counted = 0, empties = 0;
      for (const head_stats& hs : st.heads) counted += hs.rows, empties += hs.empty_rows;
      CHECK(empties == empty);
      CHECK(counted + empties == p.B * p.Hq * p.Lq);
      if (c.Lq > c.Lk && c.c == causal::bottom_right) CHECK(empty == p.B * p.Hq * (c.Lq - c.Lk));
    }
  }
}

TEST_CASE("entropy observer: key_lengths with a fully padded batch, boolean mask, GQA", "[observe]") {
  problem p(3, 4, 2, 33, 70, 40, 24, 7);
  std::vector<float> out(p.out_size());
  const std::vector<std::int64_t> kl{70, 0, 41};  // batch 1: every row has n_i = 0
  std::vector<std::uint8_t> mraw(static_cast<std::size_t>(p.Lq * p.Lk));
  for (index_t i = 0; i < p.Lq; ++i)
    for (index_t j = 0; j < p.Lk; ++j) mraw[static_cast<std::size_t>(i * p.Lk + j)] = ((i * 7 + j * 3) % 5) != 0;
  std::vector<char> mbuf(mraw.begin(), mraw.end());
  static_assert(sizeof(bool) == 1);
  const bool* mptr = reinterpret_cast<const bool*>(mbuf.data());
  for (int with_mask = 0; with_mask < 2; ++with_mask) {
    options o;
    o.key_lengths = kl;
    if (with_mask) o.mask = bhsd(mptr, 1, 1, p.Lq, p.Lk);
    entropy_stats st;
    attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o, observe(st));
    require_contract(st, p);
    INFO("mask " << with_mask);
    const index_t empty =
        compare_rows(st, p, [&](index_t b, index_t h, index_t i) { return ref_softmax(p, o, b, h, i, 0); }, true);
    CHECK(empty == p.Hq * p.Lq);
    for (index_t h = 0; h < p.Hq; ++h) {
      const head_stats& hs = st.head(1, h);
      CHECK(hs.rows == 0);
      CHECK(hs.empty_rows == p.Lq);
      CHECK(std::isnan(hs.norm_entropy_mean));
      CHECK_FALSE(hs.collapsed);
      CHECK_FALSE(hs.overloaded);
      CHECK(st.head(0, h).rows == p.Lq);
    }
    CHECK(std::isnan(st.head_spread[1]));
    CHECK(std::isnan(st.topk_mass[0]));  // top_k = 0: not tracked
  }
}

TEST_CASE("entropy observer: gpt-oss sinks are a category of the distribution", "[observe][sinks]") {
  for (index_t Lq : {index_t{1}, index_t{50}}) {  // decode and quadratic paths
    problem p(1, 4, 2, Lq, 300, 40, 40, 17);
    std::vector<float> out(p.out_size());
    const std::vector<float> sinks{-2.0f, 0.5f, 3.0f, 40.0f};  // the last one dominates its rows
    options o;
    o.causal = causal::bottom_right;
    o.sinks = sinks;
    entropy_stats st({.top_k = 3});
    attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o, observe(st));
    require_contract(st, p);
    CHECK(st.has_sink);
    INFO("Lq " << Lq);
    compare_rows(st, p, [&](index_t b, index_t h, index_t i) { return ref_softmax(p, o, b, h, i, 3); }, true);
    CHECK(st.pooled_heads[3].mass_mean < 1e-6);    // the sink takes nearly all the mass
    CHECK(st.pooled_heads[3].entropy_mean < 1e-4);  // … so the entropy is ~0
  }
}

TEST_CASE("entropy observer: collapse as the logit scale grows; flags and sink rate", "[observe]") {
  problem p(1, 4, 4, 64, 64, 32, 32, 5);
  std::vector<float> out(p.out_size());
  double prev = 2.0;
  for (double scale : {0.001, 0.2, 1.0, 5.0, 50.0}) {
    options o;
    o.scale = scale;
    entropy_stats st;
    attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o, observe(st));
    const double hn = st.mean_norm_entropy();
    INFO("scale " << scale << " mean Ĥ " << hn);
    CHECK(hn < prev);
    prev = hn;
    for (const head_stats& hs : st.heads) {
      CHECK(hs.collapsed == (hs.norm_entropy_mean < 0.1));
      CHECK(hs.overloaded == (hs.norm_entropy_mean > 0.8));
      CHECK(hs.norm_entropy_min <= hs.norm_entropy_mean);
      CHECK(hs.norm_entropy_mean <= hs.norm_entropy_max);
      if (scale == 0.001) CHECK(hs.overloaded);
      if (scale == 50.0) CHECK(hs.collapsed);
      // sink rate: fraction of rows with first_prob > 0.3, recomputed.
      index_t sink_rows = 0;
      for (index_t i = 0; i < p.Lq; ++i) sink_rows += st.first_prob[static_cast<std::size_t>(st.index(0, hs.head, i))] > 0.3;
      CHECK(hs.sink_rate == Approx(static_cast<double>(sink_rows) / static_cast<double>(p.Lq)));
    }
  }
}

TEST_CASE("entropy observer: a strong first key is detected as an attention sink", "[observe][sinks]") {
  problem p(1, 2, 2, 40, 90, 16, 16, 9);
  // Key 0 of head 0 aligned with every query: large logit for key 0.
  for (index_t d = 0; d < p.D; ++d) {
    float s = 0;
    for (index_t i = 0; i < p.Lq; ++i) s += p.q[static_cast<std::size_t>(i * p.D + d)];
    p.k[static_cast<std::size_t>(d)] = s;
  }
  std::vector<float> out(p.out_size());
  entropy_stats st;
  attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), options{}, observe(st));
  const head_stats &h0 = st.head(0, 0), &h1 = st.head(0, 1);
  INFO("sink mass h0 " << h0.sink_mass << " rate " << h0.sink_rate << "; h1 " << h1.sink_mass);
  CHECK(h0.sink_rate > 0.5);
  CHECK(h0.sink_mass > 0.3);
  CHECK(h1.sink_rate < 0.2);
}

TEST_CASE("entropy observer: sigmoid reports the entropy of the normalised weights and the row mass", "[observe][sigmoid]") {
  for (index_t Lq : {index_t{2}, index_t{59}}) {  // decode and quadratic paths
    problem p(2, 2, 1, Lq, 1100, 40, 40, 23);
    std::vector<float> out(p.out_size());
    const std::vector<std::int64_t> kl{1100, 700};
    options o;
    o.causal = causal::bottom_right;
    o.key_lengths = kl;
    entropy_stats st({.top_k = 4});
    attention(sigmoid{}, p.qv(), p.kv(), p.vv(), p.ov(out), o, observe(st));
    require_contract(st, p);
    CHECK_FALSE(st.normalized);
    INFO("Lq " << Lq);
    compare_rows(st, p,
                 [&](index_t b, index_t h, index_t i) {
                   return ref_sigmoid(p, o, b, h, i, -std::log(static_cast<double>(kl[static_cast<std::size_t>(b)])));
                 },
                 false);
    // Not available for unnormalised rows (the policy bias is not visible to the observer).
    CHECK(std::isnan(st.first_prob[0]));
    CHECK(std::isnan(st.topk_mass[0]));
    CHECK(std::isnan(st.heads[0].sink_mass));
  }
}

TEST_CASE("entropy of two kernel calls over disjoint key halves merges into the unsplit result", "[observe][merge]") {
  auto slice = [](tensor_view<const float> t, index_t from, index_t len) {
    t.data += from * t.stride[seq_axis];
    t.extent[seq_axis] = len;
    return t;
  };
  for (index_t Lq : {index_t{1}, index_t{77}}) {
    problem p(2, 4, 2, Lq, 1300, 40, 24, 31);
    std::vector<float> o0(p.out_size()), o1(p.out_size()), o2(p.out_size());
    const index_t a = 555;
    for (int pol = 0; pol < 2; ++pol) {
      entropy_stats whole, s1, s2;
      if (pol == 0) {
        attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(o0), {}, observe(whole));
        attention(softmax{}, p.qv(), slice(p.kv(), 0, a), slice(p.vv(), 0, a), p.ov(o1), {}, observe(s1));
        attention(softmax{}, p.qv(), slice(p.kv(), a, p.Lk - a), slice(p.vv(), a, p.Lk - a), p.ov(o2), {}, observe(s2));
      } else {  // fixed bias: the same weights in the parts as in the whole
        const sigmoid sg{.bias = -3.0f};
        attention(sg, p.qv(), p.kv(), p.vv(), p.ov(o0), {}, observe(whole));
        attention(sg, p.qv(), slice(p.kv(), 0, a), slice(p.vv(), 0, a), p.ov(o1), {}, observe(s1));
        attention(sg, p.qv(), slice(p.kv(), a, p.Lk - a), slice(p.vv(), a, p.Lk - a), p.ov(o2), {}, observe(s2));
      }
      const entropy_stats m = entropy_merge(s1, s2);
      INFO("Lq " << Lq << " policy " << (pol ? "sigmoid" : "softmax"));
      REQUIRE(m.size() == whole.size());
      const double tol = 1e-4 * std::log(static_cast<double>(p.Lk));
      for (std::size_t u = 0; u < m.allowed.size(); ++u) {
        CHECK(m.allowed[u] == whole.allowed[u]);
        CHECK(std::abs(m.entropy[u] - whole.entropy[u]) <= tol);
        CHECK(std::abs(m.norm_entropy[u] - whole.norm_entropy[u]) <= 1e-4);
        CHECK(std::abs(m.lse[u] - whole.lse[u]) <= 1e-4 * (1 + std::abs(whole.lse[u])));
        CHECK(std::abs(m.mass[u] - whole.mass[u]) <= 1e-4 * std::max(1.0, whole.mass[u]));
        if (pol == 0) CHECK(std::abs(m.first_prob[u] - whole.first_prob[u]) <= 1e-5);
      }
      for (std::size_t k = 0; k < m.heads.size(); ++k)
        CHECK(std::abs(m.heads[k].norm_entropy_mean - whole.heads[k].norm_entropy_mean) <= 1e-4);
    }
  }
}

TEST_CASE("null observer and entropy observer give bitwise identical outputs", "[observe]") {
  problem p(1, 4, 2, 70, 600, 64, 64, 3);
  std::vector<float> a(p.out_size()), b(p.out_size());
  options o;
  o.causal = causal::bottom_right;
  attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(a), o);
  entropy_stats st({.top_k = 8});
  attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(b), o, observe(st));
  CHECK(a == b);
  {  // a long block-sparse call: chunks gather visited tiles across L2 spans
    problem lp(1, 2, 1, 40, 2300, 64, 64, 5);
    std::vector<char> layout(3 * 36);
    for (std::size_t i = 0; i < layout.size(); ++i) layout[i] = (i * 5) % 7 < 4;
    const sparse bs{pattern::block_sparse{reinterpret_cast<const bool*>(layout.data()), 16, 64, 3, 36}};
    std::vector<float> la(lp.out_size()), lb(lp.out_size());
    attention(bs, lp.qv(), lp.kv(), lp.vv(), lp.ov(la), {});
    entropy_stats ls;
    attention(bs, lp.qv(), lp.kv(), lp.vv(), lp.ov(lb), {}, observe(ls));
    CHECK(la == lb);
  }
  // The observer can also be passed as an lvalue and reused; each call resets it.
  auto obs = observe(st);
  attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(b), o, obs);
  attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(b), o, obs);
  CHECK(st.begin_calls == 3);
  CHECK(st.rows_reported == p.B * p.Hq * p.Lq);
  CHECK(st.rows_missing == 0);
}

TEST_CASE("row_entropy_of on hand-made row states", "[observe]") {
  row_state st;
  st.allowed = 0;
  st.max = -inf;
  CHECK(std::isnan(row_entropy_of(st).entropy));
  // Uniform over 8 keys: l = 8, t = 0 → H = log 8, Ĥ = 1.
  st.allowed = 8;
  st.max = 1.5;
  st.sum = 8;
  st.tsum = 0;
  st.first_logit = 1.5;
  auto r = row_entropy_of(st);
  CHECK(r.entropy == Approx(std::log(8.0)));
  CHECK(r.norm_entropy == Approx(1.0));
  CHECK(r.lse == Approx(1.5 + std::log(8.0)));
  CHECK(r.first_prob == Approx(0.125));
  // One key: Ĥ = 0.
  st.allowed = 1;
  st.sum = 1;
  r = row_entropy_of(st);
  CHECK(r.entropy == 0.0);
  CHECK(r.norm_entropy == 0.0);
  // One key + a sink of equal logit: two equiprobable categories.
  st.sink_logit_mass = 1.0;
  r = row_entropy_of(st);
  CHECK(r.entropy == Approx(std::log(2.0)));
  CHECK(r.norm_entropy == Approx(1.0));
  CHECK(r.mass == Approx(0.5));
  // Sink far above the keys (σ = e^{30}): re-centred, no cancellation.
  st.allowed = 4;
  st.sum = 4;
  st.sink_logit_mass = std::exp(30.0);
  r = row_entropy_of(st);
  const double pk = 4 / (4 + std::exp(30.0)), ps = 1 - pk;
  CHECK(r.entropy == Approx(-pk * std::log(pk / 4) - ps * std::log1p(-pk)).epsilon(1e-9));
}

TEST_CASE("entropy summaries: Ĥ statistics use rows with ≥ 2 categories, H statistics rows with ≥ 1",
          "[observe][summary]") {
  // Causal self-attention: row 0 sees one key, so its Ĥ = H / log 1 is undefined
  // (stored as 0). Counting it would pin norm_entropy_min at 0 for every head and
  // pull the mean down; the summaries must leave it out of Ĥ, but not out of H.
  problem p(2, 3, 1, 40, 40, 32, 32, 41, 0.7f);
  std::vector<float> out(p.out_size());
  options o;
  o.causal = causal::top_left;
  entropy_stats st;
  attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o, observe(st));
  require_contract(st, p);
  double all_sum = 0, all_n = 0;
  for (index_t b = 0; b < p.B; ++b)
    for (index_t h = 0; h < p.Hq; ++h) {
      const head_stats& hs = st.head(b, h);
      INFO("b " << b << " h " << h);
      CHECK(hs.rows == p.Lq);
      CHECK(hs.norm_rows == p.Lq - 1);
      double hn_sum = 0, hn_min = inf, h_sum = 0;
      for (index_t i = 0; i < p.Lq; ++i) {
        const auto u = static_cast<std::size_t>(st.index(b, h, i));
        h_sum += st.entropy[u];
        if (i == 0) continue;  // n = 1
        hn_sum += st.norm_entropy[u];
        hn_min = std::min(hn_min, st.norm_entropy[u]);
      }
      all_sum += hn_sum, all_n += static_cast<double>(p.Lq - 1);
      CHECK(hs.entropy_min == 0.0);  // row 0: H = 0 is a well-defined entropy
      CHECK(hs.entropy_mean == Approx(h_sum / static_cast<double>(p.Lq)).epsilon(1e-12));
      CHECK(hs.norm_entropy_min > 0.0);
      CHECK(hs.norm_entropy_min == hn_min);
      CHECK(hs.norm_entropy_mean == Approx(hn_sum / static_cast<double>(p.Lq - 1)).epsilon(1e-12));
    }
  CHECK(st.mean_norm_entropy() == Approx(all_sum / all_n).epsilon(1e-12));
  for (const head_stats& hs : st.pooled_heads) CHECK(hs.norm_rows == p.B * (p.Lq - 1));

  SECTION("a sink makes row 0 a two-category distribution: it counts") {
    const std::vector<float> sinks{0.0f, 1.0f, -1.0f};
    o.sinks = sinks;
    entropy_stats ss;
    attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o, observe(ss));
    for (const head_stats& hs : ss.heads) {
      CHECK(hs.norm_rows == p.Lq);
      CHECK(hs.norm_entropy_min > 0.0);
    }
  }
  SECTION("every row with one key: no Ĥ statistics, no flags, H statistics still there") {
    o.window = {0, 0};  // the diagonal only
    entropy_stats sd;
    attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o, observe(sd));
    for (const head_stats& hs : sd.heads) {
      CHECK(hs.rows == p.Lq);
      CHECK(hs.norm_rows == 0);
      CHECK(hs.entropy_mean == 0.0);
      CHECK(std::isnan(hs.norm_entropy_mean));
      CHECK(std::isnan(hs.norm_entropy_min));
      CHECK_FALSE(hs.collapsed);  // one key per row is not "collapsed attention"
      CHECK_FALSE(hs.overloaded);
    }
    CHECK(std::isnan(sd.mean_norm_entropy()));
    CHECK(sd.mean_entropy() == 0.0);
    CHECK(std::isnan(sd.spread));
    // Sink statistics count every row with a key: only row 0 puts weight on key 0
    // (mean 1/Lq < ε), so no head is a sink head, and the rate is defined.
    CHECK(sd.sink_head_rate == 0.0);
  }
}
