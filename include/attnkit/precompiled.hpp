#pragma once
/// \file
/// Precompiled mode: include this instead of attnkit/attnkit.hpp and link
/// attnkit::precompiled (CMake option ATTNKIT_PRECOMPILED). The common attention()
/// calls listed below are then declared `extern template`: the library compiled
/// them once, so a translation unit calling them parses the headers but does not
/// instantiate the kernels (scripts/compile_time.sh measures the difference).
/// The library is built with its own -march (ATTNKIT_PRECOMPILED_ARCH_FLAGS,
/// passed on to its users): the instantiations are for that simd::default_arch,
/// with no observer. Other calls (another policy, an observer, an explicit Arch)
/// compile header-only as usual. Without ATTNKIT_PRECOMPILED (the library defines
/// it for its users) this header is the same as attnkit/attnkit.hpp.
#include "attnkit.hpp"

/// The (policy, K/V type) pairs attnkit::precompiled instantiates.
#define ATTNKIT_PRECOMPILED_PAIRS(X)                                                                     \
  X(attnkit::softmax, float)                                                                             \
  X(attnkit::softmax, attnkit::bfloat16)                                                                 \
  X(attnkit::softmax, attnkit::float16)                                                                  \
  X(attnkit::sigmoid, float)                                                                             \
  X(attnkit::log_normal, float)                                                                          \
  X(attnkit::stochastic_permutation, float)                                                              \
  X(attnkit::linear<attnkit::feature::elu_plus_one>, float)                                              \
  X(attnkit::linear<attnkit::feature::relu>, float)                                                      \
  X(attnkit::linear<attnkit::feature::favor_plus>, float)                                                \
  X(attnkit::linear<attnkit::feature::cosformer>, float)

/// One explicit instantiation (declaration with `extern`, definition without) of
/// attention<simd::default_arch, POLICY, null_observer> for K/V of type KV.
#define ATTNKIT_PRECOMPILED_ATTENTION(EXTERN, POLICY, KV)                                                \
  EXTERN template void attnkit::attention<attnkit::simd::default_arch, POLICY, attnkit::null_observer>( \
      const POLICY&, attnkit::tensor_view<const float>, attnkit::tensor_view<const KV>,                    \
      attnkit::tensor_view<const KV>, attnkit::tensor_view<float>, const attnkit::options&,                \
      attnkit::null_observer&&);

/// 16-bit end-to-end softmax calls (q, k, v of type T; out T or float): the
/// instantiation is of the call's body, detail::attention_half_impl, so a call
/// whose views are const or not (a different public template each) finds it.
#define ATTNKIT_PRECOMPILED_HALF(X)                                                                       \
  X(attnkit::bfloat16, attnkit::bfloat16)                                                                \
  X(attnkit::bfloat16, float)                                                                            \
  X(attnkit::float16, attnkit::float16)                                                                  \
  X(attnkit::float16, float)

#define ATTNKIT_PRECOMPILED_HALF_ATTENTION(EXTERN, T, OUT)                                                \
  EXTERN template void                                                                                   \
  attnkit::detail::attention_half_impl<attnkit::simd::default_arch, attnkit::softmax, T, OUT,           \
                                       attnkit::null_observer>(                                          \
      const attnkit::softmax&, const attnkit::tensor_view<const T>&, const attnkit::tensor_view<const T>&, \
      const attnkit::tensor_view<const T>&, const attnkit::tensor_view<OUT>&, const attnkit::options&,     \
      attnkit::null_observer&);

#if defined(ATTNKIT_PRECOMPILED)
#define ATTNKIT_DETAIL_EXTERN_PAIR(POLICY, KV) ATTNKIT_PRECOMPILED_ATTENTION(extern, POLICY, KV)
ATTNKIT_PRECOMPILED_PAIRS(ATTNKIT_DETAIL_EXTERN_PAIR)
#undef ATTNKIT_DETAIL_EXTERN_PAIR
#define ATTNKIT_DETAIL_EXTERN_HALF(T, OUT) ATTNKIT_PRECOMPILED_HALF_ATTENTION(extern, T, OUT)
ATTNKIT_PRECOMPILED_HALF(ATTNKIT_DETAIL_EXTERN_HALF)
#undef ATTNKIT_DETAIL_EXTERN_HALF
#endif
