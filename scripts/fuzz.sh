#!/usr/bin/env bash
# Coverage-guided fuzzing of attnkit::attention against the float64 oracle
# (libFuzzer + ASan + UBSan, Clang). Each input decodes to one call: variant, shapes,
# strides, GQA ratio, masks, windows, key lengths, options, and possibly one injected
# argument defect (tests/fuzz/fuzz_case.hpp says what is checked).
#
#   scripts/fuzz.sh [--seconds N] [--jobs J] [--build-dir DIR] [-- libFuzzer args...]
#
#   --seconds N       fuzzing time (default 60; CI runs 60)
#   --jobs J          parallel fuzzing processes (default 1)
#   --build-dir DIR   default: build-fuzz
#
# The corpus grows in DIR/corpus and is reused by later runs; a finding is written
# as DIR/crash-* and can be replayed with any build: build/tests/fuzz/fuzz_replay FILE.
# A long run: scripts/fuzz.sh --seconds 3600 --jobs 2
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=60
jobs=1
build_dir="$root/build-fuzz"
extra=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) seconds=${2:?--seconds needs a value}; shift ;;
    --jobs) jobs=${2:?--jobs needs a value}; shift ;;
    --build-dir) build_dir=${2:?--build-dir needs a value}; shift ;;
    --) shift; extra=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=scripts/deps.sh
source "$root/scripts/deps.sh"
ensure_packages "${ATTNKIT_BUILD_PACKAGES[@]}" "${ATTNKIT_CLANG_PACKAGES[@]}"

echo "== configure ($build_dir)"
cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CXX_FLAGS_RELEASE=-O1" \
      -DCMAKE_CXX_COMPILER=clang++ -DATTNKIT_BUILD_TESTS=ON -DATTNKIT_BUILD_FUZZER=ON \
      "-DATTNKIT_FUZZ_UBSAN=$ATTNKIT_UBSAN_CHECKS" \
      -DATTNKIT_BUILD_BENCH=OFF -DATTNKIT_BUILD_EXAMPLES=OFF -DATTNKIT_TEST_ARCHS=best </dev/null >/dev/null
echo "== build fuzz_attention"
cmake --build "$build_dir" --target fuzz_attention -j "$(nproc 2>/dev/null || echo 2)" </dev/null
mkdir -p "$build_dir/corpus"
# Past findings seed the corpus: libFuzzer runs every corpus input first, so this ASan
# + UBSan build replays them (the sanitizer test stage leaves fuzz_replay to us).
for f in "$root"/tests/fuzz/regressions/*; do
  [[ "$f" == *.md ]] || cp -f "$f" "$build_dir/corpus/regression-$(basename "$f")"
done
echo "== fuzz for ${seconds}s ($jobs job(s))"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
log="$build_dir/fuzz.log"
cd "$build_dir"
set +e
if [[ $jobs -gt 1 ]]; then
  ./tests/fuzz/fuzz_attention corpus -max_total_time="$seconds" -jobs="$jobs" -workers="$jobs" \
    -print_final_stats=1 -max_len=256 "${extra[@]}" </dev/null >"$log" 2>&1
else
  ./tests/fuzz/fuzz_attention corpus -max_total_time="$seconds" -print_final_stats=1 -max_len=256 \
    "${extra[@]}" </dev/null >"$log" 2>&1
fi
rc=$?
set -e
shopt -s nullglob
logs=("$log" fuzz-*.log)  # with --jobs, each worker writes fuzz-N.log
grep -hE "stat::number_of_executed_units|stat::peak_rss_mb|FAILURE|ERROR|case:" "${logs[@]}" || true
runs=$(awk '/stat::number_of_executed_units/ {s += $2} END {print s + 0}' "${logs[@]}")
if [[ $rc -ne 0 ]]; then
  tail -40 "$log" >&2
  echo "== fuzzing FOUND A PROBLEM after $runs executions (see $log; crash input in $build_dir)" >&2
  exit 1
fi
echo "== fuzzing: $runs executions in ${seconds}s, no finding (corpus: $(find corpus -type f | wc -l) inputs)"
