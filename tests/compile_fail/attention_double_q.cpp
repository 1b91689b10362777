// expect: attnkit: q must be a view of float \(rule: q and out float; k and v both float, both bfloat16 or both float16\)
// A float64 q: attention() computes in float; the caller converts first.
#include <attnkit/attnkit.hpp>

#include <cstdint>
#include <vector>

int main() {
  std::vector<double> q(64);
  std::vector<float> k(64), v(64), out(64);
  attnkit::attention(attnkit::softmax{}, attnkit::bhsd(q.data(), 1, 1, 4, 16), attnkit::bhsd(k.data(), 1, 1, 4, 16),
                     attnkit::bhsd(v.data(), 1, 1, 4, 16), attnkit::bhsd(out.data(), 1, 1, 4, 16));
}
