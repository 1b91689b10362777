#!/usr/bin/env bash
# Build attnkit and run the whole test suite (unit tests, examples, header
# self-containment, find_package / add_subdirectory consumers, benchmark smoke test,
# ring attention under mpiexec with 2 and 4 ranks).
#
#   scripts/test.sh [--sanitize | --tsan | --neon] [--build-dir DIR]
#
#   --sanitize        ASan + UBSan build with Clang in its own directory (default
#                     build-sanitize); the oracle tests instantiate the best arch
#                     only (ATTNKIT_TEST_ARCHS=best); the examples, the
#                     packaging/docs checks, the tests that run no kernel code
#                     (the float64 oracle's own) and the peak-RSS test (meaningless
#                     under ASan) are left to the plain build, and fuzz_replay to
#                     scripts/fuzz.sh (whose ASan build replays the same regression
#                     inputs before fuzzing), to stay in CI's budget. UBSan checks:
#                     ATTNKIT_UBSAN_CHECKS in scripts/deps.sh
#   --tsan            ThreadSanitizer (Clang) over the thread-pool and concurrency tests
#                     only: test_lifecycle (without its fork() cases, which TSan does
#                     not support) and the lifecycle_exit program (default build-tsan)
#   --neon            aarch64 (NEON) cross build, run under qemu-user (default
#                     build-neon): g++-aarch64-linux-gnu with
#                     cmake/toolchains/aarch64-linux-gnu.cmake, -march=armv8-a, so
#                     simd::default_arch is xsimd::neon64. Builds and runs test_simd
#                     (scalar and neon64), fuzz_replay (the regression inputs and
#                     1500 random cases against the float64 oracle) and the oracle
#                     tests test_softmax_oracle and test_kernelized_oracle
#                     (ATTNKIT_TEST_ARCHS=best: the neon64 path only; the scalar
#                     path is portable C++, checked by the plain build), at -O2
#                     (-O1 compiles a third faster but doubles the run time under
#                     qemu). test_sparse_oracle also passes but would add ~80 s of
#                     CPU (compile + qemu) to CI: ATTNKIT_NEON_TESTS="..." replaces
#                     the list, e.g. to add it. No MPI, benchmarks, examples or
#                     packaging checks. CI stage 5 (.ci/run): 218 s cold on 2 cores
#                     (packages 23 s, configure 3 s, build 143 s, qemu runs 49 s).
#   --build-dir DIR   build directory (default: build, build-sanitize, build-tsan or build-neon)
#
# Installs missing Debian packages with apt-get when run as root; otherwise prints the
# apt-get line and exits 1. CI=true turns warnings into errors (-DATTNKIT_WERROR=ON).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sanitize=0
tsan=0
neon=0
build_dir=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --sanitize) sanitize=1 ;;
    --tsan) tsan=1 ;;
    --neon) neon=1 ;;
    --build-dir) [[ $# -ge 2 ]] || { echo "error: --build-dir needs a value" >&2; exit 2; }; build_dir=$2; shift ;;
    --build-dir=*) build_dir=${1#*=} ;;
    -h|--help) sed -n '2,33p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=scripts/deps.sh
source "$root/scripts/deps.sh"
jobs=$(nproc 2>/dev/null || echo 2)

if [[ $neon -eq 1 ]]; then
  [[ $sanitize -eq 1 || $tsan -eq 1 ]] && { echo "error: --neon is a build of its own" >&2; exit 2; }
  ensure_packages "${ATTNKIT_NEON_PACKAGES[@]}"
  [[ -z "$build_dir" ]] && build_dir="$root/build-neon"
  # The tests that run under qemu: the SIMD layer, the fuzz replay (every variant,
  # options and layouts against the oracle) and the softmax and kernelized oracle
  # tests (odd shapes, head dims, GQA, masks, both causal alignments, windows,
  # strides, long key ranges with block-sparse chunks; linear and log-normal).
  read -r -a neon_tests <<<"${ATTNKIT_NEON_TESTS:-test_simd fuzz_replay test_softmax_oracle test_kernelized_oracle}"
  # -Wno-psabi: GCC's note that passing pairs of NEON vectors changed ABI in GCC 10.1
  # (pages of it per kernel); irrelevant inside one build.
  echo "== configure ($build_dir, aarch64 cross build, NEON)"
  cmake -S "$root" -B "$build_dir" --toolchain "$root/cmake/toolchains/aarch64-linux-gnu.cmake" \
        -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O2" "-DCMAKE_CXX_FLAGS=-march=armv8-a -Wno-psabi" \
        -DATTNKIT_NATIVE=OFF -DATTNKIT_WITH_MPI=OFF -DATTNKIT_BUILD_TESTS=ON -DATTNKIT_BUILD_EXAMPLES=OFF \
        -DATTNKIT_BUILD_BENCH=OFF -DATTNKIT_TEST_EXTRAS=OFF -DATTNKIT_TEST_ARCHS=best \
        "-DATTNKIT_WERROR=$([[ "${CI:-}" == "true" ]] && echo ON || echo OFF)" </dev/null
  echo "== build ${neon_tests[*]} (-j$jobs)"
  cmake --build "$build_dir" -j "$jobs" --target "${neon_tests[@]}" </dev/null
  echo "== test (qemu-aarch64)"
  regex="^($(IFS='|'; echo "${neon_tests[*]}"))\$"
  ctest --test-dir "$build_dir" --output-on-failure -j2 --timeout 600 -R "$regex" </dev/null
  echo "== NEON tests passed under qemu ($build_dir)"
  exit 0
fi

# python3: the bench_report test; Open MPI: the ring-attention tests
ensure_packages "${ATTNKIT_BUILD_PACKAGES[@]}" python3 "${ATTNKIT_MPI_PACKAGES[@]}"
[[ $sanitize -eq 1 || $tsan -eq 1 ]] && ensure_packages "${ATTNKIT_CLANG_PACKAGES[@]}"
[[ $sanitize -eq 1 && $tsan -eq 1 ]] && { echo "error: --sanitize and --tsan are separate builds" >&2; exit 2; }

if [[ -z "$build_dir" ]]; then
  build_dir="$root/build"
  [[ $sanitize -eq 1 ]] && build_dir="$root/build-sanitize"
  [[ $tsan -eq 1 ]] && build_dir="$root/build-tsan"
fi

if [[ $tsan -eq 1 ]]; then
  # A few translation units only: the pool, many user threads, nested calls, the
  # thread cap and calls after main() (docs/guarantees.md). The whole suite under
  # TSan would not fit CI's time budget, and the kernels' tasks share no state but
  # what these tests exercise.
  # -gline-tables-only: file:line in reports at about two thirds of -g's compile time.
  tsan_flags="-fsanitize=thread -fno-omit-frame-pointer -gline-tables-only"
  echo "== configure ($build_dir, ThreadSanitizer)"
  cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O1" \
        -DCMAKE_CXX_COMPILER=clang++ "-DCMAKE_CXX_FLAGS=$tsan_flags" "-DCMAKE_EXE_LINKER_FLAGS=$tsan_flags" \
        -DATTNKIT_BUILD_TESTS=ON -DATTNKIT_BUILD_EXAMPLES=OFF -DATTNKIT_BUILD_BENCH=OFF \
        -DATTNKIT_TEST_ARCHS=best "-DATTNKIT_WERROR=$([[ "${CI:-}" == "true" ]] && echo ON || echo OFF)" </dev/null
  echo "== build test_lifecycle lifecycle_exit (-j$jobs)"
  cmake --build "$build_dir" -j "$jobs" --target test_lifecycle lifecycle_exit </dev/null
  export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
  echo "== test (ThreadSanitizer)"
  "$build_dir/tests/test_lifecycle" "~[fork]" </dev/null
  for mode in pool attention-thread attention; do "$build_dir/tests/lifecycle_exit" "$mode" </dev/null; done
  echo "== ThreadSanitizer tests passed ($build_dir)"
  exit 0
fi

werror=OFF
[[ "${CI:-}" == "true" ]] && werror=ON

# Release with asserts: -O2 and no -DNDEBUG (the test targets also add -O2 themselves).
args=(-S "$root" -B "$build_dir"
      -DCMAKE_BUILD_TYPE=Release
      "-DCMAKE_CXX_FLAGS_RELEASE=-O2"
      -DATTNKIT_BUILD_TESTS=ON -DATTNKIT_BUILD_EXAMPLES=ON
      -DATTNKIT_WERROR=$werror)
if [[ $sanitize -eq 1 ]]; then
  # Clang: it compiles the instrumented tests about 4x faster than GCC 12 here.
  # -gline-tables-only instead of -g: reports keep file:line, and the instrumented
  # tests compile in about two thirds of the time (the tests build at -O2 either way).
  san="-fsanitize=address,$ATTNKIT_UBSAN_CHECKS -fno-sanitize-recover=$ATTNKIT_UBSAN_CHECKS -fno-omit-frame-pointer -gline-tables-only"
  args+=(-DCMAKE_CXX_COMPILER=clang++ "-DCMAKE_CXX_FLAGS=$san" "-DCMAKE_EXE_LINKER_FLAGS=$san"
         "-DCMAKE_CXX_FLAGS_RELEASE=-O1" -DATTNKIT_BUILD_BENCH=OFF -DATTNKIT_TEST_ARCHS=best
         -DATTNKIT_BUILD_EXAMPLES=OFF -DATTNKIT_TEST_EXTRAS=OFF
         "-DATTNKIT_TEST_EXCLUDE=^(test_(reference_.*|observe_report|version|ring_plan|interop_eigen|backward_memory)|fuzz_replay)$")
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
else
  args+=(-DATTNKIT_BUILD_BENCH=ON)
fi

echo "== configure ($build_dir, WERROR=$werror, sanitize=$sanitize)"
cmake "${args[@]}" </dev/null
echo "== build (-j$jobs)"
cmake --build "$build_dir" -j "$jobs" </dev/null
echo "== test"
ctest --test-dir "$build_dir" --output-on-failure -j2 --timeout 900 </dev/null
echo "== all tests passed ($build_dir)"
