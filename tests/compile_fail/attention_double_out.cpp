// expect: attnkit: out must be a mutable view of float, tensor_view<float> \(rule:
// A float64 output buffer, with an explicit arch and an observer (the catch-all takes every argument form).
#include <attnkit/attnkit.hpp>

#include <cstdint>
#include <vector>

int main() {
  std::vector<float> q(64), k(64), v(64);
  std::vector<double> out(64);
  attnkit::options opt;
  attnkit::attention<attnkit::simd::scalar>(attnkit::softmax{}, attnkit::bhsd(q.data(), 1, 1, 4, 16),
                                            attnkit::bhsd(k.data(), 1, 1, 4, 16), attnkit::bhsd(v.data(), 1, 1, 4, 16),
                                            attnkit::bhsd(out.data(), 1, 1, 4, 16), opt, attnkit::null_observer{});
}
