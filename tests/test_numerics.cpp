// Numerical edge cases: NaN in q or k reaches exactly the rows that see it,
// logits of ±1e4 stay finite, D = 1 and N = 1 work, and the decode path keeps a
// masked key's non-finite V out, on every compiled arch.
#include <catch2/catch.hpp>

#include <limits>

#include "support.hpp"

using namespace attnkit;

namespace {
template <class Arch>
std::vector<bool> nan_rows(index_t Lq, index_t Lk, const char* where, index_t at) {
  const index_t D = 16;
  std::vector<float> q(static_cast<std::size_t>(Lq * D), 0.1f), k(static_cast<std::size_t>(Lk * D), 0.2f),
      v(static_cast<std::size_t>(Lk * D), 1.0f), o(static_cast<std::size_t>(Lq * D));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  if (std::string(where) == "q") q[static_cast<std::size_t>(at * D + 2)] = nan;
  if (std::string(where) == "k") k[static_cast<std::size_t>(at * D + 1)] = nan;
  options opt;
  opt.causal = causal::top_left;
  attention<Arch>(softmax{}, bhsd(q.data(), 1, 1, Lq, D), bhsd(k.data(), 1, 1, Lk, D), bhsd(v.data(), 1, 1, Lk, D),
                  bhsd(o.data(), 1, 1, Lq, D), opt);
  std::vector<bool> rows(static_cast<std::size_t>(Lq));
  for (index_t i = 0; i < Lq; ++i)
    for (index_t d = 0; d < D; ++d) rows[static_cast<std::size_t>(i)] = rows[static_cast<std::size_t>(i)] || std::isnan(o[static_cast<std::size_t>(i * D + d)]);
  return rows;
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("NaN in q or k propagates to exactly the rows that see it", "[numerics]", attnkit_test::archs) {
  for (index_t L : {index_t{100}, index_t{1}}) {
    const auto rq = nan_rows<TestType>(L, L, "q", L > 3 ? 3 : 0);
    for (index_t i = 0; i < L; ++i) CHECK(rq[static_cast<std::size_t>(i)] == (i == (L > 3 ? 3 : 0)));
    const index_t j = L > 5 ? 5 : 0;
    const auto rk = nan_rows<TestType>(L, L, "k", j);
    for (index_t i = 0; i < L; ++i) CHECK(rk[static_cast<std::size_t>(i)] == (i >= j));  // causal: rows i >= j see key j
  }
}

TEMPLATE_LIST_TEST_CASE("huge logits stay finite; D = 1 and N = 1 work", "[numerics]", attnkit_test::archs) {
  attnkit_test::problem p(1, 2, 1, 33, 47, 1, 3, 5, 100.0f);  // |q·k| up to ~1e4
  std::vector<float> out(p.out_size());
  for (causal c : {causal::none, causal::bottom_right}) {
    options o;
    o.causal = c;
    attention<TestType>(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o);
    for (float x : out) CHECK(std::isfinite(x));
    attention<TestType>(sigmoid{}, p.qv(), p.kv(), p.vv(), p.ov(out), o);
    for (float x : out) CHECK(std::isfinite(x));
  }
  attnkit_test::problem one(1, 1, 1, 1, 1, 4, 4, 6);
  std::vector<float> o1(4);
  attention<TestType>(softmax{}, one.qv(), one.kv(), one.vv(), one.ov(o1));
  for (int d = 0; d < 4; ++d) CHECK(o1[static_cast<std::size_t>(d)] == Approx(one.v[static_cast<std::size_t>(d)]));
}

TEMPLATE_LIST_TEST_CASE("decode: NaN/Inf in V of a masked key does not leak (0·NaN)", "[numerics][decode]",
                        attnkit_test::archs) {
  // Two query rows (the split-KV decode path), 700 keys (two 512-key chunks), bottom-right
  // causal: row 0 sees keys 0..698, row 1 sees 0..699. Key 699 shares row 0's chunk.
  const index_t Lq = 2, Lk = 700, D = 16;
  attnkit_test::problem p(1, 1, 1, Lq, Lk, D, D, 31);
  options opt;
  opt.causal = causal::bottom_right;
  std::vector<float> clean(p.out_size());
  for (const float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    INFO("V[699][4] = " << bad);
    attnkit_test::problem pb = p;
    pb.v[static_cast<std::size_t>(699 * D + 4)] = bad;
    std::vector<float> out(p.out_size()), base(p.out_size());
    attention<TestType>(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(base), opt);
    attention<TestType>(softmax{}, pb.qv(), pb.kv(), pb.vv(), pb.ov(out), opt);
    // Row 0 is recomputed on the zero-skipping path (another summation order), so it
    // equals the clean result to rounding, at the oracle tests' tolerance.
    for (index_t d = 0; d < D; ++d)
      CHECK(std::abs(out[static_cast<std::size_t>(d)] - base[static_cast<std::size_t>(d)]) <= 2e-5 * attnkit_test::max_abs(base));
    CHECK(!std::isfinite(out[static_cast<std::size_t>(D + 4)]));
    attention<TestType>(sigmoid{}, p.qv(), p.kv(), p.vv(), p.ov(base), opt);
    attention<TestType>(sigmoid{}, pb.qv(), pb.kv(), pb.vv(), pb.ov(out), opt);
    // Row 0 is recomputed on the zero-skipping path (another summation order), so it
    // equals the clean result to rounding, at the oracle tests' tolerance.
    for (index_t d = 0; d < D; ++d)
      CHECK(std::abs(out[static_cast<std::size_t>(d)] - base[static_cast<std::size_t>(d)]) <= 2e-5 * attnkit_test::max_abs(base));
    CHECK(!std::isfinite(out[static_cast<std::size_t>(D + 4)]));
  }
}
