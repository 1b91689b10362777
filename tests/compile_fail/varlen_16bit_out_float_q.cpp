// expect: attnkit: out must be a mutable view of float, tensor_view<float> \(rule:
// attention_varlen with a float q and a bfloat16 out (a 16-bit out needs a 16-bit q).
#include <attnkit/attnkit.hpp>

#include <cstdint>
#include <vector>

int main() {
  std::vector<float> q(64);
  std::vector<attnkit::bfloat16> k(64), v(64), out(64);
  const std::vector<std::int64_t> cu{0, 4};
  attnkit::attention_varlen(attnkit::softmax{}, attnkit::bhsd(q.data(), 1, 1, 4, 16),
                            attnkit::bhsd(k.data(), 1, 1, 4, 16), attnkit::bhsd(v.data(), 1, 1, 4, 16),
                            attnkit::bhsd(out.data(), 1, 1, 4, 16), cu, cu);
}
