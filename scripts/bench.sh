#!/usr/bin/env bash
# Build the benchmarks (Release, -march=native), run them, and write a report:
# report.md (GFLOP/s and % of the FMA peak, decode GB/s vs the triad bandwidth, ratios
# against the targets), throughput.png, throughput_variants.png and the raw JSON;
# ring attention across 1/2/4 MPI ranks (forward and backward) goes to ring_mpi.txt.
#
#   scripts/bench.sh [--quick] [--filter REGEX] [--build-dir DIR] [--out DIR]
#
#   --quick          bench_softmax's short cases only, one repetition: a smoke run of
#                    the pipeline (2 cores: ~1 min with a cold build, ~25 s once built)
#   --filter REGEX   only cases matching REGEX (Google Benchmark syntax), every binary
#   --build-dir DIR  build directory (default: build-bench)
#   --out DIR        report folder (default: bench-report/<timestamp>)
#
# The full suite runs for roughly 10-15 minutes on 2 cores. The FMA peak and the triad bandwidth
# are measured once before and once after the benchmarks, by one process, and every
# figure is judged against them (the report warns when the two differ by > 10%).
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
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
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

start=$SECONDS
echo "== configure ($build_dir, Release)"
cmake -S "$root" -B "$build_dir" -DCMAKE_BUILD_TYPE=Release \
  -DATTNKIT_BUILD_BENCH=ON -DATTNKIT_BUILD_TESTS=OFF -DATTNKIT_BUILD_EXAMPLES=OFF -DATTNKIT_NATIVE=ON </dev/null
# --quick builds only what it runs: bench_variants alone takes minutes to compile.
targets=()
[[ $quick -eq 1 ]] && targets=(--target bench_softmax)
echo "== build (-j$jobs${targets[*]:+, ${targets[*]}})"
cmake --build "$build_dir" -j "$jobs" "${targets[@]}" </dev/null
build_s=$((SECONDS - start))

if [[ $quick -eq 1 ]]; then
  benches=("$build_dir/bench/bench_softmax")
else
  mapfile -t benches < <(find "$build_dir/bench" -maxdepth 1 -type f -name 'bench_*' -perm -u+x | sort)
fi
[[ ${#benches[@]} -gt 0 && -x "${benches[0]}" ]] || { echo "error: no benchmark binaries in $build_dir/bench" >&2; exit 1; }

common_args=(--benchmark_out_format=json)
if [[ $quick -eq 1 ]]; then
  common_args+=(--quick)
else
  # Median of 5 repetitions per case: the machines are shared and noisy.
  common_args+=(--benchmark_repetitions=5 --benchmark_report_aggregates_only=true)
fi
bench_args=("${common_args[@]}" --no-peaks --benchmark_counters_tabular=true)
[[ -n "$filter" ]] && bench_args+=("--benchmark_filter=$filter")

# The machine limits of this run: one process, before and after the benchmarks.
measure_limits() {
  echo "== machine limits ($1): FMA peak and STREAM triad"
  "${benches[0]}" --limits-only "${common_args[@]}" --benchmark_out="$out/limits_$1.json" </dev/null
}

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet HEAD 2>/dev/null || echo ' (+ uncommitted changes)')"
  echo "compiler: $(c++ --version | head -1)"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//')"
  echo "cores: $jobs"
  echo "suite: $([[ $quick -eq 1 ]] && echo "quick (bench_softmax only)" || echo full)${filter:+ (filter: $filter)}"
} > "$out/meta.txt"

run_start=$SECONDS
measure_limits start
for b in "${benches[@]}"; do
  name=$(basename "$b")
  echo "== run $name"
  "$b" "${bench_args[@]}" --benchmark_out="$out/$name.json" </dev/null | tee "$out/$name.txt"
done
measure_limits end
run_s=$((SECONDS - run_start))
echo "time: build ${build_s} s, benchmarks ${run_s} s" >> "$out/meta.txt"

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
      for pass in "" --backward; do
        echo "== run ring_mpi ($np ranks, $layout${pass:+, backward})"
        OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 \
          mpiexec -np "$np" --oversubscribe --bind-to none "$build_dir/bench/ring_mpi" --layout "$layout" \
          "${ring_args[@]}" $pass </dev/null | tee -a "$out/ring_mpi.txt"
      done
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
echo "time:   $((SECONDS - start)) s (build ${build_s} s, benchmarks ${run_s} s)"
