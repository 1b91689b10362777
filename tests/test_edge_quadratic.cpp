// Numerical edge cases (tests/edge_cases.hpp) for the quadratic-cost variants:
// softmax, sigmoid, static and data-dependent sparse patterns, stochastic permutation.
// Scalar and the best compiled arch (the per-arch NaN paths of the SIMD layer are also
// covered on every arch by test_numerics and the oracle tests).
#include "edge_cases.hpp"

using namespace attnkit;
using attnkit_test::coupling;
using attnkit_test::edge_suite;

TEMPLATE_LIST_TEST_CASE("edge cases: softmax", "[edge][softmax]", attnkit_test::best_archs) {
  edge_suite<TestType>(softmax{}, coupling::rows);
}
TEMPLATE_LIST_TEST_CASE("edge cases: sigmoid", "[edge][sigmoid]", attnkit_test::best_archs) {
  edge_suite<TestType>(sigmoid{}, coupling::rows);
}
TEMPLATE_LIST_TEST_CASE("edge cases: sparse sliding window", "[edge][sparse]", attnkit_test::best_archs) {
  edge_suite<TestType>(sparse{pattern::sliding_window{8, 0}}, coupling::rows);
}
TEMPLATE_LIST_TEST_CASE("edge cases: sparse sinks + window", "[edge][sparse]", attnkit_test::best_archs) {
  edge_suite<TestType>(sparse{pattern::sink_window{2, 8}}, coupling::rows);
}
TEMPLATE_LIST_TEST_CASE("edge cases: sparse top-k", "[edge][sparse]", attnkit_test::best_archs) {
  edge_suite<TestType>(sparse{pattern::top_k{.k = 5}}, coupling::rows, false, /*selects_by_logit=*/true);
}
TEMPLATE_LIST_TEST_CASE("edge cases: stochastic permutation", "[edge][permutation]", attnkit_test::best_archs) {
  edge_suite<TestType>(stochastic_permutation{.window = 8, .seed = 3}, coupling::rows, /*self_only=*/true);
}
