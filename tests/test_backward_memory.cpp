// Memory of the backward pass: O(N·D) beyond the caller's tensors, never N×N. Its own
// process (peak RSS is per process): at N = 16384, D = 64, one head, the inputs and
// gradients are 8 tensors of 4 MiB; an N×N float buffer would be 1 GiB. The peak
// RSS may grow by at most 64 MiB during the backward: it needs a padded copy of Q and
// dO (8 MiB) and, one head being split into 8 key parts (kernel/backward/run.hpp),
// 8 dQ accumulators (32 MiB), plus per-worker tiles and the allocator's slack.
#include <catch2/catch.hpp>

#include <attnkit/attnkit.hpp>

#include <sys/resource.h>

#include <vector>

#include "support.hpp"

namespace {
long peak_rss_kib() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_maxrss;  // KiB on Linux
}
}  // namespace

TEST_CASE("backward memory at N = 16384 is O(N·D), not N²", "[backward][memory]") {
  using namespace attnkit;
  const index_t N = 16384, D = 64;
  const auto n = static_cast<std::size_t>(N * D);
  const auto q = attnkit_test::randn(n, 1), k = attnkit_test::randn(n, 2), v = attnkit_test::randn(n, 3),
             dout = attnkit_test::randn(n, 4);
  std::vector<float> out(n), lse(static_cast<std::size_t>(N)), dq(n), dk(n), dv(n);
  options opt;
  opt.causal = causal::bottom_right;
  opt.lse = lse.data();
  opt.num_threads = 2;
  const auto qv = bhsd(q.data(), 1, 1, N, D), kv = bhsd(k.data(), 1, 1, N, D), vv = bhsd(v.data(), 1, 1, N, D);
  attention(softmax{}, qv, kv, vv, bhsd(out.data(), 1, 1, N, D), opt);
  for (auto* g : {&dq, &dk, &dv}) std::fill(g->begin(), g->end(), 1.0f);  // touched before the baseline
  const long before = peak_rss_kib();
  attention_backward(softmax{}, qv, kv, vv, bhsd(static_cast<const float*>(out.data()), 1, 1, N, D), lse.data(),
                     bhsd(dout.data(), 1, 1, N, D), bhsd(dq.data(), 1, 1, N, D), bhsd(dk.data(), 1, 1, N, D),
                     bhsd(dv.data(), 1, 1, N, D), opt);
  const long grown = peak_rss_kib() - before;
  INFO("peak RSS grew by " << grown << " KiB during the backward (N x N floats: " << N * N * 4 / 1024 << " KiB)");
  CHECK(grown < 64 * 1024);
  double sum = 0;
  for (float x : dq) sum += std::abs(x);
  CHECK(std::isfinite(sum));
  CHECK(sum > 0);
}
