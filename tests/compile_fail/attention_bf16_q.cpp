// expect: attnkit: a 16-bit q needs k and v of its own type \(rule:
// A bfloat16 q with float K/V (a 16-bit q takes K/V of its own type).
#include <attnkit/attnkit.hpp>

#include <cstdint>
#include <vector>

int main() {
  std::vector<attnkit::bfloat16> q(64);
  std::vector<float> k(64), v(64), out(64);
  attnkit::attention(attnkit::softmax{}, attnkit::bhsd(q.data(), 1, 1, 4, 16), attnkit::bhsd(k.data(), 1, 1, 4, 16),
                     attnkit::bhsd(v.data(), 1, 1, 4, 16), attnkit::bhsd(out.data(), 1, 1, 4, 16));
}
