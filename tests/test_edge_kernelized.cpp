// Numerical edge cases (tests/edge_cases.hpp) for the kernelised variants: linear
// (elu+1) and LLN. LLN's feature maps use statistics of the whole call, so a
// non-finite q or k makes every row NaN (coupling::call_stats).
#include "edge_cases.hpp"

using namespace attnkit;
using attnkit_test::coupling;
using attnkit_test::edge_suite;

TEMPLATE_LIST_TEST_CASE("edge cases: linear", "[edge][linear]", attnkit_test::best_archs) {
  edge_suite<TestType>(linear{feature::elu_plus_one{}}, coupling::rows);
}
TEMPLATE_LIST_TEST_CASE("edge cases: log-normal", "[edge][lln]", attnkit_test::best_archs) {
  edge_suite<TestType>(log_normal{}, coupling::call_stats);
}
