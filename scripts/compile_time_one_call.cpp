// One attention() call (softmax, fp32, causal), the translation unit that
// scripts/compile_time.sh compiles header-only and in precompiled mode. The include
// is the precompiled one: without ATTNKIT_PRECOMPILED it is attnkit/attnkit.hpp.
#include <attnkit/precompiled.hpp>
#include <cstdio>
#include <vector>
int main() {
  const attnkit::index_t L = 300, D = 64;
  std::vector<float> q(L * D), k(L * D), v(L * D), out(L * D);
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = k[i] = v[i] = static_cast<float>((i * 7919) % 97) / 97.0f - 0.5f;
  attnkit::options opt;
  opt.causal = attnkit::causal::bottom_right;
  attnkit::attention(attnkit::softmax{}, attnkit::bhsd(q.data(), 1, 1, L, D), attnkit::bhsd(k.data(), 1, 1, L, D),
                     attnkit::bhsd(v.data(), 1, 1, L, D), attnkit::bhsd(out.data(), 1, 1, L, D), opt);
  double sum = 0;
  for (float x : out) sum += x;
  std::printf("%.9g\n", sum);
}
