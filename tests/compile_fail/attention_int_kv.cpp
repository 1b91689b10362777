// expect: attnkit: k and v must be views of float, bfloat16 or float16 \(rule:
// Integer K/V (e.g. a quantised cache passed without dequantising).
#include <attnkit/attnkit.hpp>

#include <cstdint>
#include <vector>

int main() {
  std::vector<float> q(64), out(64);
  std::vector<std::int8_t> k(64), v(64);
  attnkit::attention(attnkit::softmax{}, attnkit::bhsd(q.data(), 1, 1, 4, 16), attnkit::bhsd(k.data(), 1, 1, 4, 16),
                     attnkit::bhsd(v.data(), 1, 1, 4, 16), attnkit::bhsd(out.data(), 1, 1, 4, 16));
}
