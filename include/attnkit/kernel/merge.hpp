#pragma once
/// \file
/// Exact merge of two softmax partial results over disjoint key sets:
///   lse = logaddexp(lse1, lse2),  o = e^{lse1−lse}·o1 + e^{lse2−lse}·o2.
/// The building block of split-KV decoding, chunked prefill and ring attention.
#include <algorithm>
#include <cmath>
#include <limits>

#include "../core/error.hpp"
#include "../core/tensor_view.hpp"
#include "../core/validate.hpp"

namespace attnkit {

/// Merges (o1, lse1) and (o2, lse2) — each [B, H, L, Dv] with LSE contiguous
/// [B, H, L] — into (out, lse_out). `out` may alias o1 or o2 (element-wise update)
/// and lse_out may alias lse1 or lse2. A side with LSE = −inf contributes nothing; if
/// both are −inf the row is 0 with LSE −inf (the fully-masked convention). A NaN LSE
/// on either side (a row that saw a NaN logit) makes the merged row and LSE NaN.
inline void merge_partials(tensor_view<const float> o1, const float* lse1, tensor_view<const float> o2,
                           const float* lse2, tensor_view<float> out, float* lse_out) {
  detail::check_view_basics("o1", o1);
  detail::check_view_basics("o2", o2);
  detail::check_view_basics("out", out);
  for (int a = 0; a < 4; ++a) {
    if (o2.extent[a] != o1.extent[a])
      detail::fail("o2", std::string("extent '") + detail::axis_name(a) + "'", o1.extent[a], o2.extent[a]);
    if (out.extent[a] != o1.extent[a])
      detail::fail("out", std::string("extent '") + detail::axis_name(a) + "'", o1.extent[a], out.extent[a]);
  }
  const index_t rows = o1.batch() * o1.heads() * o1.seq();
  if (rows > 0 && (lse1 == nullptr || lse2 == nullptr))
    detail::fail(lse1 ? "lse2" : "lse1", "data", "a non-null pointer", "nullptr");
  const float ninf = -std::numeric_limits<float>::infinity();
  for (index_t b = 0; b < o1.batch(); ++b)
    for (index_t h = 0; h < o1.heads(); ++h)
      for (index_t i = 0; i < o1.seq(); ++i) {
        const index_t r = (b * o1.heads() + h) * o1.seq() + i;
        const float a = lse1[r], c = lse2[r];
        // std::max would drop a NaN next to −inf; a NaN row must stay NaN.
        const float m = std::isnan(a) || std::isnan(c) ? std::numeric_limits<float>::quiet_NaN() : std::max(a, c);
        float w1 = 0.0f, w2 = 0.0f, lse = ninf;
        if (m != ninf) {
          const float e1 = std::exp(a - m), e2 = std::exp(c - m);
          lse = m + std::log(e1 + e2);
          w1 = e1 / (e1 + e2);
          w2 = e2 / (e1 + e2);
        }
        const float* x = o1.row(b, h, i);
        const float* y = o2.row(b, h, i);
        float* z = out.row(b, h, i);
        for (index_t d = 0; d < o1.dim(); ++d) {
          const float xv = x[d * o1.stride[3]], yv = y[d * o2.stride[3]];
          // A zero weight ignores that side even if it holds NaN (masked-row NaN policy).
          z[d * out.stride[3]] = (w1 != 0.0f ? w1 * xv : 0.0f) + (w2 != 0.0f ? w2 * yv : 0.0f);
        }
        if (lse_out) lse_out[r] = lse;
      }
}

}  // namespace attnkit
