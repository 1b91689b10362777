#pragma once
/// \file
/// The kernels of one run-time dispatch target (attnkit/dispatch/runtime.hpp).
/// Include it only in a translation unit compiled with that target's flags, after
/// defining ATTNKIT_RUNTIME_TARGET (x86_64, x86_64_v3 or x86_64_v4), then list the
/// (policy, K/V type) pairs the program calls:
///
///   // compiled with -march=x86-64-v4
///   #define ATTNKIT_RUNTIME_TARGET x86_64_v4
///   #include <attnkit/dispatch/runtime_kernels.hpp>
///   ATTNKIT_RUNTIME_INSTANTIATE(attnkit::softmax, float)
///
/// attnkit_add_runtime_dispatch() (cmake/attnkitRuntimeDispatch.cmake) writes these
/// translation units. Inline functions that do not depend on the SIMD arch are
/// compiled once per target and merged by the linker, which keeps the first copy:
/// the targets' objects must be linked lowest target first (the CMake function
/// does this) so that every kept copy runs on every CPU that reaches it, and the
/// program's other translation units must not target a newer CPU than x86-64.
/// Not compatible with LTO across these objects.
#ifndef ATTNKIT_RUNTIME_TARGET
#error "define ATTNKIT_RUNTIME_TARGET (x86_64, x86_64_v3 or x86_64_v4) before including runtime_kernels.hpp"
#endif
#ifndef ATTNKIT_NO_ARCH_WARNING
#define ATTNKIT_NO_ARCH_WARNING  // the x86_64 target is below AVX2 on purpose
#endif

#include "../attnkit.hpp"
#include "runtime.hpp"

namespace attnkit::runtime::detail {

/// The flags this translation unit was compiled with must be the target's: a
/// lower ISA would waste the target, a higher one would break older CPUs.
template <target T>
constexpr bool compiled_for_v = T == target::x86_64_v4   ? XSIMD_WITH_AVX512BW && XSIMD_WITH_AVX512DQ
                                 : T == target::x86_64_v3 ? XSIMD_WITH_FMA3_AVX2 && !XSIMD_WITH_AVX512F
                                                          : XSIMD_WITH_SSE2 && !XSIMD_WITH_AVX;

template <target T, class P, class KV>
void attention_on(const P& pol, tensor_view<const float> q, tensor_view<const KV> k, tensor_view<const KV> v,
                  tensor_view<float> out, const options& opt) {
  static_assert(compiled_for_v<T>, "attnkit: this runtime_kernels translation unit is compiled with the wrong -march "
                                   "for its ATTNKIT_RUNTIME_TARGET");
  attnkit::attention<simd::default_arch>(pol, q, k, v, out, opt);
}

template <target T>
const char* arch_name_of() noexcept {
  static_assert(compiled_for_v<T>, "attnkit: this runtime_kernels translation unit is compiled with the wrong -march "
                                   "for its ATTNKIT_RUNTIME_TARGET");
  return simd::arch_name<simd::default_arch>();
}

template const char* arch_name_of<target::ATTNKIT_RUNTIME_TARGET>() noexcept;

}  // namespace attnkit::runtime::detail

/// Explicit instantiation of one (policy, K/V type) pair for this target.
#define ATTNKIT_RUNTIME_INSTANTIATE(POLICY, KV)                                                                     \
  template void attnkit::runtime::detail::attention_on<attnkit::runtime::target::ATTNKIT_RUNTIME_TARGET, POLICY, KV>( \
      const POLICY&, attnkit::tensor_view<const float>, attnkit::tensor_view<const KV>,                               \
      attnkit::tensor_view<const KV>, attnkit::tensor_view<float>, const attnkit::options&);
