// expect: attnkit: attention_gated and kernelized_entropy take float q, k and v only
// kernelized_entropy with a float64 q.
#include <attnkit/attnkit.hpp>

#include <cstdint>
#include <vector>

int main() {
  std::vector<double> q(64);
  std::vector<float> k(64), v(64);
  attnkit::entropy_stats stats;
  attnkit::kernelized_entropy(attnkit::log_normal{}, attnkit::bhsd(q.data(), 1, 1, 4, 16),
                              attnkit::bhsd(k.data(), 1, 1, 4, 16), attnkit::bhsd(v.data(), 1, 1, 4, 16), {},
                              attnkit::observe(stats));
}
