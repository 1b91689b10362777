// expect: attnkit: attention_gated's gates g1 and g2 must be views of float
// Gates in float64.
#include <attnkit/attnkit.hpp>

#include <cstdint>
#include <vector>

int main() {
  std::vector<float> q(64), k(64), v(64), out(64);
  std::vector<double> g(16);
  const auto gate = attnkit::bhsd(g.data(), 1, 1, 1, 16);
  attnkit::attention_gated(attnkit::stochastic_permutation{}, gate, gate, attnkit::bhsd(q.data(), 1, 1, 4, 16),
                           attnkit::bhsd(k.data(), 1, 1, 4, 16), attnkit::bhsd(v.data(), 1, 1, 4, 16),
                           attnkit::bhsd(out.data(), 1, 1, 4, 16));
}
