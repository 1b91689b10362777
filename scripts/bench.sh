#!/usr/bin/env bash
# Build the benchmarks (Release, -march=native), run them, and write a report:
# report.md (GFLOP/s and % of the FMA peak measured in the same run, decode GB/s vs
# triad bandwidth, attnkit vs baseline ratios), throughput.png, and the raw JSON;
# ring attention across 1/2/4 MPI ranks goes to ring_mpi.txt.
#
#   scripts/bench.sh [--quick] [--filter REGEX] [--build-dir DIR] [--out DIR]
#
#   --quick          smaller/fewer cases, one repetition (a smoke run, ~1 minute)
#   --filter REGEX   only cases matching REGEX (Google Benchmark syntax); the peak
#                    rows (peak/...) always run, the report needs them
#   --build-dir DIR  build directory (default: build-bench)
#   --out DIR        report folder (default: bench-report/<timestamp>)
#
# Installs missing Debian packages with apt-get when run as root; otherwise prints the
# apt-get line and exits 1.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
quick=0
filter=""
build_dir="$root/build-bench"
out=""
need_value() { [[ $# -ge 2 ]] || { echo "error: $1 needs a value" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --quick) quick=1 ;;
    --filter) need_value "$@"; filter=$2; shift ;;
    --filter=*) filter=${1#*=} ;;
    --build-dir) need_value "$@"; build_dir=$2; shift ;;
    --build-dir=*) build_dir=${1#*=} ;;
    --out) need_value "$@"; out=$2; shift ;;
    --out=*) out=${1#*=} ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) echo "error: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# shellcheck source=scripts/deps.sh
source "$root/scripts/deps.sh"
ensure_packages "${ATTNKIT_BUILD_PACKAGES[@]}" "${ATTNKIT_MPI_PACKAGES[@]}" gnuplot-nox python3

stamp=$(date +%Y%m%d-%H%M%S)
default_out=0
if [[ -z "$out" ]]; then out="$root/bench-report/$stamp"; default_out=1; fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
jobs=$(nproc 2>/dev/null || echo 2)

echo "== configure ($build_dir, Release)"
cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release \
  -DATTNKIT_BUILD_BENCH=ON -DATTNKIT_BUILD_TESTS=OFF -DATTNKIT_BUILD_EXAMPLES=OFF -DATTNKIT_NATIVE=ON </dev/null
echo "== build (-j$jobs)"
cmake --build "$build_dir" -j "$jobs" </dev/null

mapfile -t benches < <(find "$build_dir/bench" -maxdepth 1 -type f -name 'bench_*' -perm -u+x | sort)
[[ ${#benches[@]} -gt 0 ]] || { echo "error: no benchmark binaries in $build_dir/bench" >&2; exit 1; }

bench_args=(--benchmark_out_format=json --benchmark_counters_tabular=true)
if [[ $quick -eq 1 ]]; then
  bench_args+=(--quick)
else
  # Median of 5 repetitions per case: the machines are shared and noisy.
  bench_args+=(--benchmark_repetitions=5 --benchmark_report_aggregates_only=true)
fi
[[ -n "$filter" ]] && bench_args+=("--benchmark_filter=^peak/|$filter")

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "compiler: $(c++ --version | head -1)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
  echo "cores: $jobs"
  echo "suite: $([[ $quick -eq 1 ]] && echo quick || echo full)${filter:+ (filter: $filter)}"
} > "$out/meta.txt"

for b in "${benches[@]}"; do
  name=$(basename "$b")
  echo "== run $name"
  "$b" "${bench_args[@]}" --benchmark_out="$out/$name.json" </dev/null | tee "$out/$name.txt"
done

# Ring attention across MPI ranks (bench/ring_mpi.cpp, a standalone program: one process
# per rank). 1, 2 and 4 ranks of one thread on this machine; more ranks x threads than
# cores is printed as OVERSUBSCRIBED. Written to ring_mpi.txt (not part of report.md).
if [[ -x "$build_dir/bench/ring_mpi" && ( -z "$filter" || "ring" =~ $filter ) ]]; then
  ring_args=()
  [[ $quick -eq 1 ]] && ring_args+=(--quick)
  : > "$out/ring_mpi.txt"
  for np in 1 2 4; do
    for layout in contiguous zigzag; do
      [[ $np -eq 1 && $layout == zigzag ]] && continue  # one rank: the layouts coincide
      echo "== run ring_mpi ($np ranks, $layout)"
      OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
        mpiexec -np "$np" --oversubscribe --bind-to none "$build_dir/bench/ring_mpi" --layout "$layout" \
        "${ring_args[@]}" </dev/null | tee -a "$out/ring_mpi.txt"
    done
  done
fi

echo "== report"
python3 "$root/scripts/bench_report.py" "$out"
(cd "$out" && gnuplot plot.gp)
if [[ $default_out -eq 1 ]]; then ln -sfn "$stamp" "$root/bench-report/latest" 2>/dev/null || true; fi
echo
echo "report: $out/report.md"
echo "plots:  $(ls "$out"/*.png | tr "\n" " ")"
