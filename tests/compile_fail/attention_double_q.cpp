// expect: attnkit: q must be a view of float, bfloat16 or float16 \(rule: q, k, v float; or q float with k and v both bfloat16 or both float16; or q, k, v all bfloat16 or all float16; out float, or q's type when q is 16-bit\)
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
