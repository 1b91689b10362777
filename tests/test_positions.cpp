// options.positions: a call on one block of a longer sequence (query row i at
// position query + i, key j at key + j; Δ = query − key replaces the alignment's Δ).
//   1. kernel vs the float64 oracle with positions, on every compiled arch: both
//      causal alignments, windows, ALiBi, softcap, sinks, GQA, decode and prefill
//      shapes, blocks before / after / overlapping each other, Δ = ±2^61;
//   2. the semantics without trusting the Δ code: a block call with positions equals
//      the oracle of the WHOLE sequence (no positions, the documented alignment)
//      restricted by a boolean mask to that key block, on that block's query rows;
//   3. key blocks merged with merge_partials reproduce the whole-sequence call;
//   4. validation: overflow and |Δ| > max_position_delta, and the policies that do
//      not take positions, in the kernels and in the oracle.
// Tolerance: max|out − oracle| ≤ 2e-5·max|oracle| and LSE relative error ≤ 2e-5 (the
// softmax kernel's, test_softmax_oracle.cpp); merged blocks ≤ 2e-5 of the whole call.
#include <catch2/catch.hpp>

#include <cstring>
#include <limits>
#include <string>

#include "oracle.hpp"

using namespace attnkit;
using attnkit_test::compare_with_oracle;
using attnkit_test::problem;

namespace {
constexpr double tol = 2e-5;

template <class T>
tensor_view<T> rows_of(tensor_view<T> t, index_t from, index_t len) {
  t.data += from * t.stride[seq_axis];
  t.extent[seq_axis] = len;
  return t;
}

template <class Arch>
void check(const problem& p, options o, positions pos, const std::string& what) {
  o.positions = pos;
  const auto e = compare_with_oracle<Arch>(softmax{}, p, o, true);
  INFO(what << " arch=" << simd::arch_name<Arch>() << " Lq=" << p.Lq << " Lk=" << p.Lk << " positions={"
            << pos.query << ", " << pos.key << "} causal=" << static_cast<int>(o.causal) << " window={"
            << o.window.left << ", " << o.window.right << "}");
  CHECK(e.out <= tol);
  CHECK(e.lse <= tol);
  CHECK_FALSE(e.nan_mismatch);
  const auto es = compare_with_oracle<Arch>(sigmoid{}, p, o);
  CHECK(es.out <= tol);
  CHECK_FALSE(es.nan_mismatch);
}

/// Query block [qo, qo+nq) × key block [ko, ko+nk) of a whole problem `p`.
struct block {
  index_t qo, nq, ko, nk;
};

/// The semantic test: block call with positions vs the whole-sequence oracle masked
/// to the key block (rows of the query block).
template <class Arch>
void check_block_semantics(const problem& p, options o, block bl, const std::string& what) {
  INFO(what << " arch=" << simd::arch_name<Arch>() << " causal=" << static_cast<int>(o.causal) << " block q["
            << bl.qo << "+" << bl.nq << "] k[" << bl.ko << "+" << bl.nk << "] of Lq=" << p.Lq << " Lk=" << p.Lk);
  // Whole sequence, the block's keys only (mask broadcast over batch and heads).
  std::vector<char> mask_store(static_cast<std::size_t>(p.Lq * p.Lk), 0);
  for (index_t i = 0; i < p.Lq; ++i)
    for (index_t j = bl.ko; j < bl.ko + bl.nk; ++j) mask_store[static_cast<std::size_t>(i * p.Lk + j)] = 1;
  options whole = o;
  whole.mask = bhsd(reinterpret_cast<const bool*>(mask_store.data()), 1, 1, p.Lq, p.Lk);
  std::vector<double> ref(p.out_size());
  const auto res = reference::attention(softmax{}, p.qv(), p.kv(), p.vv(), bhsd(ref.data(), p.B, p.Hq, p.Lq, p.Dv), whole);

  // The block call: Δ = query − key reproduces the whole call's alignment.
  const index_t shift = o.causal == causal::top_left ? 0 : p.Lk - p.Lq;
  o.positions = positions{bl.qo + shift, bl.ko};
  std::vector<float> out(static_cast<std::size_t>(p.B * p.Hq * bl.nq * p.Dv), -7.0f);
  std::vector<float> lse(static_cast<std::size_t>(p.B * p.Hq * bl.nq));
  o.lse = lse.data();
  attention<Arch>(softmax{}, rows_of(p.qv(), bl.qo, bl.nq), rows_of(p.kv(), bl.ko, bl.nk),
                  rows_of(p.vv(), bl.ko, bl.nk), bhsd(out.data(), p.B, p.Hq, bl.nq, p.Dv), o);
  double scale = 1e-30, err = 0, lse_err = 0;
  bool nan_mismatch = false;
  for (double r : ref) scale = std::max(scale, std::abs(r));
  for (index_t b = 0; b < p.B; ++b)
    for (index_t h = 0; h < p.Hq; ++h)
      for (index_t i = 0; i < bl.nq; ++i) {
        const std::size_t lr = static_cast<std::size_t>((b * p.Hq + h) * bl.nq + i);
        const double want = res.lse[static_cast<std::size_t>(res.row(b, h, bl.qo + i))];
        if (std::isfinite(want))
          lse_err = std::max(lse_err, std::abs(lse[lr] - want) / std::max(1.0, std::abs(want)));
        else if (static_cast<double>(lse[lr]) != want)
          lse_err = 1;
        for (index_t d = 0; d < p.Dv; ++d) {
          const double r = ref[static_cast<std::size_t>(((b * p.Hq + h) * p.Lq + bl.qo + i) * p.Dv + d)];
          const float x = out[lr * static_cast<std::size_t>(p.Dv) + static_cast<std::size_t>(d)];
          if (std::isnan(r) != std::isnan(x)) nan_mismatch = true;
          if (!std::isnan(r)) err = std::max(err, std::abs(x - r) / scale);
        }
      }
  CHECK(err <= tol);
  CHECK(lse_err <= tol);
  CHECK_FALSE(nan_mismatch);
}
}  // namespace

TEMPLATE_LIST_TEST_CASE("positions: kernel matches the oracle", "[positions][oracle]", attnkit_test::archs) {
  const std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
  const std::vector<float> sinks = {0.3f, -1.0f, 2.0f, 0.0f};
  const positions cases[] = {{0, 0}, {37, 5}, {5, 120}, {-50, -80}, {1000, 1000}, {300, 0}};
  // Prefill (77 rows) and decode (3 rows × GQA group 2 ≤ 16 rows; 1100 keys: 3 chunks).
  for (const auto& shape : {std::pair<index_t, index_t>{77, 150}, std::pair<index_t, index_t>{3, 1100}}) {
    problem p(2, 4, 2, shape.first, shape.second, 40, 24, 11);
    for (positions pos : cases)
      for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
        options o;
        o.causal = c;
        check<TestType>(p, o, pos, "causal");
        o.window = {17, 3};
        check<TestType>(p, o, pos, "window");
        o.window = {-1, 0};
        o.alibi_slopes = slopes;
        check<TestType>(p, o, pos, "right window + ALiBi");
        o.window = {9, -1};
        o.softcap = 5.0f;
        o.alibi_slopes = {};
        check<TestType>(p, o, pos, "left window + softcap");
      }
    // Sinks (softmax only): compared without the sigmoid pass.
    options o;
    o.causal = causal::bottom_right;
    o.sinks = sinks;
    o.positions = positions{10, 60};
    o.masked_rows = masked_rows::nan;
    const auto e = compare_with_oracle<TestType>(softmax{}, p, o, true);
    CHECK(e.out <= tol);
    CHECK(e.lse <= tol);
    CHECK_FALSE(e.nan_mismatch);
  }
}

TEMPLATE_LIST_TEST_CASE("positions: Δ at ±max_position_delta", "[positions][oracle]", attnkit_test::archs) {
  problem p(1, 2, 1, 33, 70, 16, 16, 12);
  for (masked_rows mr : {masked_rows::zero, masked_rows::nan})
    for (positions pos : {positions{max_position_delta, 0}, positions{0, max_position_delta},
                          positions{-max_position_delta, 0}, positions{std::numeric_limits<index_t>::max() - 5,
                                                                       std::numeric_limits<index_t>::max() - 5 - max_position_delta}}) {
      options o;
      o.masked_rows = mr;
      o.causal = causal::bottom_right;
      check<TestType>(p, o, pos, "causal");  // everything visible or nothing
      o.window = {4, 2};
      check<TestType>(p, o, pos, "window far from every key");  // nothing visible
      o.causal = causal::none;
      o.window = {-1, 3};
      check<TestType>(p, o, pos, "right window only");
    }
}

TEMPLATE_LIST_TEST_CASE("positions: a block call is the whole-sequence call on that block",
                        "[positions][semantics]", attnkit_test::archs) {
  const std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
  const std::vector<float> sinks = {0.3f, -1.0f, 2.0f, 0.0f};
  // Lq = Lk for top-left (one Δ serves causal, window and ALiBi), Lq ≠ Lk otherwise.
  const problem square(1, 4, 2, 120, 120, 32, 16, 13), wide(1, 4, 2, 90, 140, 32, 16, 14);
  const block blocks_square[] = {{40, 40, 0, 40}, {40, 40, 40, 40}, {40, 40, 80, 40}, {0, 3, 100, 20}, {117, 3, 50, 70}};
  const block blocks_wide[] = {{30, 30, 0, 47}, {60, 30, 47, 47}, {0, 30, 94, 46}, {85, 5, 100, 40}, {0, 2, 0, 140}};
  for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
    const problem& p = c == causal::top_left ? square : wide;
    for (int k = 0; k < 5; ++k) {
      const block bl = c == causal::top_left ? blocks_square[k] : blocks_wide[k];
      options o;
      o.causal = c;
      check_block_semantics<TestType>(p, o, bl, "plain");
      o.window = {25, 6};
      o.alibi_slopes = slopes;
      check_block_semantics<TestType>(p, o, bl, "window + ALiBi");
      o.window = {};
      o.softcap = 4.0f;
      o.sinks = sinks;
      o.masked_rows = masked_rows::nan;
      check_block_semantics<TestType>(p, o, bl, "softcap + sinks + NaN rows");
    }
  }
}

TEST_CASE("positions: merged key blocks reproduce the whole call", "[positions][merge]") {
  const problem p(2, 4, 2, 100, 100, 32, 24, 15);
  const std::vector<float> slopes = {0.5f, 0.25f, 0.125f, 0.0625f};
  for (causal c : {causal::top_left, causal::bottom_right}) {
    options o;
    o.causal = c;
    o.window = {30, -1};
    o.alibi_slopes = slopes;
    const std::size_t rows = static_cast<std::size_t>(p.B * p.Hq * p.Lq);
    std::vector<float> whole(p.out_size()), whole_lse(rows);
    o.lse = whole_lse.data();
    attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(whole), o);
    // Three uneven key blocks, merged in key order; the first starts from an empty
    // partial (LSE −inf), which merges exactly.
    std::vector<float> acc(p.out_size(), 0.0f), part(p.out_size()), acc_lse(rows, -INFINITY), part_lse(rows);
    const index_t cuts[] = {0, 17, 64, 100};
    for (int s = 0; s < 3; ++s) {
      options ob = o;
      ob.positions = positions{0, cuts[s]};
      ob.lse = part_lse.data();
      attention(softmax{}, p.qv(), rows_of(p.kv(), cuts[s], cuts[s + 1] - cuts[s]),
                rows_of(p.vv(), cuts[s], cuts[s + 1] - cuts[s]), p.ov(part), ob);
      merge_partials(p.ov(acc), acc_lse.data(), p.ov(part), part_lse.data(), p.ov(acc), acc_lse.data());
    }
    CHECK(attnkit_test::max_abs_diff(acc, whole) <= tol * attnkit_test::max_abs(whole));
    double lse_err = 0;
    for (std::size_t r = 0; r < rows; ++r)
      lse_err = std::max(lse_err, static_cast<double>(std::abs(acc_lse[r] - whole_lse[r]) / std::max(1.0f, std::abs(whole_lse[r]))));
    CHECK(lse_err <= tol);
  }
}

TEST_CASE("positions: validation", "[positions][validation]") {
  const problem p(1, 2, 1, 4, 6, 8, 8, 16), self(1, 2, 1, 6, 6, 8, 8, 17);
  std::vector<float> out(self.out_size());  // large enough for both problems
  std::vector<double> ref(p.out_size());
  const auto ref_out = bhsd(ref.data(), p.B, p.Hq, p.Lq, p.Dv);
  auto expect_rejected = [&](const options& o, auto&& call) {
    std::fill(out.begin(), out.end(), 12345.0f);
    bool thrown = false;
    try {
      call(o);
    } catch (const invalid_argument_error& e) {
      thrown = true;
      INFO(e.what());
      CHECK(e.argument() == "options.positions");
      CHECK(std::string(e.what()).find("expected") != std::string::npos);
    }
    CHECK(thrown);
    for (float x : out) CHECK(x == 12345.0f);
  };
  const index_t big = std::numeric_limits<index_t>::max(), small = std::numeric_limits<index_t>::min();
  auto kernel = [&](const options& o) { attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o); };
  auto oracle = [&](const options& o) { reference::attention(softmax{}, p.qv(), p.kv(), p.vv(), ref_out, o); };
  for (positions bad : {positions{big, -1}, positions{small, 1}, positions{big, small}, positions{small, big},
                        positions{max_position_delta + 1, 0}, positions{0, max_position_delta + 1},
                        positions{-max_position_delta, 1}}) {
    options o;
    o.positions = bad;
    INFO("positions {" << bad.query << ", " << bad.key << "}");
    expect_rejected(o, kernel);
    expect_rejected(o, oracle);
  }
  options ok;
  ok.positions = positions{small, small + max_position_delta};  // Δ = −max: accepted
  CHECK_NOTHROW(kernel(ok));
  CHECK_NOTHROW(oracle(ok));

  // Policies that compute positions of their own reject them (kernel and oracle).
  options o;
  o.positions = positions{3, 1};
  expect_rejected(o, [&](const options& x) { attention(sparse{pattern::sliding_window{2, 0}}, p.qv(), p.kv(), p.vv(), p.ov(out), x); });
  expect_rejected(o, [&](const options& x) {
    reference::attention(sparse{pattern::sliding_window{2, 0}}, p.qv(), p.kv(), p.vv(), ref_out, x);
  });
  std::vector<double> ref_self(self.out_size());
  expect_rejected(o, [&](const options& x) {
    attention(stochastic_permutation{.window = 2, .seed = 1}, self.qv(), self.kv(), self.vv(), self.ov(out), x);
  });
  expect_rejected(o, [&](const options& x) {
    reference::attention(stochastic_permutation{.window = 2, .seed = 1}, self.qv(), self.kv(), self.vv(),
                         bhsd(ref_self.data(), 1, 2, 6, 8), x);
  });
  expect_rejected(o, [&](const options& x) { attention(linear{feature::elu_plus_one{}}, p.qv(), p.kv(), p.vv(), p.ov(out), x); });
  expect_rejected(o, [&](const options& x) {
    reference::attention(linear{feature::elu_plus_one{}}, p.qv(), p.kv(), p.vv(), ref_out, x);
  });
  expect_rejected(o, [&](const options& x) { attention(log_normal{}, p.qv(), p.kv(), p.vv(), p.ov(out), x); });
  expect_rejected(o, [&](const options& x) { reference::attention(log_normal{}, p.qv(), p.kv(), p.vv(), ref_out, x); });
}
