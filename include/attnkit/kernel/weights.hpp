#pragma once
/// \file
/// A row of logits → weights for the weight functions that are not softmax
/// (normalization::sum / none; softmax's online-maximum pass lives with its
/// callers, which know the running maximum). Shared by the prefill skeleton and
/// the decode skeleton, so both evaluate a user's weight function the same way.
#include <limits>

#include "../policy/weight.hpp"
#include "../simd/vec.hpp"

namespace attnkit::detail {

/// weight(x) on logits x[0, n) in place, n a multiple of the vector width; masked
/// logits (−inf) weigh 0 whatever the function gives there. When `Sum`, adds the
/// weights to `mass`; when `Entropy`, also adds Σ w·log w to `wlogw` (w = 0 adds 0).
/// NaN logits give NaN weights (as the oracle) through the function itself.
template <class Arch, class Pol, bool Sum, bool Entropy>
ATTNKIT_FORCE_INLINE void weigh_logits(const Pol& pol, const weight_params_t<Pol>& a, float* x, index_t n,
                                       typename simd::ops<Arch>::vf& mass, typename simd::ops<Arch>::vf& wlogw) {
  using O = simd::ops<Arch>;
  using vf = typename O::vf;
  constexpr int W = O::width;
  constexpr float ninf = -std::numeric_limits<float>::infinity();
  for (index_t k = 0; k < n; k += W) {
    const vf s = O::load(x + k);
    vf w = eval_weight(pol, s, a);
    if constexpr (simd::is_scalar_v<Arch>) {
      w = s == ninf ? 0.0f : w;
    } else {
      w = xsimd::select(s == O::set1(ninf), O::set1(0.0f), w);
    }
    if constexpr (Sum || Entropy) mass = mass + w;
    if constexpr (Entropy) {
      if constexpr (simd::is_scalar_v<Arch>)
        wlogw += w > 0.0f ? w * std::log(w) : 0.0f;
      else
        wlogw = wlogw + xsimd::select(w > O::set1(0.0f), w * xsimd::log(w), O::set1(0.0f));
    }
    O::store(x + k, w);
  }
}

/// weigh_logits for any n: the tail (n mod width) goes through a padded vector.
template <class Arch, class Pol, bool Sum, bool Entropy>
void weigh_logits_any(const Pol& pol, const weight_params_t<Pol>& a, float* x, index_t n, float& mass, float& wlogw) {
  using O = simd::ops<Arch>;
  using vf = typename O::vf;
  constexpr int W = O::width;
  vf mv = O::set1(0.0f), tv = O::set1(0.0f);
  const index_t body = n / W * W;
  weigh_logits<Arch, Pol, Sum, Entropy>(pol, a, x, body, mv, tv);
  if (body < n) {
    alignas(64) float tail[W];
    for (int i = 0; i < W; ++i) tail[i] = body + i < n ? x[body + i] : -std::numeric_limits<float>::infinity();
    weigh_logits<Arch, Pol, Sum, Entropy>(pol, a, tail, W, mv, tv);
    for (index_t i = body; i < n; ++i) x[i] = tail[i - body];
  }
  mass += O::reduce_add(mv);
  wlogw += O::reduce_add(tv);
}

}  // namespace attnkit::detail
