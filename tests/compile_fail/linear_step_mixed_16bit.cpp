// expect: attnkit: a 16-bit q needs k and v of its own type \(rule:
// linear_step with a bfloat16 q and float16 K/V.
#include <attnkit/attnkit.hpp>

#include <cstdint>
#include <vector>

int main() {
  std::vector<attnkit::bfloat16> q(64);
  std::vector<attnkit::float16> k(64), v(64);
  std::vector<float> out(64);
  const attnkit::linear<attnkit::feature::elu_plus_one> pol{};
  auto state = attnkit::make_linear_state(pol, 1, 1, 16, 16);
  attnkit::linear_step(pol, attnkit::bhsd(q.data(), 1, 1, 4, 16), attnkit::bhsd(k.data(), 1, 1, 4, 16),
                       attnkit::bhsd(v.data(), 1, 1, 4, 16), attnkit::bhsd(out.data(), 1, 1, 4, 16), state);
}
