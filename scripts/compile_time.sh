#!/usr/bin/env bash
# Compile time of a user translation unit with one attention() call, header-only
# vs precompiled mode (CMake option ATTNKIT_PRECOMPILED, attnkit/precompiled.hpp).
#
#   scripts/compile_time.sh [--build-dir DIR] [--runs N]
#
# Builds attnkit::precompiled (Release, -march=native) in DIR (default
# build-precompiled), then compiles scripts/compile_time_one_call.cpp both ways
# with the same compiler and flags (-std=c++20 -O2 -march=native, no ccache), N
# times each (default 3), and prints the best wall and user CPU seconds of each.
# It also checks that the precompiled object really leaves attention() to the
# library (an undefined symbol) and that both programs print the same result.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir="$root/build-precompiled"
runs=3
while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) build_dir=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    *) echo "usage: $0 [--build-dir DIR] [--runs N]" >&2; exit 2 ;;
  esac
done
cxx=${CXX:-c++}
flags=(-std=c++20 -O2 -march=native -I "$root/include")

echo "== build attnkit::precompiled ($build_dir)"
cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER="$cxx" -DATTNKIT_PRECOMPILED=ON \
      -DATTNKIT_BUILD_TESTS=OFF -DATTNKIT_BUILD_BENCH=OFF -DATTNKIT_BUILD_EXAMPLES=OFF -DATTNKIT_INSTALL=OFF >/dev/null </dev/null
lib_start=$(date +%s)
cmake --build "$build_dir" --target attnkit_precompiled </dev/null
echo "library build: $(( $(date +%s) - lib_start )) s (wall; ccache may shorten it)"
lib=$(find "$build_dir/src" -name 'libattnkit_precompiled.a' | head -1)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src="$root/scripts/compile_time_one_call.cpp"

# best of N: prints "wall user"
measure() {
  local best_wall="" best_user=""
  for ((i = 0; i < runs; i++)); do
    local TIMEFORMAT='%R %U'
    { time "$cxx" "${flags[@]}" "$@" -c "$src" -o "$work/obj.o" 2>"$work/err" ; } 2>"$work/t" || { cat "$work/err" >&2; return 1; }
    read -r wall user <"$work/t"
    if [[ -z "$best_wall" ]] || awk "BEGIN{exit !($wall < $best_wall)}"; then best_wall=$wall; fi
    if [[ -z "$best_user" ]] || awk "BEGIN{exit !($user < $best_user)}"; then best_user=$user; fi
  done
  echo "$best_wall $best_user"
}

echo "== compile the one-call TU, best of $runs ($cxx $(${cxx} -dumpfullversion), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs))"
read -r ho_wall ho_user < <(measure)
"$cxx" "${flags[@]}" -c "$src" -o "$work/header_only.o"
read -r pc_wall pc_user < <(measure -DATTNKIT_PRECOMPILED)
"$cxx" "${flags[@]}" -DATTNKIT_PRECOMPILED -c "$src" -o "$work/precompiled.o"

if ! nm -C "$work/precompiled.o" | grep -q ' U void attnkit::attention<'; then
  echo "error: the precompiled object instantiated attention() itself" >&2
  exit 1
fi
"$cxx" "$work/header_only.o" -o "$work/header_only" -pthread
"$cxx" "$work/precompiled.o" "$lib" -o "$work/precompiled" -pthread
a=$("$work/header_only")
b=$("$work/precompiled")
if [[ "$a" != "$b" ]]; then
  echo "error: header-only printed $a, precompiled printed $b" >&2
  exit 1
fi

printf '%-14s %8s %8s\n' mode "wall s" "user s"
printf '%-14s %8s %8s\n' header-only "$ho_wall" "$ho_user"
printf '%-14s %8s %8s\n' precompiled "$pc_wall" "$pc_user"
echo "same result ($a); the precompiled object calls the library's instantiation"
