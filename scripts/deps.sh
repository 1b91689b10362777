# shellcheck shell=bash
# Sourced by scripts/test.sh and scripts/bench.sh: make sure Debian packages are there.
#   ensure_packages pkg...   installs the missing ones with apt-get when run as root;
#                            otherwise prints the exact apt-get line and exits 1.

attnkit_missing_packages() {
  local p missing=()
  for p in "$@"; do
    if [[ "$(dpkg-query -W -f='${db:Status-Abbrev}' "$p" 2>/dev/null)" != ii* ]]; then
      missing+=("$p")
    fi
  done
  echo "${missing[*]}"
}

ensure_packages() {
  if ! command -v dpkg-query >/dev/null 2>&1; then
    echo "note: not a Debian/Ubuntu system; make sure these are installed: $*" >&2
    return 0
  fi
  local missing
  missing=$(attnkit_missing_packages "$@")
  [[ -z "$missing" ]] && return 0
  # shellcheck disable=SC2086
  if [[ "$(id -u)" -eq 0 ]]; then
    echo "== installing missing packages: $missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq </dev/null
    apt-get install -y -qq --no-install-recommends $missing </dev/null
    missing=$(attnkit_missing_packages "$@")
    if [[ -n "$missing" ]]; then
      echo "error: still missing after apt-get: $missing" >&2
      exit 1
    fi
  else
    echo "error: missing packages: $missing" >&2
    echo "install them with:" >&2
    echo "  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing" >&2
    exit 1
  fi
}

# Packages every build needs (Debian 12 names).
ATTNKIT_BUILD_PACKAGES=(cmake g++ make libeigen3-dev libxsimd-dev catch2 libbenchmark-dev ccache pkgconf)

# Sanitizer and fuzzing builds: Clang and its runtime libraries (ASan, UBSan, libFuzzer).
ATTNKIT_CLANG_PACKAGES=(clang libclang-rt-14-dev)

# The UndefinedBehaviorSanitizer checks of the sanitizer and fuzz builds (with ASan):
# everything in -fsanitize=undefined that concerns values — integer overflow (the
# extents, windows and strides users pass), shifts, division, float-to-int casts,
# array bounds, bool/enum loads, unreachable code, missing returns. Left out:
# `alignment` (the SIMD code loads unaligned by design), `null` and `object-size`
# (ASan reports those accesses itself), `pointer-overflow` (offsets are formed in
# checked int64 arithmetic, which signed-integer-overflow watches, before any pointer
# is), and `vptr`/`function`. Those four instrument every memory access and doubled
# the instrumented compile time (test_backward_weights: 118 s with them, 51 s without, clang 14).
ATTNKIT_UBSAN_CHECKS="signed-integer-overflow,shift,integer-divide-by-zero,float-cast-overflow,bounds,return,unreachable,vla-bound,bool,enum,builtin,nonnull-attribute,returns-nonnull-attribute"

# MPI (Open MPI): attnkit/distributed/ring.hpp, its tests (mpiexec -np 2 / 4) and example.
ATTNKIT_MPI_PACKAGES=(libopenmpi-dev openmpi-bin)

# The aarch64 (NEON) cross build run under qemu (scripts/test.sh --neon): the cross
# compiler with its aarch64 glibc and libstdc++, and qemu-aarch64. The headers
# (xsimd, Catch2) are the host's arch-independent ones: no aarch64 -dev packages.
ATTNKIT_NEON_PACKAGES=(cmake make ccache libxsimd-dev catch2 g++-aarch64-linux-gnu qemu-user)
