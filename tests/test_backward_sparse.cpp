// The backward kernels of the sparse family and of stochastic permutation vs the
// float64 oracle: every static pattern (position space, and rank space where the
// forward reorders tokens), top_k and flex_prefill with the forward's selection
// recomputed and held constant, permutation windows in rank space with original-index
// options; exact zeros for keys a pattern hides. The key-set logic is arch-independent:
// the default arch only. out and lse come from the forward oracle (compare_o).
// Tolerance (backward_kernel.hpp): max |kernel − oracle| ≤ 1e-4 · max |oracle| per tensor.
#include "backward_kernel.hpp"

using namespace attnkit;
using bwdk::layout;
using bwdk::problem;

TEST_CASE("static sparse patterns: backward matches the oracle", "[backward][sparse]") {
  using A = simd::default_arch;
  const problem p(2, 4, 2, 200, 230, 24, 16, 17);
  std::vector<char> layout_bits(4 * 4);
  for (std::size_t i = 0; i < layout_bits.size(); ++i) layout_bits[i] = (i * 7) % 3 != 0;
  const std::int64_t lens[2] = {150, 60};
  for (causal c : {causal::none, causal::bottom_right}) {
    options o;
    o.causal = c;
    const std::string cs = " causal " + std::to_string(static_cast<int>(c));
    bwdk::check(bwdk::compare_o<A>(sparse{pattern::sliding_window{37, 5}}, p, o), "sliding window" + cs);
    bwdk::check(bwdk::compare_o<A>(sparse{pattern::dilated_window{9, 3}}, p, o), "dilated window" + cs);
    bwdk::check(bwdk::compare_o<A>(sparse{pattern::sink_window{4, 50}}, p, o), "sink window" + cs);
    bwdk::check(bwdk::compare_o<A>(
                    sparse{pattern::block_sparse{reinterpret_cast<const bool*>(layout_bits.data()), 64, 64, 4, 4}}, p, o),
                "block sparse" + cs);
    bwdk::check(bwdk::compare_o<A>(sparse{pattern::neighborhood_1d{13, 2}}, p, o), "neighbourhood 1-D" + cs);
    bwdk::check(bwdk::compare_o<A>(sparse{pattern::power_attention{16, 1, 1}}, p, o), "PowerAttention" + cs);
    bwdk::check(bwdk::compare_o<A>(sparse{pattern::sliding_window{30, 3}, sigmoid{}}, p, o),
                "sliding window around sigmoid" + cs);
    options k = o;
    k.key_lengths = lens;
    k.sinks = p.sinks;
    bwdk::check(bwdk::compare_o<A>(sparse{pattern::sliding_window{20, 20}}, p, k),
                "sliding window + key lengths + sinks" + cs);
  }
  // Self-attention without positional options: dilated patterns run in rank space.
  const problem self(2, 4, 2, 301, 301, 24, 16, 21);
  options capped;
  capped.softcap = 5.0f;
  for (const options& o : {options{}, capped}) {
    bwdk::check(bwdk::compare_o<A>(sparse{pattern::dilated_window{9, 3}}, self, o), "dilated, rank space");
    bwdk::check(bwdk::compare_o<A>(sparse{pattern::neighborhood_1d{13, 2}}, self, o), "neighbourhood, rank space");
  }
  const problem grid(1, 2, 1, 300, 300, 16, 16, 18);
  bwdk::check(bwdk::compare_o<A>(sparse{pattern::neighborhood_2d{15, 20, 5, 7, 1}}, grid, {}),
              "neighbourhood 2-D");
}

TEST_CASE("top_k and flex_prefill: the forward's selection, held constant", "[backward][sparse]") {
  using A = simd::default_arch;
  const problem p(2, 4, 2, 83, 140, 24, 16, 31);
  for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
    options o;
    o.causal = c;
    const std::string cs = " causal " + std::to_string(static_cast<int>(c));
    bwdk::check(bwdk::compare_o<A>(sparse{pattern::top_k{8}}, p, o), "top_k 8" + cs);
    bwdk::check(bwdk::compare_o<A>(sparse{pattern::top_k{3}, sigmoid{}}, p, o), "top_k 3 around sigmoid" + cs);
    bwdk::check(bwdk::compare_o<A>(sparse{pattern::flex_prefill{0.6, 16, 1}}, p, o), "flex_prefill" + cs);
  }
  options soft;
  soft.softcap = 3.0f;
  soft.sinks = p.sinks;
  bwdk::check(bwdk::compare_o<A>(sparse{pattern::top_k{5}}, p, soft), "top_k + softcap + sinks");
  bwdk::check(bwdk::compare_o<A>(sparse{pattern::top_k{0}}, p, {}), "top_k 0: no key, zero gradients");
  // Keys top_k drops get exactly 0 from the row: one row, 2 of 70 keys kept.
  const problem one(1, 1, 1, 1, 70, 16, 8, 32);
  const auto r = bwdk::compare_o<A>(sparse{pattern::top_k{2}}, one, {});
  bwdk::check(r, "top_k 2, one row");
  int nonzero = 0;
  for (index_t j = 0; j < one.Lk; ++j) nonzero += r.gv[static_cast<std::size_t>(j * one.Dv)] != 0.0f;
  CHECK(nonzero == 2);
}

TEST_CASE("stochastic permutation: backward in rank space matches the oracle", "[backward][permutation]") {
  using A = simd::default_arch;
  const problem p(2, 4, 2, 150, 150, 24, 16, 41);
  const auto bias = attnkit_test::randn(static_cast<std::size_t>(150 * 150), 42);
  for (window_kind kind : {window_kind::symmetric, window_kind::one_sided, window_kind::circular}) {
    stochastic_permutation pol;
    pol.window = 40;
    pol.seed = 12;
    pol.kind = kind;
    const std::string ks = " kind " + std::to_string(static_cast<int>(kind));
    bwdk::check(bwdk::compare_o<A>(pol, p, {}), "permutation" + ks);
    options c;
    c.causal = causal::top_left;
    c.sinks = p.sinks;
    c.bias = strided(bias.data(), {1, 1, 150, 150}, {0, 0, 150, 1});
    bwdk::check(bwdk::compare_o<A>(pol, p, c), "permutation + causal + sinks + bias" + ks);
    pol.share_across_heads = true;
    options d;
    d.dropout = {0.2f, 3, 1};
    d.softcap = 4.0f;
    bwdk::check(bwdk::compare_o<A>(pol, p, d), "permutation shared across heads + dropout + softcap" + ks);
  }
}
