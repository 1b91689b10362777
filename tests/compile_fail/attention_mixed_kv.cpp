// expect: attnkit: k and v must have the same element type \(rule:
// bfloat16 K with float16 V.
#include <attnkit/attnkit.hpp>

#include <cstdint>
#include <vector>

int main() {
  std::vector<float> q(64), out(64);
  std::vector<attnkit::bfloat16> k(64);
  std::vector<attnkit::float16> v(64);
  attnkit::attention(attnkit::softmax{}, attnkit::bhsd(q.data(), 1, 1, 4, 16), attnkit::bhsd(k.data(), 1, 1, 4, 16),
                     attnkit::bhsd(v.data(), 1, 1, 4, 16), attnkit::bhsd(out.data(), 1, 1, 4, 16));
}
