// Stochastic permutation attention with permutations given by the caller (a span
// per kv head, one shared span, or a callable): the kernel uses exactly the given
// order — equal to the oracle on the same orders, and bitwise equal to the seeded
// call when handed the seeded draw — and a bad order is refused before anything
// is written. Tolerance: 2e-5·max|oracle| (as softmax).
#include <catch2/catch.hpp>

#include <algorithm>
#include <numeric>
#include <random>

#include "oracle.hpp"

using namespace attnkit;
using attnkit_test::problem;

namespace {

/// A permutation of n tokens from std::shuffle (not attnkit's generator).
std::vector<index_t> shuffled(index_t n, std::uint32_t seed) {
  std::vector<index_t> p(static_cast<std::size_t>(n));
  std::iota(p.begin(), p.end(), index_t{0});
  std::mt19937 gen(seed);
  std::shuffle(p.begin(), p.end(), gen);
  return p;
}

/// Max |kernel − oracle| / max |oracle| for `pol` on p.
template <class Arch>
double oracle_error(const stochastic_permutation& pol, const problem& p, const options& opt) {
  const auto e = attnkit_test::compare_with_oracle<Arch>(pol, p, opt, true);
  CHECK_FALSE(e.nan_mismatch);
  CHECK(e.lse <= 2e-5);
  return e.out;
}

}  // namespace

TEMPLATE_LIST_TEST_CASE("explicit permutations: the kernel follows the given order", "[permutation]",
                        attnkit_test::archs) {
  const problem p(2, 4, 2, 301, 301, 40, 24, 5);
  const std::vector<std::vector<index_t>> orders{shuffled(p.Lk, 1), shuffled(p.Lk, 2)};
  const std::vector<std::span<const index_t>> spans{orders[0], orders[1]};
  for (window_kind kind : {window_kind::symmetric, window_kind::one_sided, window_kind::circular})
    for (causal c : {causal::none, causal::top_left}) {
      INFO("kind " << static_cast<int>(kind) << " causal " << static_cast<int>(c));
      options opt;
      opt.causal = c;
      stochastic_permutation per_head{.window = 64, .kind = kind};
      per_head.permutations = spans;
      CHECK(oracle_error<TestType>(per_head, p, opt) <= 2e-5);
      stochastic_permutation shared{.window = 64, .kind = kind};
      shared.permutations = std::span<const std::span<const index_t>>(spans.data(), 1);
      CHECK(oracle_error<TestType>(shared, p, opt) <= 2e-5);
      stochastic_permutation callable{.window = 64, .kind = kind};
      callable.permute = [&](index_t g, std::span<index_t> order) {
        std::copy(orders[static_cast<std::size_t>(g)].begin(), orders[static_cast<std::size_t>(g)].end(), order.begin());
      };
      CHECK(oracle_error<TestType>(callable, p, opt) <= 2e-5);
    }
}

TEST_CASE("explicit permutations: the seeded draw handed back gives the seeded call, bitwise", "[permutation]") {
  const problem p(1, 4, 2, 257, 257, 64, 64, 9);
  const stochastic_permutation seeded{.window = 48, .seed = 123, .layer = 4};
  const auto drawn = reference::permutations_of(seeded, p.Lk, p.Hkv);
  const std::vector<std::span<const index_t>> spans(drawn.begin(), drawn.end());
  stochastic_permutation given = seeded;
  given.seed = 999;  // ignored: the orders are given
  given.permutations = spans;
  std::vector<float> a(p.out_size()), b(p.out_size());
  attention(seeded, p.qv(), p.kv(), p.vv(), p.ov(a));
  attention(given, p.qv(), p.kv(), p.vv(), p.ov(b));
  CHECK(a == b);
}

TEST_CASE("explicit permutations: a bad order is refused before anything is written", "[permutation][validation]") {
  const problem p(1, 2, 2, 40, 40, 16, 16, 11);
  auto good = shuffled(p.Lk, 3);
  auto repeated = good;
  repeated[5] = repeated[6];
  auto short_one = good;
  short_one.pop_back();
  auto out_of_range = good;
  out_of_range[0] = p.Lk;
  const auto expect_refused = [&](const stochastic_permutation& pol, const char* argument) {
    std::vector<float> out(p.out_size(), -7.0f);
    try {
      attention(pol, p.qv(), p.kv(), p.vv(), p.ov(out));
      FAIL("accepted");
    } catch (const invalid_argument_error& e) {
      CHECK(std::string(e.argument()).rfind(argument, 0) == 0);
    }
    CHECK(std::all_of(out.begin(), out.end(), [](float x) { return x == -7.0f; }));
  };
  for (const auto* bad : {&repeated, &short_one, &out_of_range}) {
    const std::vector<std::span<const index_t>> spans{good, *bad};
    stochastic_permutation pol;
    pol.permutations = spans;
    expect_refused(pol, "policy.permutations[1]");
  }
  const std::vector<std::span<const index_t>> three{good, good, good};
  stochastic_permutation pol;
  pol.permutations = three;
  expect_refused(pol, "policy.permutations");
  stochastic_permutation callable;
  callable.permute = [&](index_t, std::span<index_t> order) { std::fill(order.begin(), order.end(), 0); };
  expect_refused(callable, "policy.permute(0)");
}
