// Softmax kernel vs the float64 oracle on every compiled arch: odd shapes (Lq≠Lk,
// tails of every tile size), D in {16, 40, 64, 80, 128, 256}, Dv≠D, GQA/MQA, BSHD
// strides, both causal alignments, windows, masks, bias, key lengths, ALiBi,
// softcap, sinks, LSE and decode shapes.
// Tolerance: max|out − oracle| ≤ 2e-5·max|oracle|; LSE relative error ≤ 2e-5.
#include <catch2/catch.hpp>

#include "oracle.hpp"

using namespace attnkit;
using attnkit_test::compare_with_oracle;
using attnkit_test::problem;

namespace {
constexpr double tol = 2e-5;

template <class Arch>
void check(const problem& p, const options& o, const std::string& what) {
  const auto e = compare_with_oracle<Arch>(softmax{}, p, o, true);
  INFO(what << " arch=" << simd::arch_name<Arch>() << " B=" << p.B << " Hq=" << p.Hq << " Hkv=" << p.Hkv
            << " Lq=" << p.Lq << " Lk=" << p.Lk << " D=" << p.D << " Dv=" << p.Dv);
  CHECK(e.out <= tol);
  CHECK(e.lse <= tol);
  CHECK_FALSE(e.nan_mismatch);
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("softmax matches the oracle: shapes, head dims, GQA", "[softmax][oracle]",
                        attnkit_test::archs) {
  const bool scalar = simd::is_scalar_v<TestType>;
  for (index_t D : {16, 40, 64, 80, 128, 256}) {
    if (scalar && D > 64) continue;  // the scalar path is slow; its logic is the same
    problem p(2, 4, 2, 61, 133, D, D == 80 ? 48 : D, 100 + static_cast<std::uint32_t>(D));
    check<TestType>(p, {}, "head dims");
  }
  check<TestType>(problem(1, 6, 1, 150, 70, 24, 40, 1), {}, "MQA, Lq > Lk, Dv > D");
  check<TestType>(problem(3, 2, 2, 1, 1, 8, 8, 2), {}, "N = 1");
  check<TestType>(problem(1, 2, 1, 5, 1030, 32, 16, 3), {}, "decode, 3 key chunks");
  check<TestType>(problem(1, 8, 2, 2, 600, 64, 64, 4), {}, "decode GQA group rows");
}

TEMPLATE_LIST_TEST_CASE("softmax matches the oracle: masks and logit terms", "[softmax][oracle]",
                        attnkit_test::archs) {
  const index_t Lq = 97, Lk = 131;
  problem p(2, 4, 2, Lq, Lk, 40, 24, 7);
  for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
    options o;
    o.causal = c;
    check<TestType>(p, o, "causal " + std::to_string(static_cast<int>(c)));
    o.window = {17, 3};
    check<TestType>(p, o, "window");
    o.window = {-1, 0};
    check<TestType>(p, o, "window right only");
  }
  const std::int64_t lens[2] = {0, 77};
  options o;
  o.key_lengths = lens;
  o.causal = causal::bottom_right;
  check<TestType>(p, o, "key lengths (batch 0 empty) + bottom-right");
  std::vector<char> mask(static_cast<std::size_t>(Lq * Lk));
  for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = (i * 2654435761u) % 5 != 0;
  mask[5 * Lk + 0] = 0;
  for (index_t j = 0; j < Lk; ++j) mask[static_cast<std::size_t>(9 * Lk + j)] = 0;  // a fully masked row
  const auto bias = attnkit_test::randn(static_cast<std::size_t>(2 * Lq * Lk), 8);
  const float slopes[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
  const float sinks[4] = {0.0f, 1.5f, -2.0f, 3.0f};
  options m;
  m.mask = strided(reinterpret_cast<const bool*>(mask.data()), {1, 1, Lq, Lk}, {0, 0, Lk, 1});
  check<TestType>(p, m, "bool mask broadcast over batch and heads");
  m.bias = strided(bias.data(), {2, 1, Lq, Lk}, {Lq * Lk, 0, Lk, 1});
  check<TestType>(p, m, "mask + bias");
  m.alibi_slopes = slopes;
  m.softcap = 3.0f;
  check<TestType>(p, m, "mask + bias + ALiBi + softcap");
  m.sinks = sinks;
  m.masked_rows = masked_rows::nan;
  check<TestType>(p, m, "everything + sinks + NaN rows");
  problem d(2, 4, 2, 1, 900, 40, 24, 9);
  options dm;
  dm.alibi_slopes = slopes;
  dm.softcap = 2.0f;
  dm.sinks = sinks;
  dm.causal = causal::bottom_right;
  dm.window = {300, 0};
  check<TestType>(d, dm, "decode with ALiBi, softcap, sinks, window");
}

TEMPLATE_LIST_TEST_CASE("softmax reads BSHD and strided views in place", "[softmax][oracle]", attnkit_test::archs) {
  const index_t B = 2, H = 4, G = 2, L = 70, D = 24;
  const auto q = attnkit_test::randn(static_cast<std::size_t>(B * L * H * D), 11);
  const auto k = attnkit_test::randn(static_cast<std::size_t>(B * L * G * D), 12);
  const auto v = attnkit_test::randn(static_cast<std::size_t>(B * L * G * D), 13);
  std::vector<float> out(static_cast<std::size_t>(B * L * H * D));
  std::vector<double> ref(out.size());
  options o;
  o.causal = causal::top_left;
  attention<TestType>(softmax{}, bshd(q.data(), B, L, H, D), bshd(k.data(), B, L, G, D), bshd(v.data(), B, L, G, D),
                      bshd(out.data(), B, L, H, D), o);
  reference::attention(softmax{}, bshd(q.data(), B, L, H, D), bshd(k.data(), B, L, G, D), bshd(v.data(), B, L, G, D),
                       bshd(ref.data(), B, L, H, D), o);
  double err = 0, mx = 0;
  for (std::size_t i = 0; i < out.size(); ++i) {
    err = std::max(err, std::abs(out[i] - ref[i]));
    mx = std::max(mx, std::abs(ref[i]));
  }
  CHECK(err <= tol * mx);
}

TEMPLATE_LIST_TEST_CASE("sigmoid matches the oracle", "[sigmoid][oracle]", attnkit_test::archs) {
  problem p(2, 4, 2, 83, 140, 40, 24, 21);
  for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
    options o;
    o.causal = c;
    for (sigmoid s : {sigmoid{}, sigmoid{.bias = 0.5f}}) {
      const auto e = compare_with_oracle<TestType>(s, p, o);
      INFO("causal " << static_cast<int>(c) << " arch " << simd::arch_name<TestType>());
      CHECK(e.out <= tol);
    }
  }
  options o;
  const float slopes[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
  o.alibi_slopes = slopes;
  o.window = {20, 20};
  CHECK(compare_with_oracle<TestType>(sigmoid{}, p, o).out <= tol);
  CHECK(compare_with_oracle<TestType>(sigmoid{}, problem(1, 4, 1, 2, 1100, 64, 64, 22), o).out <= tol);
}

TEMPLATE_LIST_TEST_CASE("banded softmax matches the oracle on both sides of the whole-strip limit", "[softmax][oracle]",
                        attnkit_test::archs) {
  // A window of at most 512 keys runs a strip at once (exact row max, one P·V
  // pass); wider windows stream tile by tile. Both, with every logit term, key
  // lengths that end inside a tile, sinks, a fully masked row and GQA.
  const index_t Lq = 301, Lk = 701;
  problem p(2, 4, 2, Lq, Lk, 40, 24, 41);
  std::vector<char> mask(static_cast<std::size_t>(Lq * Lk));
  for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = (i * 2654435761u) % 7 != 0;
  for (index_t j = 0; j < Lk; ++j) mask[static_cast<std::size_t>(11 * Lk + j)] = 0;  // a fully masked row
  const auto bias = attnkit_test::randn(static_cast<std::size_t>(Lq * Lk), 42);
  const float slopes[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
  const float sinks[4] = {0.0f, 1.5f, -2.0f, 3.0f};
  const std::int64_t lens[2] = {650, 701};
  const window windows[] = {{100, 7}, {255, 0}, {300, 211}, {400, 300}};  // bands 108 .. 701
  for (const window w : windows) {
    options o;
    o.window = w;
    o.causal = causal::bottom_right;
    check<TestType>(p, o, "window " + std::to_string(w.left) + "," + std::to_string(w.right) + " + causal");
    o.causal = causal::none;
    o.key_lengths = lens;
    o.mask = strided(reinterpret_cast<const bool*>(mask.data()), {1, 1, Lq, Lk}, {0, 0, Lk, 1});
    o.bias = strided(bias.data(), {1, 1, Lq, Lk}, {0, 0, Lk, 1});
    o.alibi_slopes = slopes;
    o.softcap = 4.0f;
    o.sinks = sinks;
    check<TestType>(p, o, "window " + std::to_string(w.left) + "," + std::to_string(w.right) + " + every term");
  }
}

TEST_CASE("huge logits: error within 2x of naive fp32 attention (FlashAttention's rule)", "[softmax][oracle]") {
  // Logits in the thousands: no overflow or NaN, and since rounding the logit itself
  // costs |s|·2^-24, the bound is relative to what plain fp32 attention achieves.
  problem p(1, 2, 1, 40, 50, 16, 16, 31, 40.0f);
  const auto e = compare_with_oracle<simd::default_arch>(softmax{}, p, {}, true);
  CHECK_FALSE(e.nan_mismatch);
  std::vector<double> ref(p.out_size());
  reference::attention(softmax{}, p.qv(), p.kv(), p.vv(), bhsd(ref.data(), p.B, p.Hq, p.Lq, p.Dv));
  double naive_err = 0, mx = 0;
  const float tau = 1.0f / std::sqrt(static_cast<float>(p.D));
  for (index_t h = 0; h < p.Hq; ++h)
    for (index_t i = 0; i < p.Lq; ++i) {
      std::vector<float> s(static_cast<std::size_t>(p.Lk));
      float m = -INFINITY, l = 0;
      for (index_t j = 0; j < p.Lk; ++j) {
        float a = 0;
        for (index_t d = 0; d < p.D; ++d) a += p.qv()(0, h, i, d) * p.kv()(0, 0, j, d);
        s[static_cast<std::size_t>(j)] = a * tau;
        m = std::max(m, a * tau);
      }
      for (auto& x : s) l += (x = std::exp(x - m));
      for (index_t d = 0; d < p.Dv; ++d) {
        float o = 0;
        for (index_t j = 0; j < p.Lk; ++j) o += s[static_cast<std::size_t>(j)] * p.vv()(0, 0, j, d);
        const double r = ref[static_cast<std::size_t>((h * p.Lq + i) * p.Dv + d)];
        naive_err = std::max(naive_err, std::abs(o / l - r));
        mx = std::max(mx, std::abs(r));
      }
    }
  INFO("kernel rel err " << e.out << ", naive fp32 rel err " << naive_err / mx);
  CHECK(e.out <= 2 * naive_err / mx + tol);
}

TEST_CASE("precise exp mode matches the oracle", "[softmax][oracle]") {
  const auto ep = compare_with_oracle<simd::default_arch>(softmax{.exp = exp_mode::precise},
                                                          problem(1, 2, 1, 40, 50, 16, 16, 32), {}, true);
  CHECK(ep.out <= tol);
  CHECK(ep.lse <= tol);
}

TEMPLATE_LIST_TEST_CASE("long key ranges: chunks, L2 spans and sparse chunks match the oracle", "[softmax][oracle]",
                        attnkit_test::archs) {
  // A strip streams long key ranges in chunks of up to 512 visited keys, inside
  // spans of key tiles that fit L2 together (16 tiles at D = 64, 8 at D = 128 on
  // AVX-512), merging each chunk's exact maximum into the row's running state.
  // Here: several spans and chunks per strip, logits that grow from chunk to chunk
  // (every chunk rescales the earlier ones) or fall (the first chunk dominates),
  // key lengths that end inside a chunk, and a block-sparse layout whose visited
  // tiles are gathered into chunks across a span, with runs of adjacent tiles.
  if (simd::is_scalar_v<TestType>) return;  // the scalar path shares the logic; 2300 keys are slow there
  const index_t Lq = 45, Lk = 2300;
  for (index_t D : {64, 128}) {
    problem p(2, 4, 2, Lq, Lk, D, D, 51 + static_cast<std::uint32_t>(D));
    check<TestType>(p, {}, "dense, D " + std::to_string(D));
    std::vector<float> rising(static_cast<std::size_t>(Lk)), falling(rising.size());
    for (index_t j = 0; j < Lk; ++j) {
      rising[static_cast<std::size_t>(j)] = 0.01f * static_cast<float>(j);
      falling[static_cast<std::size_t>(j)] = -0.01f * static_cast<float>(j);
    }
    const std::int64_t lens[2] = {1717, 2300};
    options o;
    o.bias = strided(rising.data(), {1, 1, 1, Lk}, {0, 0, 0, 1});
    o.key_lengths = lens;
    o.causal = causal::bottom_right;
    check<TestType>(p, o, "rising logits, key lengths, causal, D " + std::to_string(D));
    o.bias = strided(falling.data(), {1, 1, 1, Lk}, {0, 0, 0, 1});
    o.causal = causal::none;
    check<TestType>(p, o, "falling logits, key lengths, D " + std::to_string(D));

    const index_t nq = (Lq + 15) / 16, nk = (Lk + 63) / 64;
    std::vector<char> layout(static_cast<std::size_t>(nq * nk));
    for (index_t qb = 0; qb < nq; ++qb)
      for (index_t kb = 0; kb < nk; ++kb)  // runs of 1-3 adjacent blocks, gaps, 10+ blocks per span for some rows
        layout[static_cast<std::size_t>(qb * nk + kb)] = ((kb * 5 + qb * 3) % 7) < 4 || kb % 9 == 0;
    const sparse bs{pattern::block_sparse{reinterpret_cast<const bool*>(layout.data()), 16, 64, nq, nk}};
    const auto e = compare_with_oracle<TestType>(bs, p, {}, true);
    INFO("block-sparse, D " << D << " arch " << simd::arch_name<TestType>());
    CHECK(e.out <= tol);
    CHECK(e.lse <= tol);
    CHECK_FALSE(e.nan_mismatch);
    options s;
    s.causal = causal::bottom_right;
    CHECK(compare_with_oracle<TestType>(sigmoid{}, p, s).out <= tol);
    CHECK(compare_with_oracle<TestType>(sparse{bs.pattern, sigmoid{}}, p, s).out <= tol);
  }
}
