// PyTorch / FlashAttention buffers are [batch, seq, heads, dim] (BSHD). attnkit reads
// them in place through strides: attnkit::bshd(ptr, B, L, H, D) is a view with the
// logical order [batch, heads, seq, dim], no copy. This example runs the same data
// once from a BSHD buffer and once from a BHSD copy and prints the largest difference
// (0: same kernel, same numbers).
#include <attnkit/attnkit.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

int main() {
  const long B = 2, L = 50, H = 4, D = 64;
  const auto n = static_cast<std::size_t>(B * L * H * D);
  std::mt19937 gen(42);
  std::normal_distribution<float> nd;
  std::vector<float> q(n), k(n), v(n);  // BSHD, as torch.randn(B, L, H, D) would lay them out
  for (auto* t : {&q, &k, &v})
    for (auto& x : *t) x = nd(gen);

  // The same tensors copied to BHSD, the "reference" layout.
  auto to_bhsd = [&](const std::vector<float>& src) {
    std::vector<float> dst(n);
    for (long b = 0; b < B; ++b)
      for (long s = 0; s < L; ++s)
        for (long h = 0; h < H; ++h)
          for (long d = 0; d < D; ++d)
            dst[static_cast<std::size_t>(((b * H + h) * L + s) * D + d)] =
                src[static_cast<std::size_t>(((b * L + s) * H + h) * D + d)];
    return dst;
  };
  const auto q2 = to_bhsd(q), k2 = to_bhsd(k), v2 = to_bhsd(v);

  attnkit::options opt;
  opt.causal = attnkit::causal::top_left;  // PyTorch is_causal=True

  std::vector<float> out_bshd(n), out_bhsd(n);
  attnkit::attention(attnkit::softmax{}, attnkit::bshd(q.data(), B, L, H, D), attnkit::bshd(k.data(), B, L, H, D),
                     attnkit::bshd(v.data(), B, L, H, D), attnkit::bshd(out_bshd.data(), B, L, H, D), opt);
  attnkit::attention(attnkit::softmax{}, attnkit::bhsd(q2.data(), B, H, L, D), attnkit::bhsd(k2.data(), B, H, L, D),
                     attnkit::bhsd(v2.data(), B, H, L, D), attnkit::bhsd(out_bhsd.data(), B, H, L, D), opt);

  // Compare element (b, h, s, d) of both outputs through their own layouts.
  double max_diff = 0;
  for (long b = 0; b < B; ++b)
    for (long h = 0; h < H; ++h)
      for (long s = 0; s < L; ++s)
        for (long d = 0; d < D; ++d) {
          const float x = out_bshd[static_cast<std::size_t>(((b * L + s) * H + h) * D + d)];
          const float y = out_bhsd[static_cast<std::size_t>(((b * H + h) * L + s) * D + d)];
          max_diff = std::fmax(max_diff, std::fabs(static_cast<double>(x) - y));
        }
  std::printf("B=%ld L=%ld H=%ld D=%ld causal(top-left): out[0,0,0,0:4] = %.4f %.4f %.4f %.4f\n", B, L, H, D,
              out_bshd[0], out_bshd[1], out_bshd[2], out_bshd[3]);
  std::printf("max |BSHD in place - BHSD copy| = %.3g  -> %s\n", max_diff, max_diff <= 1e-6 ? "OK" : "FAILED");
  return max_diff <= 1e-6 ? 0 : 1;
}
