#pragma once
/// \file
/// Opt-in run-time ISA dispatch for x86-64: attnkit::runtime::attention() runs the
/// kernels compiled for the best of three targets this CPU supports, chosen once
/// from cpuid, so a binary built for the generic x86-64 baseline still runs its
/// attention on AVX2 or AVX-512 where the machine has them.
///
///   target      compiler flags       xsimd path     CPUs
///   x86_64      -march=x86-64        sse2           every x86-64
///   x86_64_v3   -march=x86-64-v3     fma3+avx2      Haswell, Zen 1 and later
///   x86_64_v4   -march=x86-64-v4     avx512bw       Skylake-SP, Ice Lake, Zen 4/5
///
/// The kernels of each target live in their own translation unit compiled with
/// that target's flags (attnkit/dispatch/runtime_kernels.hpp); CMake generates and
/// adds them: attnkit_add_runtime_dispatch(app POLICIES softmax KV float bfloat16)
/// (cmake/attnkitRuntimeDispatch.cmake, included by find_package(attnkit)). This
/// header declares the entry points and picks the target; it needs no -march.
/// A (policy, K/V type) pair that was not listed there is a link error naming
/// attnkit::runtime::detail::attention_on<...>.
///
/// The compile-time path (attnkit::attention, simd::default_arch) is unchanged.
#include <type_traits>

#include "../core/dtype.hpp"
#include "../core/error.hpp"
#include "../core/options.hpp"
#include "../core/tensor_view.hpp"
#include "../policy/family.hpp"

#if !(defined(__x86_64__) || defined(_M_X64))
#error "attnkit/dispatch/runtime.hpp: run-time dispatch is implemented for x86-64 only"
#endif

#include <cpuid.h>

#include <xsimd/config/xsimd_cpuid.hpp>

namespace attnkit::runtime {

namespace detail {
/// F16C, MOVBE (CPUID.1:ECX bits 29, 22) and LZCNT (CPUID.80000001h:ECX bit 5),
/// which x86-64-v3 code may use and Clang 14's __builtin_cpu_supports cannot name.
inline bool has_f16c_movbe_lzcnt() noexcept {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d) || !(c >> 29 & 1u) || !(c >> 22 & 1u)) return false;
  return __get_cpuid(0x80000001u, &a, &b, &c, &d) && (c >> 5 & 1u);
}
}  // namespace detail

/// The x86-64 micro-architecture levels with a kernel build, lowest first.
enum class target : int { x86_64 = 0, x86_64_v3 = 1, x86_64_v4 = 2 };

inline constexpr const char* target_name(target t) noexcept {
  switch (t) {
    case target::x86_64_v4: return "x86-64-v4";
    case target::x86_64_v3: return "x86-64-v3";
    default: return "x86-64";
  }
}

/// Whether this CPU (and OS) runs code compiled for `t`. xsimd's cpuid table says
/// which vector extensions exist; the compiler's run-time check adds what xsimd
/// 8.1 does not look at: that the OS saves the AVX/AVX-512 registers (XGETBV) and
/// the scalar extensions -march=x86-64-v3/v4 may also emit (BMI, LZCNT, MOVBE,
/// F16C, AVX512VL).
inline bool supported(target t) noexcept {
  const auto cpu = xsimd::available_architectures();
  switch (t) {
    case target::x86_64: return true;
    case target::x86_64_v3:
      return cpu.fma3_avx2 && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
             __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2") && detail::has_f16c_movbe_lzcnt();
    case target::x86_64_v4:
      return supported(target::x86_64_v3) && cpu.avx512bw && cpu.avx512dq && cpu.avx512cd &&
             __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512cd") &&
             __builtin_cpu_supports("avx512vl");
  }
  return false;
}

/// The best target this CPU runs: what runtime::attention() uses. Decided once.
inline target selected_target() noexcept {
  static const target best = supported(target::x86_64_v4)   ? target::x86_64_v4
                             : supported(target::x86_64_v3) ? target::x86_64_v3
                                                            : target::x86_64;
  return best;
}

namespace detail {
/// Defined in the target's own translation unit (runtime_kernels.hpp), explicitly
/// instantiated there for each (policy, K/V type) the program asked for.
template <target T, class P, class KV>
void attention_on(const P& pol, tensor_view<const float> q, tensor_view<const KV> k, tensor_view<const KV> v,
                  tensor_view<float> out, const options& opt);
/// simd::arch_name of the kernels compiled in target T's translation unit.
template <target T>
const char* arch_name_of() noexcept;
}  // namespace detail

// A kernels translation unit (runtime_kernels.hpp, ATTNKIT_RUNTIME_TARGET defined)
// sees only the declarations above: the dispatching code below would make it
// instantiate the other targets' kernels with its own -march.
#ifndef ATTNKIT_RUNTIME_TARGET
namespace detail {
template <class P, class KV>
void dispatch(target t, const P& pol, tensor_view<const float> q, tensor_view<const KV> k, tensor_view<const KV> v,
              tensor_view<float> out, const options& opt) {
  switch (t) {
    case target::x86_64_v4: return attention_on<target::x86_64_v4>(pol, q, k, v, out, opt);
    case target::x86_64_v3: return attention_on<target::x86_64_v3>(pol, q, k, v, out, opt);
    default: return attention_on<target::x86_64>(pol, q, k, v, out, opt);
  }
}
}  // namespace detail

/// The xsimd name of the kernel path runtime::attention() runs here: "avx512bw",
/// "fma3+avx2" or "sse2" (compare simd::arch_name<>() for the compile-time path).
inline const char* selected_arch_name() noexcept {
  switch (selected_target()) {
    case target::x86_64_v4: return detail::arch_name_of<target::x86_64_v4>();
    case target::x86_64_v3: return detail::arch_name_of<target::x86_64_v3>();
    default: return detail::arch_name_of<target::x86_64>();
  }
}

/// K and V: views of float, bfloat16 or float16 (const or not), one type for both.
template <class K, class V>
concept kv_pair = is_kv_storage_v<std::remove_const_t<K>> && std::is_same_v<std::remove_const_t<K>, std::remove_const_t<V>>;

/// attention(pol, q, k, v, out, opt) on the kernels of selected_target(). Same
/// arguments, validation, results and errors as attnkit::attention, except that
/// there is no Arch parameter and no observer.
template <policy P, class K, class V>
  requires kv_pair<K, V>
void attention(const P& pol, tensor_view<const float> q, tensor_view<K> k, tensor_view<V> v, tensor_view<float> out,
               const options& opt = {}) {
  using KV = std::remove_const_t<K>;
  detail::dispatch<P, KV>(selected_target(), pol, q, k, v, out, opt);
}

/// The same call on an explicit target, e.g. to compare targets in a test. Throws
/// invalid_argument_error if this CPU cannot run `t`.
template <policy P, class K, class V>
  requires kv_pair<K, V>
void attention_on(target t, const P& pol, tensor_view<const float> q, tensor_view<K> k, tensor_view<V> v,
                  tensor_view<float> out, const options& opt = {}) {
  using KV = std::remove_const_t<K>;
  if (!supported(t)) attnkit::detail::fail("target", "", "one this CPU supports", target_name(t));
  detail::dispatch<P, KV>(t, pol, q, k, v, out, opt);
}

#endif  // ATTNKIT_RUNTIME_TARGET

}  // namespace attnkit::runtime
