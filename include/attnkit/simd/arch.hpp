#pragma once
/// \file
/// Compile-time architecture selection. Kernels are templates on an `Arch` tag:
/// an xsimd architecture (xsimd::sse4_2, xsimd::fma3<xsimd::avx2>, xsimd::avx512f,
/// ...) or attnkit::simd::scalar, a width-1 fallback that needs no SIMD extension.
/// The default is the best architecture the compiler targets.
#include <tuple>
#include <type_traits>

#include <xsimd/xsimd.hpp>

/// Forces inlining of the helpers that work on register tiles. An out-of-line call
/// makes the caller spill every live vector register (all are caller-saved), so a
/// kernel whose 24 accumulators cross one such call runs at half speed. GCC's own
/// heuristics drop these inlines once a caller has many template instances.
#if defined(__GNUC__)
#define ATTNKIT_FORCE_INLINE [[gnu::always_inline]] inline
#else
#define ATTNKIT_FORCE_INLINE inline
#endif

namespace attnkit::simd {

/// Portable fallback "architecture": one float per vector, plain C++.
struct scalar {
  static constexpr const char* name() noexcept { return "scalar"; }
};

#if XSIMD_WITH_SSE2 || XSIMD_WITH_NEON || XSIMD_WITH_NEON64
using default_arch = xsimd::default_arch;
#else
using default_arch = scalar;
#endif

// An x86 build without AVX2 (no -march: GCC and Clang target SSE2) runs attention()
// several times slower, silently. Say so once per translation unit, as a note
// (#pragma message: not a warning for GCC, and kept out of -Werror for Clang).
// Silence it with -DATTNKIT_NO_ARCH_WARNING; attnkit/dispatch/runtime.hpp picks
// AVX2/AVX-512 at run time instead.
#if (defined(__x86_64__) || defined(_M_X64) || defined(__i386__)) && !XSIMD_WITH_AVX2 && \
    !defined(ATTNKIT_NO_ARCH_WARNING)
#if defined(__clang__)
#pragma clang diagnostic push
#pragma clang diagnostic warning "-W#pragma-messages"
#endif
#pragma message( \
    "attnkit: compiling for x86 below AVX2 (no -march?): attention() runs several times slower. Add -march=native " \
    "or -march=x86-64-v3/v4, or see attnkit/dispatch/runtime.hpp; silence with -DATTNKIT_NO_ARCH_WARNING")
#if defined(__clang__)
#pragma clang diagnostic pop
#endif
#endif

template <class Arch>
inline constexpr bool is_scalar_v = std::is_same_v<Arch, scalar>;

namespace detail {
template <class... A>
struct type_list {};
template <class L, class A, bool Keep>
struct push_if;
template <class... Ts, class A>
struct push_if<std::tuple<Ts...>, A, true> {
  using type = std::tuple<Ts..., A>;
};
template <class... Ts, class A>
struct push_if<std::tuple<Ts...>, A, false> {
  using type = std::tuple<Ts...>;
};
template <class L, class A, bool Keep>
using push_if_t = typename push_if<L, A, Keep>::type;
}  // namespace detail

/// Every architecture this translation unit can run, as a std::tuple of tags:
/// scalar first, then SSE4.2, AVX2+FMA and AVX-512F when the compiler targets
/// them, or NEON64 on aarch64 (baseline there). Tests iterate over it (Catch2
/// TEMPLATE_LIST_TEST_CASE).
#if XSIMD_WITH_NEON64
using compiled_archs = std::tuple<scalar, xsimd::neon64>;
#else
using compiled_archs = detail::push_if_t<
    detail::push_if_t<detail::push_if_t<std::tuple<scalar>, xsimd::sse4_2, XSIMD_WITH_SSE4_2>,
                      xsimd::fma3<xsimd::avx2>, XSIMD_WITH_AVX2 && XSIMD_WITH_FMA3_AVX2>,
    xsimd::avx512f, XSIMD_WITH_AVX512F>;
#endif

/// The name of an arch tag: xsimd's ("sse2", "fma3+avx2", "avx512bw", ...) or
/// "scalar". arch_name<>() names default_arch, the path attention() takes.
template <class Arch = default_arch>
constexpr const char* arch_name() noexcept {
  if constexpr (is_scalar_v<Arch>)
    return "scalar";
  else
    return Arch::name();
}

}  // namespace attnkit::simd
