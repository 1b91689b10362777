// The smallest attnkit program: causal softmax attention over one batch of 2 heads.
// Every key carries the same value vector (0, 1, 2, 3), so whatever the attention
// weights are, every output row must be (0, 1, 2, 3): the program checks that.
#include <attnkit/attnkit.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const long B = 1, H = 2, L = 5, D = 4;
  std::vector<float> q(B * H * L * D), k(B * H * L * D), v(B * H * L * D), out(B * H * L * D);
  for (std::size_t i = 0; i < q.size(); ++i) {
    q[i] = std::sin(0.7f * static_cast<float>(i));  // arbitrary queries and keys
    k[i] = std::cos(0.3f * static_cast<float>(i));
    v[i] = static_cast<float>(i % D);  // every key: value (0, 1, 2, 3)
  }

  // Views: pointer + extents + strides, no copy. Logical order [batch, heads, seq, dim].
  auto qv = attnkit::bhsd(q.data(), B, H, L, D);
  auto kv = attnkit::bhsd(k.data(), B, H, L, D);
  auto vv = attnkit::bhsd(v.data(), B, H, L, D);
  auto ov = attnkit::bhsd(out.data(), B, H, L, D);

  attnkit::options opt;  // scale defaults to 1/sqrt(D)
  opt.causal = attnkit::causal::bottom_right;
  attnkit::attention(attnkit::softmax{}, qv, kv, vv, ov, opt);

  double err = 0;
  for (long h = 0; h < H; ++h)
    for (long i = 0; i < L; ++i) {
      const float* row = &out[static_cast<std::size_t>((h * L + i) * D)];
      std::printf("head %ld query %ld: %.4f %.4f %.4f %.4f\n", h, i, row[0], row[1], row[2], row[3]);
      for (long d = 0; d < D; ++d) err = std::fmax(err, std::fabs(row[d] - static_cast<float>(d)));
    }
  std::printf("max |out - (0,1,2,3)| = %.2e  -> %s\n", err, err < 1e-5 ? "OK" : "FAILED");
  return err < 1e-5 ? 0 : 1;
}
