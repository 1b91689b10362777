// Recurrent linear attention (decode API) equals the causal kernel token by token,
// for feature maps with and without position dependence and with decay.
// Tolerance: 2e-5 × max|out|.
#include <catch2/catch.hpp>

#include "oracle.hpp"

using namespace attnkit;
using attnkit_test::problem;

namespace {
template <class P>
void check_stream(const P& pol, index_t chunk) {
  const index_t B = 2, Hq = 4, Hkv = 2, L = 75, D = 16, Dv = 12;
  problem p(B, Hq, Hkv, L, L, D, Dv, 61);
  std::vector<float> full(p.out_size()), streamed(p.out_size());
  options causal_top_left;
  causal_top_left.causal = causal::top_left;
  attention(pol, p.qv(), p.kv(), p.vv(), p.ov(full), causal_top_left);
  auto state = make_linear_state(pol, B, Hq, D, Dv);
  auto slice = [](auto view, index_t t0, index_t n) {
    view.data += t0 * view.stride[seq_axis];
    view.extent[seq_axis] = n;
    return view;
  };
  for (index_t t0 = 0; t0 < L; t0 += chunk) {
    const index_t n = std::min(chunk, L - t0);
    linear_step(pol, slice(p.qv(), t0, n), slice(p.kv(), t0, n), slice(p.vv(), t0, n), slice(p.ov(streamed), t0, n),
                state);
  }
  CHECK(state.tokens == L);
  CHECK(attnkit_test::max_abs_diff(full, streamed) <= 2e-5 * attnkit_test::max_abs(full));
}
}  // namespace

TEST_CASE("linear_step equals causal linear attention token by token", "[linear][recurrent]") {
  const float decay[4] = {0.9f, 0.95f, 0.99f, 1.0f};
  for (index_t chunk : {index_t{1}, index_t{7}}) {
    check_stream(linear{feature::elu_plus_one{}}, chunk);
    check_stream(linear<feature::relu>{.normalize = false}, chunk);
    check_stream(linear<feature::elu_plus_one>{.decay = decay}, chunk);
    check_stream(linear{feature::cosformer{.max_len = 75}}, chunk);
  }
}

TEST_CASE("linear_step validates the state", "[linear][recurrent]") {
  problem p(1, 2, 1, 3, 3, 8, 8, 62);
  std::vector<float> out(p.out_size(), 3.0f);
  auto state = make_linear_state(linear{feature::relu{}}, 1, 4, 8, 8);  // wrong head count
  CHECK_THROWS_WITH(linear_step(linear{feature::relu{}}, p.qv(), p.kv(), p.vv(), p.ov(out), state),
                    Catch::Contains("state") && Catch::Contains("heads"));
  auto cos_state = make_linear_state(linear{feature::cosformer{}}, 1, 2, 8, 8);
  CHECK_THROWS_WITH(linear_step(linear{feature::cosformer{}}, p.qv(), p.kv(), p.vv(), p.ov(out), cos_state),
                    Catch::Contains("max_len"));
  for (float x : out) CHECK(x == 3.0f);
}
