// Training features of the kernels: dropout in the forward kernels (prefill, decode,
// patterns, permutation) and the backward, the fused entropy regulariser (AEM, EAR,
// band penalty) against the oracle's unfused path, bitwise determinism over thread
// counts and repeated calls, accumulation, exact zeros, NaN propagation and
// validation (nothing written on a bad call).
// Tolerances: forward out ≤ 2e-5·max|oracle| (as the forward tests); backward
// max |kernel − oracle| ≤ 1e-4 · max |oracle| per tensor (backward_kernel.hpp).
#include <cstring>

#include "backward_kernel.hpp"
#include "oracle.hpp"

using namespace attnkit;
using bwdk::layout;
using bwdk::problem;
using A = simd::default_arch;

namespace {

/// The kernel's gradients of one call (forward kernel for out and lse, then backward).
struct grads {
  std::vector<float> q, k, v, sinks, bias;
  bool operator==(const grads& o) const {
    auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
      // memcmp with the null data() of an empty vector is undefined (UBSan stops on it).
      return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
    };
    return same(q, o.q) && same(k, o.k) && same(v, o.v) && same(sinks, o.sinks) && same(bias, o.bias);
  }
};

template <class P>
grads kernel_grads(const P& pol, const problem& p, options opt, int threads, backward_options bo = {}) {
  const auto q = p.view(static_cast<const float*>(p.q.data()), p.Hq, p.Lq, p.D);
  const auto k = p.view(static_cast<const float*>(p.k.data()), p.Hkv, p.Lk, p.D);
  const auto v = p.view(static_cast<const float*>(p.v.data()), p.Hkv, p.Lk, p.Dv);
  const auto dout = p.view(static_cast<const float*>(p.dout.data()), p.Hq, p.Lq, p.Dv);
  std::vector<float> out(p.out_size()), lse(static_cast<std::size_t>(p.B * p.Hq * p.Lq));
  opt.lse = softmax_normalized<P>() ? lse.data() : nullptr;
  opt.num_threads = 1;
  attention<A>(pol, q, k, v, p.view(out.data(), p.Hq, p.Lq, p.Dv), opt);
  opt.num_threads = threads;
  grads g{std::vector<float>(p.q.size(), 5.0f), std::vector<float>(p.k.size(), 5.0f),
          std::vector<float>(p.v.size(), 5.0f), {}, {}};
  if (!opt.sinks.empty()) g.sinks.assign(opt.sinks.size(), 5.0f), bo.dsinks = g.sinks.data();
  if (opt.bias.data) {
    const auto& e = opt.bias.extent;
    g.bias.assign(static_cast<std::size_t>(e[0] * e[1] * e[2] * e[3]), 5.0f);
    bo.dbias = bhsd(g.bias.data(), e[0], e[1], e[2], e[3]);
  }
  attention_backward<A>(pol, q, k, v, p.view(static_cast<const float*>(out.data()), p.Hq, p.Lq, p.Dv), opt.lse, dout,
                        p.view(g.q.data(), p.Hq, p.Lq, p.D), p.view(g.k.data(), p.Hkv, p.Lk, p.D),
                        p.view(g.v.data(), p.Hkv, p.Lk, p.Dv), opt, bo);
  return g;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("dropout in the forward kernels equals the oracle's", "[dropout][forward]",
                        attnkit_test::best_archs) {
  using attnkit_test::compare_with_oracle;
  const attnkit_test::problem p(2, 4, 2, 97, 131, 40, 24, 7);
  const attnkit_test::problem dec(2, 4, 2, 3, 700, 32, 16, 8);  // decode path: split over key chunks
  for (float rate : {0.1f, 0.5f}) {
    options o;
    o.dropout = {rate, 1234, 5};
    for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
      o.causal = c;
      INFO("p " << rate << " causal " << static_cast<int>(c) << " arch " << simd::arch_name<TestType>());
      const auto e = compare_with_oracle<TestType>(softmax{}, p, o, true);
      CHECK(e.out <= 2e-5);
      CHECK(e.lse <= 2e-5);  // the LSE of the weights before dropout
      CHECK(compare_with_oracle<TestType>(softmax{}, dec, o, true).out <= 2e-5);
      CHECK(compare_with_oracle<TestType>(sigmoid{}, p, o).out <= 2e-5);
      CHECK(compare_with_oracle<TestType>(sparse{pattern::sliding_window{30, 4}}, p, o, true).out <= 2e-5);
    }
  }
  stochastic_permutation perm;
  perm.window = 30;
  perm.seed = 3;
  options d;
  d.dropout = {0.3f, 9, 1};
  const attnkit_test::problem self(1, 4, 2, 120, 120, 16, 16, 9);
  CHECK(compare_with_oracle<TestType>(perm, self, d, true).out <= 2e-5);  // rank space: original (i, j) draw
}

TEST_CASE("dropout: forward and backward kernels are bitwise identical for any thread count", "[dropout]") {
  const problem p(2, 4, 2, 150, 170, 32, 32, 10);
  options o;
  o.dropout = {0.25f, 77, 2};
  o.causal = causal::bottom_right;
  std::vector<float> ref;
  for (int t : {1, 2, 3, 16}) {
    std::vector<float> out(p.out_size());
    o.num_threads = t;
    attention<A>(softmax{}, p.view(static_cast<const float*>(p.q.data()), p.Hq, p.Lq, p.D),
                 p.view(static_cast<const float*>(p.k.data()), p.Hkv, p.Lk, p.D),
                 p.view(static_cast<const float*>(p.v.data()), p.Hkv, p.Lk, p.Dv), p.view(out.data(), p.Hq, p.Lq, p.Dv), o);
    if (ref.empty()) ref = out;
    CHECK(std::memcmp(ref.data(), out.data(), ref.size() * sizeof(float)) == 0);
  }
  const grads g1 = kernel_grads(softmax{}, p, o, 1);
  for (int t : {2, 3, 16}) CHECK(kernel_grads(softmax{}, p, o, t) == g1);
  // A different offset drops differently.
  options o2 = o;
  o2.dropout.offset = 3;
  CHECK_FALSE(kernel_grads(softmax{}, p, o2, 1) == g1);
}

TEST_CASE("dropout in the backward kernels matches the oracle", "[dropout][backward]") {
  const problem p(2, 4, 2, 97, 131, 40, 24, 11);
  for (float rate : {0.1f, 0.6f}) {
    options o;
    o.dropout = {rate, 42, 0};
    o.causal = causal::top_left;
    bwdk::check(bwdk::compare<A>(softmax{}, p, o), "softmax + dropout " + std::to_string(rate));
    o.sinks = p.sinks;
    o.window = {30, 5};
    bwdk::check(bwdk::compare<A>(softmax{}, p, o), "softmax + dropout + sinks + window");
    bwdk::check(bwdk::compare<A>(sigmoid{}, p, {.dropout = {rate, 5, 1}}), "sigmoid + dropout");
  }
  const problem dec(1, 8, 2, 2, 900, 32, 32, 12);
  bwdk::check(bwdk::compare<A>(softmax{}, dec, {.dropout = {0.3f, 1, 1}}), "decode shape + dropout");
}

// λ is of the order of the call's row count (λ/N ≈ 0.4), so the regulariser's share of
// dS is of the order of the attention's: a missing or wrong term fails by far.
TEST_CASE("the fused regulariser equals the oracle's unfused path", "[backward][regularizer]") {
  const problem p(2, 4, 2, 90, 120, 32, 24, 20);
  const double theta[4] = {1.0, 2.5, 3.0, 4.5};
  const double low[4] = {0.5, 0.5, 0.5, 0.5};
  for (causal c : {causal::none, causal::bottom_right}) {
    options o;
    o.causal = c;
    for (const regularizer& reg :
         {regularizer::mean_entropy(300.0), regularizer::negative_entropy(500.0),
          regularizer::entropy_band(theta, band_config{100.0, 0.1, 0.0, band_config::shape::squared}),
          regularizer::entropy_band(low, band_config{200.0, 0.05, 3.0, band_config::shape::hinge})}) {
      backward_options bo;
      bo.reg = reg;
      const std::string what = "regulariser " + std::to_string(static_cast<int>(reg.kind)) + " causal " +
                               std::to_string(static_cast<int>(c));
      bwdk::check(bwdk::compare<A>(softmax{}, p, o, bo), what);
      options s = o;
      s.sinks = p.sinks;  // p̃ renormalised without the sink
      s.softcap = 4.0f;
      bwdk::check(bwdk::compare<A>(softmax{}, p, s, bo), what + " + sinks + softcap");
    }
  }
  backward_options bo;
  bo.reg = regularizer::mean_entropy(300.0);
  options m;
  std::vector<char> mask(static_cast<std::size_t>(90 * 120));
  for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = (i * 40503u) % 3 != 0;
  for (index_t j = 0; j < 120; ++j) mask[static_cast<std::size_t>(4 * 120 + j)] = 0;  // a row with no key: not counted
  m.mask = strided(reinterpret_cast<const bool*>(mask.data()), {1, 1, 90, 120}, {0, 0, 120, 1});
  m.dropout = {0.2f, 3, 3};  // dropout does not enter H
  bwdk::check(bwdk::compare<A>(softmax{}, p, m, bo), "AEM + mask (an empty row) + dropout");
  bwdk::check(bwdk::compare_o<A>(sparse{pattern::sliding_window{25, 3}}, p, {}, bo), "AEM + sliding window");
  bwdk::check(bwdk::compare_o<A>(sparse{pattern::top_k{10}}, p, {}, bo), "AEM + top_k");
  stochastic_permutation perm;
  perm.window = 30;
  const problem self(1, 2, 1, 100, 100, 16, 16, 21);
  bwdk::check(bwdk::compare_o<A>(perm, self, {}, bo), "AEM + permutation");
}

TEST_CASE("backward: bitwise identical for 1, 2, 3 and 16 threads and repeated calls", "[backward][determinism]") {
  const problem p(2, 4, 2, 200, 260, 40, 24, 30);
  const auto bias = attnkit_test::randn(static_cast<std::size_t>(200 * 260), 31);
  options o;
  o.causal = causal::bottom_right;
  o.sinks = p.sinks;
  o.bias = strided(bias.data(), {1, 1, 200, 260}, {0, 0, 260, 1});  // d bias summed over batches and heads
  backward_options bo;
  bo.reg = regularizer::mean_entropy(0.5);
  const grads ref = kernel_grads(softmax{}, p, o, 1, bo);
  for (int t : {2, 3, 16}) CHECK(kernel_grads(softmax{}, p, o, t, bo) == ref);
  CHECK(kernel_grads(softmax{}, p, o, 2, bo) == ref);  // repeated
  // One kv head: its keys split into parts (dQ partials summed in part order).
  const problem one(1, 2, 1, 300, 1200, 32, 32, 32);
  const grads r1 = kernel_grads(softmax{}, one, {}, 1);
  for (int t : {2, 3, 16}) CHECK(kernel_grads(softmax{}, one, {}, t) == r1);
  const grads s1 = kernel_grads(sparse{pattern::top_k{7}}, one, {}, 1);
  for (int t : {2, 3}) CHECK(kernel_grads(sparse{pattern::top_k{7}}, one, {}, t) == s1);
  const grads w1 = kernel_grads(sigmoid{}, p, {.causal = causal::top_left}, 1);
  CHECK(kernel_grads(sigmoid{}, p, {.causal = causal::top_left}, 16) == w1);
}

TEST_CASE("backward: accumulate adds to dq, dk, dv, d sinks and d bias", "[backward]") {
  const problem p(1, 4, 2, 70, 90, 24, 16, 40);
  const auto bias = attnkit_test::randn(static_cast<std::size_t>(4 * 70 * 90), 41);
  options o;
  o.sinks = p.sinks;
  o.bias = bhsd(bias.data(), 1, 4, 70, 90);
  const grads plain = kernel_grads(softmax{}, p, o, 2);
  backward_options acc;
  acc.accumulate = true;
  const grads added = kernel_grads(softmax{}, p, o, 2, acc);  // kernel_grads pre-fills every output with 5
  // b = 5 + a up to the rounding of one add (the kernel may fuse its last scaling
  // into the add: one rounding instead of two).
  auto check_added = [](const std::vector<float>& a, const std::vector<float>& b) {
    for (std::size_t i = 0; i < a.size(); ++i) REQUIRE(std::abs(b[i] - (5.0f + a[i])) <= 0x1p-22f * std::abs(5.0f + a[i]));
  };
  check_added(plain.q, added.q);
  check_added(plain.k, added.k);
  check_added(plain.v, added.v);
  check_added(plain.sinks, added.sinks);
  check_added(plain.bias, added.bias);
}

TEST_CASE("backward: exact zeros for rows and keys without a visible pair, never NaN", "[backward][zeros]") {
  problem p(2, 2, 1, 40, 100, 16, 16, 50);
  const std::int64_t lens[2] = {0, 60};
  options o;
  o.key_lengths = lens;  // batch 0: no key at all; batch 1: keys 60… padded
  o.causal = causal::bottom_right;
  o.masked_rows = masked_rows::nan;
  o.sinks = p.sinks;
  for (std::size_t i = 0; i < p.dout.size(); i += 7) p.dout[i] = std::numeric_limits<float>::quiet_NaN();
  // NaN in dO rows that see no key must not matter; give every other row finite dO.
  const index_t D = p.Dv;
  for (index_t h = 0; h < p.Hq; ++h)
    for (index_t i = 0; i < p.Lq; ++i)
      for (index_t d = 0; d < D; ++d) {
        float& x = p.dout[static_cast<std::size_t>(((1 * p.Hq + h) * p.Lq + i) * D + d)];
        if (std::isnan(x)) x = 0.5f;
      }
  const auto r = bwdk::compare<A>(softmax{}, p, o);
  bwdk::check(r, "key lengths {0, 60}, NaN dO in empty rows, NaN fill, sinks");
  const std::size_t half_q = p.q.size() / 2, half_k = p.k.size() / 2;
  for (std::size_t i = 0; i < half_q; ++i) REQUIRE(r.gq[i] == 0.0f);  // batch 0
  for (std::size_t i = 0; i < half_k; ++i) REQUIRE(r.gk[i] == 0.0f);
  for (index_t j = 60; j < p.Lk; ++j)  // batch 1, padded keys
    for (index_t d = 0; d < p.D; ++d) REQUIRE(r.gk[half_k + static_cast<std::size_t>(j * p.D + d)] == 0.0f);
  for (float x : r.gq) REQUIRE(std::isfinite(x));
  for (float x : r.gv) REQUIRE(std::isfinite(x));
  REQUIRE(std::isfinite(r.gsinks[0]));
  // Keys no query sees (a window): dk, dv exactly 0; NaN there (a garbage cache row) stays out.
  problem w(1, 2, 2, 30, 200, 16, 16, 51);
  for (index_t d = 0; d < w.D; ++d) w.k[static_cast<std::size_t>(150 * w.D + d)] = std::numeric_limits<float>::quiet_NaN();
  options win;
  win.window = {10, 0};
  win.causal = causal::bottom_right;  // rows see keys 160…199
  const auto rw = bwdk::compare<A>(softmax{}, w, win);
  bwdk::check(rw, "window: unseen keys, one of them NaN");
  for (index_t h = 0; h < 2; ++h)
    for (index_t j = 0; j < 150; ++j) REQUIRE(rw.gv[static_cast<std::size_t>((h * 200 + j) * 16)] == 0.0f);
}

TEST_CASE("backward: NaN in q, k, v or dout propagates where the oracle's does", "[backward][nan]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (int where = 0; where < 4; ++where) {
    problem p(1, 2, 1, 50, 70, 16, 16, 60 + static_cast<std::uint32_t>(where));
    std::vector<float>& t = where == 0 ? p.q : where == 1 ? p.k : where == 2 ? p.v : p.dout;
    t[static_cast<std::size_t>(13 * 16 + 3)] = nan;  // row 13 of head 0
    options o;
    o.causal = causal::top_left;
    const auto r = bwdk::compare<A>(softmax{}, p, o);  // compare() checks the NaN placement element by element
    bwdk::check(r, "NaN in tensor " + std::to_string(where));
    std::size_t nans = 0;
    for (float x : r.gq) nans += std::isnan(x);
    CHECK(nans > 0);
  }
}

TEST_CASE("backward validation: every argument checked before any gradient byte is written", "[backward][validation]") {
  const problem p(1, 2, 1, 8, 10, 4, 4, 70);
  std::vector<float> out(p.out_size(), 0.0f), lse(16, 0.0f), dq(p.q.size(), 3.0f), dk(p.k.size(), 3.0f),
      dv(p.v.size(), 3.0f), dsinks(2, 3.0f);
  const auto q = bhsd(static_cast<const float*>(p.q.data()), 1, 2, 8, 4);
  const auto k = bhsd(static_cast<const float*>(p.k.data()), 1, 1, 10, 4);
  const auto v = bhsd(static_cast<const float*>(p.v.data()), 1, 1, 10, 4);
  const auto o = bhsd(static_cast<const float*>(out.data()), 1, 2, 8, 4);
  const auto dO = bhsd(static_cast<const float*>(p.dout.data()), 1, 2, 8, 4);
  auto gq = bhsd(dq.data(), 1, 2, 8, 4);
  auto gk = bhsd(dk.data(), 1, 1, 10, 4), gv = bhsd(dv.data(), 1, 1, 10, 4);
  auto expect_fail = [&](const std::string& arg, auto&& call) {
    try {
      call();
      FAIL("accepted; expected a failure on " << arg);
    } catch (const invalid_argument_error& e) {
      CHECK(e.argument() == arg);
    }
    for (float x : dq) REQUIRE(x == 3.0f);
    for (float x : dk) REQUIRE(x == 3.0f);
    for (float x : dv) REQUIRE(x == 3.0f);
    for (float x : dsinks) REQUIRE(x == 3.0f);
  };
  expect_fail("lse", [&] { attention_backward(softmax{}, q, k, v, o, nullptr, dO, gq, gk, gv); });
  expect_fail("lse", [&] { attention_backward(sigmoid{}, q, k, v, o, lse.data(), dO, gq, gk, gv); });
  expect_fail("dq", [&] { attention_backward(softmax{}, q, k, v, o, lse.data(), dO, bhsd(dq.data(), 1, 2, 7, 4), gk, gv); });
  expect_fail("dk", [&] { attention_backward(softmax{}, q, k, v, o, lse.data(), dO, gq, strided(dk.data(), {1, 1, 10, 4}, {40, 40, 0, 1}), gv); });
  expect_fail("dq", [&] {
    auto alias = bhsd(const_cast<float*>(p.q.data()), 1, 2, 8, 4);
    attention_backward(softmax{}, q, k, v, o, lse.data(), dO, alias, gk, gv);
  });
  expect_fail("dq", [&] { attention_backward(softmax{}, q, k, v, o, lse.data(), dO, strided(dq.data(), {1, 2, 8, 4}, {64, 32, 8, 2}), gk, gv); });
  expect_fail("backward_options.dsinks", [&] {
    backward_options bo;
    bo.dsinks = dsinks.data();
    attention_backward(softmax{}, q, k, v, o, lse.data(), dO, gq, gk, gv, {}, bo);
  });
  expect_fail("backward_options.reg", [&] {
    backward_options bo;
    bo.reg = regularizer::mean_entropy(1.0);
    attention_backward(sigmoid{}, q, k, v, o, nullptr, dO, gq, gk, gv, {}, bo);
  });
  expect_fail("options.dropout", [&] {
    options d;
    d.dropout.p = 1.0f;
    attention_backward(softmax{}, q, k, v, o, lse.data(), dO, gq, gk, gv, d);
  });
  expect_fail("options.window", [&] {
    options w;
    w.window = {-3, 0};
    attention_backward(sparse{pattern::sliding_window{2, 2}}, q, k, v, o, lse.data(), dO, gq, gk, gv, w);
  });
  expect_fail("options.positions", [&] {
    options w;
    w.positions = positions{0, 0};
    attention_backward(sparse{pattern::sliding_window{2, 2}}, q, k, v, o, lse.data(), dO, gq, gk, gv, w);
  });
}
