// Every invalid argument throws attnkit::invalid_argument_error naming the
// argument, before any output is written (the output buffer is checked intact).
#include <catch2/catch.hpp>

#include <cstring>
#include <limits>
#include <string>

#include <attnkit/reference/reference.hpp>

#include "support.hpp"

using namespace attnkit;
using attnkit_test::problem;

namespace {
constexpr float sentinel = 12345.0f;

/// Runs `call(opt-adjusted...)` and checks it throws for `arg` and leaves out untouched.
template <class F>
void expect_rejected(const std::string& arg, const std::string& fragment, std::vector<float>& out, F&& call) {
  std::fill(out.begin(), out.end(), sentinel);
  bool thrown = false;
  try {
    call();
  } catch (const invalid_argument_error& e) {
    thrown = true;
    INFO("message: " << e.what());
    CHECK(e.argument() == arg);
    CHECK(std::string(e.what()).find(fragment) != std::string::npos);
    CHECK(std::string(e.what()).find("expected") != std::string::npos);
  }
  CHECK(thrown);
  for (float x : out) REQUIRE(x == sentinel);
}
}  // namespace

TEST_CASE("validation: the error type is a std::invalid_argument", "[validation]") {
  problem p(1, 2, 1, 4, 5, 8, 8, 1);
  std::vector<float> out(p.out_size());
  auto k = attnkit::bhsd(p.k.data(), 1, 1, 5, 4);  // wrong head dim
  CHECK_THROWS_AS(attention(softmax{}, p.qv(), k, attnkit::bhsd(p.v.data(), 1, 1, 5, 8), p.ov(out)),
                  std::invalid_argument);
}

TEST_CASE("validation: shape mismatches name the argument", "[validation]") {
  problem p(2, 4, 2, 6, 7, 8, 5, 2);
  std::vector<float> out(p.out_size()), big(4096);
  const float* q = p.q.data();
  const float* k = p.k.data();
  const float* v = p.v.data();

  expect_rejected("k", "dim", out, [&] {
    attention(softmax{}, p.qv(), attnkit::bhsd(k, 2, 2, 7, 4), p.vv(), p.ov(out));
  });
  expect_rejected("k", "batch", out, [&] {
    attention(softmax{}, p.qv(), attnkit::bhsd(k, 1, 2, 7, 8), p.vv(), p.ov(out));
  });
  expect_rejected("k", "heads", out, [&] {  // 4 % 3 != 0
    attention(softmax{}, p.qv(), attnkit::bhsd(k, 2, 3, 7, 8), attnkit::bhsd(v, 2, 3, 7, 5), p.ov(out));
  });
  expect_rejected("v", "seq", out, [&] {
    attention(softmax{}, p.qv(), p.kv(), attnkit::bhsd(v, 2, 2, 6, 5), p.ov(out));
  });
  expect_rejected("v", "heads", out, [&] {
    attention(softmax{}, p.qv(), p.kv(), attnkit::bhsd(v, 2, 1, 7, 5), p.ov(out));
  });
  expect_rejected("out", "dim", out, [&] {
    attention(softmax{}, p.qv(), p.kv(), p.vv(), attnkit::bhsd(out.data(), 2, 4, 6, 4));
  });
  expect_rejected("out", "seq", out, [&] {
    attention(softmax{}, p.qv(), p.kv(), p.vv(), attnkit::bhsd(out.data(), 2, 4, 5, 5));
  });
  expect_rejected("q", "dim", out, [&] {  // zero head dim
    attention(softmax{}, attnkit::bhsd(q, 2, 4, 6, 0), attnkit::bhsd(k, 2, 2, 7, 0), p.vv(), p.ov(out));
  });
  expect_rejected("q", "extent", out, [&] {  // negative extent
    attention(softmax{}, attnkit::bhsd(q, 2, 4, -6, 8), p.kv(), p.vv(), p.ov(out));
  });
  expect_rejected("q", "data", out, [&] {
    attention(softmax{}, attnkit::bhsd(static_cast<const float*>(nullptr), 2, 4, 6, 8), p.kv(), p.vv(), p.ov(out));
  });
  expect_rejected("k", "data", out, [&] {
    attention(softmax{}, p.qv(), attnkit::bhsd(static_cast<const float*>(nullptr), 2, 2, 7, 8), p.vv(), p.ov(out));
  });
  expect_rejected("q", "stride 'dim'", out, [&] {
    auto qs = attnkit::strided(q, {2, 4, 6, 4}, {4 * 6 * 8, 6 * 8, 8, 2});
    attention(softmax{}, qs, attnkit::bhsd(k, 2, 2, 7, 4), p.vv(), p.ov(out));
  });
}

TEST_CASE("validation: invalid options name the option", "[validation]") {
  problem p(2, 4, 2, 6, 7, 8, 5, 3);
  std::vector<float> out(p.out_size());
  auto call = [&](const options& o) { attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o); };

  options o;
  o.window = {-2, 3};
  expect_rejected("options.window", "left", out, [&] { call(o); });
  o = {};
  o.softcap = -1.0f;
  expect_rejected("options.softcap", "", out, [&] { call(o); });
  o = {};
  o.scale = std::numeric_limits<double>::infinity();
  expect_rejected("options.scale", "", out, [&] { call(o); });
  o = {};
  o.num_threads = -3;
  expect_rejected("options.num_threads", "", out, [&] { call(o); });

  const std::int64_t lens_short[1] = {3};
  o = {};
  o.key_lengths = lens_short;
  expect_rejected("options.key_lengths", "size", out, [&] { call(o); });
  const std::int64_t lens_big[2] = {3, 8};
  o.key_lengths = lens_big;
  expect_rejected("options.key_lengths", "element 1", out, [&] { call(o); });

  const float slopes[3] = {1, 2, 3};
  o = {};
  o.alibi_slopes = slopes;
  expect_rejected("options.alibi_slopes", "size", out, [&] { call(o); });
  o = {};
  o.sinks = slopes;
  expect_rejected("options.sinks", "size", out, [&] { call(o); });

  bool mask[2 * 3 * 6 * 7] = {};
  o = {};
  o.mask = attnkit::bhsd(static_cast<const bool*>(mask), 2, 3, 6, 7);  // 3 heads: neither 4 nor 1
  expect_rejected("options.mask", "heads", out, [&] { call(o); });
  o.mask = attnkit::bhsd(static_cast<const bool*>(mask), 1, 1, 6, 6);  // keys must match Lk
  expect_rejected("options.mask", "keys", out, [&] { call(o); });
  float bias[6 * 7] = {};
  o = {};
  o.bias = attnkit::bhsd(static_cast<const float*>(bias), 1, 1, 7, 7);
  expect_rejected("options.bias", "seq", out, [&] { call(o); });

  std::vector<float> lse(2 * 4 * 6);
  o = {};
  o.lse = lse.data();
  expect_rejected("options.lse", "", out, [&] { attention(sigmoid{}, p.qv(), p.kv(), p.vv(), p.ov(out), o); });
  o = {};
  const float sinks[4] = {0, 0, 0, 0};
  o.sinks = sinks;
  expect_rejected("options.sinks", "", out, [&] { attention(sigmoid{}, p.qv(), p.kv(), p.vv(), p.ov(out), o); });
}

TEST_CASE("validation: output aliasing an input is rejected", "[validation]") {
  problem p(1, 2, 2, 8, 8, 8, 8, 4);
  std::vector<float> out(p.out_size());
  std::vector<float> shared = p.q;  // out written over q's buffer
  auto q = attnkit::bhsd(static_cast<const float*>(shared.data()), 1, 2, 8, 8);
  const std::vector<float> before = shared;
  bool thrown = false;
  try {
    attention(softmax{}, q, p.kv(), p.vv(), attnkit::bhsd(shared.data() + 3, 1, 2, 8, 8));
  } catch (const invalid_argument_error& e) {
    thrown = true;
    CHECK(e.argument() == "out");
    CHECK(std::string(e.what()).find("overlap with q") != std::string::npos);
  }
  CHECK(thrown);
  CHECK(shared == before);
  // A broadcasting (stride 0) output is rejected too.
  expect_rejected("out", "stride", out, [&] {
    attention(softmax{}, p.qv(), p.kv(), p.vv(), attnkit::strided(out.data(), {1, 2, 8, 8}, {0, 0, 8, 1}));
  });
}

TEST_CASE("validation: empty sequences are valid", "[validation]") {
  SECTION("Lq = 0 is a no-op") {
    problem p(1, 2, 2, 0, 5, 8, 8, 5);
    std::vector<float> out(1, sentinel);
    attention(softmax{}, p.qv(), p.kv(), p.vv(), attnkit::bhsd(out.data(), 1, 2, 0, 8));
    CHECK(out[0] == sentinel);
  }
  SECTION("Lk = 0 follows the masked-row policy") {
    problem p(1, 2, 2, 3, 0, 8, 8, 6);
    std::vector<float> out(p.out_size(), sentinel), lse(6, 0.0f);
    options o;
    o.lse = lse.data();
    attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o);
    for (float x : out) CHECK(x == 0.0f);
    for (float x : lse) CHECK(x == -std::numeric_limits<float>::infinity());
    o.masked_rows = masked_rows::nan;
    attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o);
    for (float x : out) CHECK(std::isnan(x));
  }
}

namespace {
/// Both the kernel and the oracle refuse `pol` naming `arg`, and neither output
/// (nor the LSE) is touched.
template <class P>
void expect_policy_rejected(const P& pol, const problem& p, const std::string& arg, const std::string& fragment,
                            options o = {}) {
  INFO("argument " << arg);
  std::vector<float> out(p.out_size()), lse(static_cast<std::size_t>(p.B * p.Hq * p.Lq), sentinel);
  o.lse = lse.data();
  expect_rejected(arg, fragment, out, [&] { attention(pol, p.qv(), p.kv(), p.vv(), p.ov(out), o); });
  for (float x : lse) REQUIRE(x == sentinel);
  std::vector<double> ref(p.out_size(), sentinel);
  bool thrown = false;
  try {
    reference::attention(pol, p.qv(), p.kv(), p.vv(), attnkit::bhsd(ref.data(), p.B, p.Hq, p.Lq, p.Dv), o);
  } catch (const invalid_argument_error& e) {
    thrown = true;
    CHECK(e.argument() == arg);
  }
  CHECK(thrown);
  for (double x : ref) REQUIRE(x == sentinel);
  for (float x : lse) REQUIRE(x == sentinel);
}
}  // namespace

TEST_CASE("validation: pattern fields out of range are rejected", "[validation][sparse]") {
  using namespace pattern;
  constexpr index_t big = std::numeric_limits<index_t>::max(), most_negative = std::numeric_limits<index_t>::min();
  const problem p(1, 2, 1, 36, 36, 8, 8, 9);
  // 2-D grids: negative sides whose product is Lk, a product that wraps to Lk.
  expect_policy_rejected(sparse{neighborhood_2d{-6, -6}}, p, "pattern.height", ">= 0");
  expect_policy_rejected(sparse{neighborhood_2d{6, -6}}, p, "pattern.width", ">= 0");
  expect_policy_rejected(sparse{neighborhood_2d{7, 7905747460161236412}}, p, "pattern", "past 64 bits");
  expect_policy_rejected(sparse{neighborhood_2d{5, 7}}, p, "pattern", "36 (= k.seq)");
  expect_policy_rejected(sparse{neighborhood_2d{6, 6, 3, 3, 0}}, p, "pattern.dilation", "> 0");
  expect_policy_rejected(sparse{neighborhood_2d{6, 6, 0, 3, 1}}, p, "pattern.kernel_h", "> 0");
  expect_policy_rejected(sparse{neighborhood_2d{6, 6, 3, most_negative, 1}}, p, "pattern.kernel_w", "> 0");
  expect_policy_rejected(sparse{neighborhood_1d{0, 1}}, p, "pattern.kernel", "> 0");
  expect_policy_rejected(sparse{neighborhood_1d{3, most_negative}}, p, "pattern.dilation", "> 0");
  // Windows: -1 is the only negative a side may take.
  expect_policy_rejected(sparse{sliding_window{-2, 0}}, p, "pattern.left", ">= -1");
  expect_policy_rejected(sparse{sliding_window{0, most_negative}}, p, "pattern.right", ">= -1");
  expect_policy_rejected(sparse{dilated_window{-1, 1}}, p, "pattern.window", ">= 0");
  expect_policy_rejected(sparse{dilated_window{1, 0}}, p, "pattern.dilation", "> 0");
  expect_policy_rejected(sparse{sink_window{-1, 4}}, p, "pattern.sinks", ">= 0");
  expect_policy_rejected(sparse{sink_window{4, most_negative}}, p, "pattern.window", ">= 0");
  // Blocks.
  const bool layout[4] = {true, true, true, true};
  expect_policy_rejected(sparse{block_sparse{nullptr, 32, 32, 2, 2}}, p, "pattern.layout", "non-null");
  expect_policy_rejected(sparse{block_sparse{layout, 0, 32, 2, 2}}, p, "pattern.block_q", "> 0");
  expect_policy_rejected(sparse{block_sparse{layout, 32, -32, 2, 2}}, p, "pattern.block_k", "> 0");
  expect_policy_rejected(sparse{block_sparse{layout, 32, 32, -2, 2}}, p, "pattern.num_q_blocks", ">= 0");
  expect_policy_rejected(sparse{block_sparse{layout, 32, 32, 1, 2}}, p, "pattern.num_q_blocks", "ceil");
  expect_policy_rejected(sparse{block_sparse{layout, 32, 32, big, big}}, p, "pattern.num_k_blocks", "64 bits");
  expect_policy_rejected(sparse{power_attention{0, 1, 1}}, p, "pattern.block", "> 0");
  expect_policy_rejected(sparse{power_attention{4, -1, 1}}, p, "pattern.sinks", ">= 0");
  expect_policy_rejected(sparse{power_attention{4, 1, most_negative}}, p, "pattern.local", ">= 0");
  expect_policy_rejected(sparse{top_k{-1}}, p, "pattern.k", ">= 0");
  // FlexPrefill: gamma is a probability.
  for (double g : {std::nan(""), -0.1, 1.5, std::numeric_limits<double>::infinity()})
    expect_policy_rejected(sparse{flex_prefill{.gamma = g}}, p, "pattern.gamma", "[0, 1]");
  expect_policy_rejected(sparse{flex_prefill{.block = 0}}, p, "pattern.block", "> 0");
  expect_policy_rejected(sparse{flex_prefill{.min_budget = -1}}, p, "pattern.min_budget", ">= 0");
  // Stochastic permutation.
  expect_policy_rejected(stochastic_permutation{.window = -1}, p, "policy.window", ">= 0");
  expect_policy_rejected(stochastic_permutation{.window = most_negative}, p, "policy.window", ">= 0");
  expect_policy_rejected(stochastic_permutation{.kind = static_cast<window_kind>(7)}, p, "policy.kind", "one_sided");
  const problem cross(1, 2, 1, 35, 36, 8, 8, 10);
  expect_policy_rejected(stochastic_permutation{}, cross, "k", "self-attention");
}

TEST_CASE("validation: outputs may not overlap the options' spans, each other, or themselves", "[validation]") {
  const problem p(2, 4, 2, 6, 7, 8, 5, 12);
  const index_t n_out = static_cast<index_t>(p.out_size()), n_lse = p.B * p.Hq * p.Lq;
  // One buffer holds out, then room for whatever is made to overlap it.
  std::vector<float> buf(static_cast<std::size_t>(n_out + n_lse + 64));
  auto out_view = [&] { return attnkit::bhsd(buf.data(), p.B, p.Hq, p.Lq, p.Dv); };
  auto call = [&](const options& o) { attention(softmax{}, p.qv(), p.kv(), p.vv(), out_view(), o); };
  auto rejected = [&](const std::string& arg, const std::string& fragment, const options& o) {
    std::vector<float> before = buf;
    bool thrown = false;
    try {
      call(o);
    } catch (const invalid_argument_error& e) {
      thrown = true;
      INFO("message: " << e.what());
      CHECK(e.argument() == arg);
      CHECK(std::string(e.what()).find(fragment) != std::string::npos);
    }
    CHECK(thrown);
    CHECK(buf == before);
  };
  float* inside = buf.data() + 10;  // a position inside out's elements
  options o;
  o.sinks = std::span<const float>(inside, static_cast<std::size_t>(p.Hq));
  rejected("out", "options.sinks", o);
  o = {};
  o.alibi_slopes = std::span<const float>(inside, static_cast<std::size_t>(p.Hq));
  rejected("out", "options.alibi_slopes", o);
  o = {};
  o.key_lengths = std::span<const std::int64_t>(reinterpret_cast<const std::int64_t*>(inside), 2);
  rejected("out", "options.key_lengths", o);

  // options.lse against every other argument.
  float* after = buf.data() + n_out;  // free memory right after out
  std::vector<float> bias(static_cast<std::size_t>(p.Lq * p.Lk) + 64);
  o = {};
  o.lse = buf.data() + 3;  // inside out
  rejected("options.lse", "out", o);
  o.lse = after;
  o.mask = attnkit::bhsd(reinterpret_cast<const bool*>(after) + 8, 1, 1, p.Lq, p.Lk);
  rejected("options.lse", "options.mask", o);
  o = {};
  o.lse = bias.data() + 1;
  o.bias = attnkit::bhsd(static_cast<const float*>(bias.data()), 1, 1, p.Lq, p.Lk);
  rejected("options.lse", "options.bias", o);
  o = {};
  o.lse = after;
  o.sinks = std::span<const float>(after + n_lse - 1, static_cast<std::size_t>(p.Hq));
  rejected("options.lse", "options.sinks", o);
  o = {};
  o.lse = after;
  o.alibi_slopes = std::span<const float>(after + 2, static_cast<std::size_t>(p.Hq));
  rejected("options.lse", "options.alibi_slopes", o);
  o = {};
  o.lse = after;
  o.key_lengths = std::span<const std::int64_t>(reinterpret_cast<const std::int64_t*>(after + 4), 2);
  rejected("options.lse", "options.key_lengths", o);
  o = {};
  o.lse = const_cast<float*>(p.k.data()) + 5;
  rejected("options.lse", "no overlap with k", o);

  // A self-overlapping output: rows closer than Dv (row stride 4 < Dv = 5), heads
  // closer than a head's rows; and a 2^62 stride whose byte range wraps.
  const std::vector<float> before = buf;
  auto out_rejected = [&](const std::string& fragment, const attnkit::tensor_view<float>& ov) {
    bool thrown = false;
    try {
      attention(softmax{}, p.qv(), p.kv(), p.vv(), ov);
    } catch (const invalid_argument_error& e) {
      thrown = true;
      INFO("message: " << e.what());
      CHECK(e.argument() == "out");
      CHECK(std::string(e.what()).find(fragment) != std::string::npos);
    }
    CHECK(thrown);
    CHECK(buf == before);
  };
  out_rejected("stride 'seq'", attnkit::strided(buf.data(), {2, 4, 6, 5}, {4 * 6 * 4, 6 * 4, 4, 1}));
  out_rejected("stride 'heads'", attnkit::strided(buf.data(), {2, 4, 6, 5}, {4 * 6 * 5, 6 * 5 - 1, 5, 1}));
  out_rejected("stride 'batch'", attnkit::strided(buf.data(), {2, 4, 6, 5}, {10, 6 * 5, 5, 1}));
  out_rejected("strides", attnkit::strided(buf.data(), {2, 4, 6, 5}, {index_t{1} << 62, 6 * 5, 5, 1}));
  out_rejected("strides", attnkit::strided(buf.data(), {2, 4, 6, 5}, {index_t{1} << 61, index_t{1} << 61, 5, 1}));
  // Inputs may repeat elements (a broadcast), but not span more than 2^52 elements.
  bool thrown = false;
  try {
    attention(softmax{}, p.qv(), attnkit::strided(p.k.data(), {2, 2, index_t{1} << 53, 8}, {0, 0, 0, 1}), p.vv(),
              out_view());
  } catch (const invalid_argument_error& e) {
    thrown = true;
    CHECK(e.argument() == "k");
    CHECK(std::string(e.what()).find("2^52") != std::string::npos);
  }
  CHECK(thrown);
  // Nested layouts that do not overlap stay valid: BSHD and a padded one.
  CHECK_NOTHROW(attention(softmax{}, p.qv(), p.kv(), p.vv(), attnkit::bshd(buf.data(), 2, 6, 4, 5)));
  CHECK_NOTHROW(attention(softmax{}, p.qv(), p.kv(), p.vv(), attnkit::strided(buf.data(), {2, 4, 6, 5}, {4 * 6 * 7 + 3, 6 * 7 + 1, 7, 1})));
}

TEST_CASE("validation: messages name the right argument with context", "[validation]") {
  const problem p(2, 4, 2, 6, 7, 8, 5, 13);
  std::vector<float> out(p.out_size());
  // BSHD buffers described in bhsd() argument order (heads and seq swapped) for q,
  // k and v; out right: q is named, not out.
  expect_rejected("q", "swapped", out, [&] {
    attention(softmax{}, attnkit::bshd(p.q.data(), 2, 4, 6, 8), attnkit::bshd(p.k.data(), 2, 2, 7, 8),
              attnkit::bshd(p.v.data(), 2, 2, 7, 5), p.ov(out));
  });
  // Only k swapped: k is named, with the hint.
  expect_rejected("k", "swapped", out, [&] {
    attention(softmax{}, p.qv(), attnkit::bshd(p.k.data(), 2, 2, 7, 8), p.vv(), p.ov(out));
  });
  // Only v swapped.
  expect_rejected("v", "swapped", out, [&] {
    attention(softmax{}, p.qv(), p.kv(), attnkit::bshd(p.v.data(), 2, 2, 7, 5), p.ov(out));
  });
  const std::int64_t lens[1] = {3};
  options o;
  o.key_lengths = lens;
  expect_rejected("options.key_lengths", "expected 2 (= q.batch), got 1", out,
                  [&] { attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o); });
  std::uint8_t mask[6 * 8] = {};
  o = {};
  o.mask = attnkit::bhsd(static_cast<const std::uint8_t*>(mask), 1, 1, 6, 6);
  expect_rejected("options.mask", "extent 'keys'", out, [&] { attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o); });
  o.mask = attnkit::strided(static_cast<const std::uint8_t*>(mask), {1, 1, 6, 7}, {0, 0, 1, 6});
  expect_rejected("options.mask", "stride 'keys'", out, [&] { attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o); });
  o = {};
  o.causal = static_cast<causal>(9);
  expect_rejected("options.causal", "bottom_right", out, [&] { attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o); });
  o = {};
  o.masked_rows = static_cast<masked_rows>(9);
  expect_rejected("options.masked_rows", "zero", out, [&] { attention(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), o); });
}

TEST_CASE("masks: std::uint8_t views, nonzero = attend, on every path", "[validation][mask]") {
  // Any nonzero byte attends: the same call with a bool mask of the same pattern,
  // bitwise, and the oracle (2e-5 · max|oracle|).
  for (const problem& p : {problem(2, 4, 2, 70, 90, 16, 8, 14), problem(2, 8, 2, 1, 300, 16, 8, 15),
                           problem(1, 4, 2, 64, 64, 16, 8, 16)}) {
    const std::size_t cells = static_cast<std::size_t>(p.Lq * p.Lk);
    std::vector<std::uint8_t> bytes(cells), bools(cells);
    const std::uint8_t values[] = {0, 1, 2, 255, 7, 128, 0, 1};
    for (std::size_t c = 0; c < cells; ++c) {
      bytes[c] = values[(c * 7 + c / 5) % 8];
      bools[c] = bytes[c] != 0;
    }
    options ob, ol;
    ob.mask = attnkit::bhsd(static_cast<const std::uint8_t*>(bytes.data()), 1, 1, p.Lq, p.Lk);
    ol.mask = attnkit::bhsd(reinterpret_cast<const bool*>(bools.data()), 1, 1, p.Lq, p.Lk);
    auto both = [&](const auto& pol) {
      std::vector<float> a(p.out_size()), b(p.out_size());
      attention(pol, p.qv(), p.kv(), p.vv(), p.ov(a), ob);
      attention(pol, p.qv(), p.kv(), p.vv(), p.ov(b), ol);
      CHECK(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
      std::vector<double> ref(p.out_size());
      reference::attention(pol, p.qv(), p.kv(), p.vv(), attnkit::bhsd(ref.data(), p.B, p.Hq, p.Lq, p.Dv), ob);
      double scale = 1e-30, err = 0;
      for (double r : ref) scale = std::max(scale, std::abs(r));
      for (std::size_t i = 0; i < ref.size(); ++i) err = std::max(err, std::abs(a[i] - ref[i]));
      CHECK(err <= 2e-5 * scale);
    };
    both(softmax{});
    both(sigmoid{});
    both(sparse{pattern::sliding_window{20, 3}});
    if (p.Lq == p.Lk) both(stochastic_permutation{.window = 8});
  }
}

TEST_CASE("attention_varlen: every sequence checked before any write; observer", "[validation][varlen]") {
  // Three sequences of 20 queries, with 20, 20 and 25 keys: the third breaks a
  // per-sequence rule of each policy below. The first two are valid and used to be
  // written before the error.
  const problem p(1, 4, 2, 60, 65, 16, 8, 17);
  const std::int64_t cu_q[] = {0, 20, 40, 60}, cu_k[] = {0, 20, 40, 65};
  std::vector<float> out(p.out_size(), sentinel), lse(static_cast<std::size_t>(p.Hq * p.Lq), sentinel);
  options o;
  o.lse = lse.data();
  auto varlen_rejected = [&](const auto& pol, const std::string& arg) {
    bool thrown = false;
    try {
      attention_varlen(pol, p.qv(), p.kv(), p.vv(), p.ov(out), cu_q, cu_k, o);
    } catch (const invalid_argument_error& e) {
      thrown = true;
      INFO("message: " << e.what());
      CHECK(e.argument() == arg);
      CHECK(std::string(e.what()).find("in sequence 2") != std::string::npos);
    }
    CHECK(thrown);
    for (float x : out) REQUIRE(x == sentinel);
    for (float x : lse) REQUIRE(x == sentinel);
  };
  varlen_rejected(stochastic_permutation{.window = 4}, "k");                  // self-attention per sequence
  varlen_rejected(sparse{pattern::neighborhood_2d{4, 5, 3, 3, 1}}, "pattern");  // a 4 × 5 grid: 20 keys
  const bool layout[4] = {true, false, true, true};                           // 20 rows × 20 keys
  varlen_rejected(sparse{pattern::block_sparse{layout, 10, 10, 2, 2}}, "pattern.num_k_blocks");

  // The observer sees one call: the packed shape, each row once at its packed
  // index, with the values of the sequence run on its own.
  entropy_stats packed;
  o = {};
  o.causal = causal::bottom_right;
  attention_varlen(softmax{}, p.qv(), p.kv(), p.vv(), p.ov(out), cu_q, cu_k, o, observe(packed));
  CHECK(packed.complete());
  CHECK(packed.begin_calls == 1);
  CHECK(packed.q_len == p.Lq);
  for (std::size_t b = 0; b < 3; ++b) {
    const index_t q0 = cu_q[b], lq = cu_q[b + 1] - q0, k0 = cu_k[b], lk = cu_k[b + 1] - k0;
    entropy_stats one;
    std::vector<float> o1(static_cast<std::size_t>(p.Hq * lq * p.Dv));
    attention(softmax{}, attnkit::strided(p.q.data() + q0 * p.D, {1, p.Hq, lq, p.D}, {0, p.Lq * p.D, p.D, 1}),
              attnkit::strided(p.k.data() + k0 * p.D, {1, p.Hkv, lk, p.D}, {0, p.Lk * p.D, p.D, 1}),
              attnkit::strided(p.v.data() + k0 * p.Dv, {1, p.Hkv, lk, p.Dv}, {0, p.Lk * p.Dv, p.Dv, 1}),
              attnkit::bhsd(o1.data(), 1, p.Hq, lq, p.Dv), o, observe(one));
    for (index_t h = 0; h < p.Hq; ++h)
      for (index_t i = 0; i < lq; ++i) {
        const auto at = static_cast<std::size_t>(packed.index(0, h, q0 + i)), mine = static_cast<std::size_t>(one.index(0, h, i));
        CHECK(packed.entropy[at] == one.entropy[mine]);
        CHECK(packed.allowed[at] == one.allowed[mine]);
        CHECK(packed.lse[at] == one.lse[mine]);
      }
  }
}
