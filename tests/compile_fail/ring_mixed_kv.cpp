// expect: attnkit: k and v must have the same element type \(rule:
// ring_attention with float K and bfloat16 V (needs MPI; skipped without it).
#include <attnkit/distributed/ring.hpp>

#include <vector>

int main() {
  std::vector<float> q(64), k(64), out(64);
  std::vector<attnkit::bfloat16> v(64);
  attnkit::distributed::ring_attention(attnkit::softmax{}, attnkit::bhsd(q.data(), 1, 1, 4, 16),
                                       attnkit::bhsd(k.data(), 1, 1, 4, 16), attnkit::bhsd(v.data(), 1, 1, 4, 16),
                                       attnkit::bhsd(out.data(), 1, 1, 4, 16), {}, MPI_COMM_WORLD);
}
