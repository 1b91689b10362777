// expect: attnkit: attention_varlen, linear_step, attention_gated and kernelized_entropy take float q, k and v only
// attention_varlen with bfloat16 K/V (attention() takes them, varlen does not yet).
#include <attnkit/attnkit.hpp>

#include <cstdint>
#include <vector>

int main() {
  std::vector<float> q(64), out(64);
  std::vector<attnkit::bfloat16> k(64), v(64);
  const std::vector<std::int64_t> cu{0, 4};
  attnkit::attention_varlen(attnkit::softmax{}, attnkit::bhsd(q.data(), 1, 1, 4, 16),
                            attnkit::bhsd(k.data(), 1, 1, 4, 16), attnkit::bhsd(v.data(), 1, 1, 4, 16),
                            attnkit::bhsd(out.data(), 1, 1, 4, 16), cu, cu);
}
