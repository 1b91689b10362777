// expect: attnkit: q must be a view of float \(rule:
// A 16-bit q (only K and V may be 16-bit today, issue #27 item 1).
#include <attnkit/attnkit.hpp>

#include <cstdint>
#include <vector>

int main() {
  std::vector<attnkit::bfloat16> q(64), k(64), v(64);
  std::vector<float> out(64);
  attnkit::attention(attnkit::softmax{}, attnkit::bhsd(q.data(), 1, 1, 4, 16), attnkit::bhsd(k.data(), 1, 1, 4, 16),
                     attnkit::bhsd(v.data(), 1, 1, 4, 16), attnkit::bhsd(out.data(), 1, 1, 4, 16));
}
