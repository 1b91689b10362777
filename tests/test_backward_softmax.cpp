// The softmax backward kernel vs the float64 oracle on every compiled arch: odd
// shapes (tails of every tile and key block), head dims 16…128, Dv ≠ D, GQA/MQA,
// BSHD strides, both causal alignments, windows, a boolean mask, bias (+ d bias,
// broadcast or not), key lengths, ALiBi, soft-capping, sinks (+ d sinks), masked
// rows, positions, bf16/fp16 K/V, decode shapes and heads split across parts.
// Tolerance (backward_kernel.hpp): max |kernel − oracle| ≤ 1e-4 · max |oracle| per tensor.
#include "backward_kernel.hpp"

using namespace attnkit;
using bwdk::layout;
using bwdk::problem;

TEMPLATE_LIST_TEST_CASE("softmax backward matches the oracle: shapes, head dims, GQA, strides",
                        "[backward][softmax]", attnkit_test::archs) {
  const bool scalar = simd::is_scalar_v<TestType>;
  for (index_t D : {16, 40, 64, 80, 128}) {
    if (scalar && D > 64) continue;  // the scalar path is slow; its logic is the same
    const problem p(2, 4, 2, 61, 133, D, D == 80 ? 48 : D, 100 + static_cast<std::uint32_t>(D));
    bwdk::check(bwdk::compare<TestType>(softmax{}, p, {}), "head dim " + bwdk::describe(p));
  }
  for (const problem& p : {problem(1, 6, 1, 150, 70, 24, 40, 1), problem(3, 2, 2, 2, 1, 8, 8, 2),
                           problem(1, 2, 1, 5, 1030, 32, 16, 3), problem(2, 3, 3, 67, 67, 20, 12, 4, layout::bshd),
                           problem(1, 8, 2, 130, 129, 32, 32, 5, layout::bshd)})
    bwdk::check(bwdk::compare<TestType>(softmax{}, p, {}), bwdk::describe(p));
}

TEMPLATE_LIST_TEST_CASE("softmax backward matches the oracle: masks, logit terms, sinks, d bias",
                        "[backward][softmax]", attnkit_test::archs) {
  const index_t Lq = 97, Lk = 131;
  const problem p(2, 4, 2, Lq, Lk, 40, 24, 7);
  for (causal c : {causal::none, causal::top_left, causal::bottom_right}) {
    options o;
    o.causal = c;
    bwdk::check(bwdk::compare<TestType>(softmax{}, p, o), "causal " + std::to_string(static_cast<int>(c)));
    o.window = {17, 3};
    bwdk::check(bwdk::compare<TestType>(softmax{}, p, o), "window");
    o.window = {-1, 0};
    bwdk::check(bwdk::compare<TestType>(softmax{}, p, o), "window right only");
  }
  const problem wide(1, 2, 1, 40, 300, 16, 16, 8);  // Lk > Lq: bottom-right rows start late
  options br;
  br.causal = causal::bottom_right;
  bwdk::check(bwdk::compare<TestType>(softmax{}, wide, br), "bottom-right, Lk > Lq");
  const problem tall(1, 2, 1, 300, 40, 16, 16, 9);  // Lq > Lk: bottom-right leaves early rows empty
  bwdk::check(bwdk::compare<TestType>(softmax{}, tall, br), "bottom-right, Lq > Lk (empty rows)");

  const std::int64_t lens[2] = {0, 77};
  options kl;
  kl.key_lengths = lens;
  kl.causal = causal::bottom_right;
  bwdk::check(bwdk::compare<TestType>(softmax{}, p, kl), "key lengths (batch 0 empty) + bottom-right");

  std::vector<char> mask(static_cast<std::size_t>(Lq * Lk));
  for (std::size_t i = 0; i < mask.size(); ++i) mask[i] = (i * 2654435761u) % 5 != 0;
  for (index_t j = 0; j < Lk; ++j) mask[static_cast<std::size_t>(9 * Lk + j)] = 0;  // a fully masked row
  const auto bias = attnkit_test::randn(static_cast<std::size_t>(2 * Lq * Lk), 8);
  const auto bias_h = attnkit_test::randn(static_cast<std::size_t>(4 * Lk), 9);
  const float slopes[4] = {0.5f, 0.25f, 0.125f, 0.0625f};
  options m;
  m.mask = strided(reinterpret_cast<const bool*>(mask.data()), {1, 1, Lq, Lk}, {0, 0, Lk, 1});
  bwdk::check(bwdk::compare<TestType>(softmax{}, p, m), "bool mask broadcast over batch and heads");
  m.bias = strided(bias.data(), {2, 1, Lq, Lk}, {Lq * Lk, 0, Lk, 1});
  bwdk::check(bwdk::compare<TestType>(softmax{}, p, m), "mask + bias broadcast over heads (d bias in slices)");
  m.alibi_slopes = slopes;
  m.softcap = 3.0f;
  bwdk::check(bwdk::compare<TestType>(softmax{}, p, m), "mask + bias + ALiBi + softcap");
  m.sinks = p.sinks;
  m.masked_rows = masked_rows::nan;
  bwdk::check(bwdk::compare<TestType>(softmax{}, p, m), "everything + sinks (d sinks) + NaN rows");
  options bh;
  bh.bias = strided(bias_h.data(), {1, 4, 1, Lk}, {0, Lk, 0, 1});
  bh.causal = causal::top_left;
  bwdk::check(bwdk::compare<TestType>(softmax{}, p, bh), "bias [1, Hq, 1, Lk] (rows and batches summed)");
  const auto bias_full = attnkit_test::randn(static_cast<std::size_t>(2 * 4 * Lq * Lk), 10);
  options bf;
  bf.bias = bhsd(bias_full.data(), 2, 4, Lq, Lk);
  bf.softcap = 2.0f;
  bwdk::check(bwdk::compare<TestType>(softmax{}, p, bf), "full bias (d bias written in place) + softcap");
  options sk;
  sk.sinks = tall.sinks;
  sk.causal = causal::bottom_right;
  bwdk::check(bwdk::compare<TestType>(softmax{}, tall, sk), "sinks with empty rows");
  options pos;
  pos.positions = positions{40, 7};
  pos.causal = causal::top_left;
  pos.alibi_slopes = slopes;
  bwdk::check(bwdk::compare<TestType>(softmax{}, p, pos), "positions + ALiBi");
}

TEST_CASE("softmax backward: bf16/fp16 K/V, long keys, split heads", "[backward][softmax]") {
  using A = simd::default_arch;
  const problem p(2, 4, 2, 45, 150, 32, 24, 11);
  options o;
  o.causal = causal::bottom_right;
  bwdk::check(bwdk::compare<A, softmax, bfloat16>(softmax{}, p, o), "bf16 K/V");
  bwdk::check(bwdk::compare<A, softmax, float16>(softmax{}, p, o), "fp16 K/V");
  // One kv head, 1100 keys: the keys are split into parts whose dQ partials are summed.
  const problem one(1, 3, 1, 700, 1100, 40, 32, 12);
  for (causal c : {causal::none, causal::top_left}) {
    options oc;
    oc.causal = c;
    bwdk::check(bwdk::compare<A>(softmax{}, one, oc), "split head, causal " + std::to_string(static_cast<int>(c)));
  }
  options precise;
  bwdk::check(bwdk::compare<A>(softmax{exp_mode::precise}, p, precise), "exp precise");
}
