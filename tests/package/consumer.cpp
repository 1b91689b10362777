// A consumer program of the packaged attnkit: one tiny softmax call, checked.
#include <attnkit/attnkit.hpp>

#include <cmath>
#include <cstdio>
#include <vector>

int main() {
  const long B = 1, H = 2, L = 7, D = 8;
  std::vector<float> q(B * H * L * D), k(q.size()), v(q.size()), out(q.size(), -1.0f);
  for (std::size_t i = 0; i < q.size(); ++i) {
    q[i] = static_cast<float>((i * 7) % 5) * 0.1f;
    k[i] = static_cast<float>((i * 3) % 11) * 0.1f;
    v[i] = 1.5f;  // every value vector is constant -> every output is 1.5
  }
  attnkit::options opt;
  opt.causal = attnkit::causal::top_left;
  attnkit::attention(attnkit::softmax{}, attnkit::bhsd(q.data(), B, H, L, D), attnkit::bhsd(k.data(), B, H, L, D),
                     attnkit::bhsd(v.data(), B, H, L, D), attnkit::bhsd(out.data(), B, H, L, D), opt);
  double err = 0;
  for (float o : out) err = std::fmax(err, std::fabs(o - 1.5));
  std::printf("attnkit %d.%d.%d consumer: max |out - 1.5| = %.2e\n", attnkit::version_major, attnkit::version_minor,
              attnkit::version_patch, err);
  return err < 1e-5 ? 0 : 1;
}
