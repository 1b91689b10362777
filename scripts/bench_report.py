#!/usr/bin/env python3
"""Turn the Google Benchmark JSON of one scripts/bench.sh run into report.md and a
gnuplot script (plot.gp -> throughput.png).

Every percentage uses the limits measured in the same run: the FMA peak rows
(peak/fma/threads:T, 12 independent zmm FMA chains) and the STREAM triad rows
(peak/triad/threads:T). Prefill rows are GFLOP/s of useful flop (4*N^2*D*H, halved for
causal) and % of (1-core FMA peak x threads); decode rows are GB/s of K+V read and %
of the triad bandwidth on the same number of threads.

usage: bench_report.py REPORT_DIR
"""
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

# perf.md targets, used for the "target" column (benchmarks, not tests).
PREFILL_TARGET = 0.75      # softmax, N >= 1024, 1 thread, non-causal
PREFILL_TARGET_N256 = 0.50
CAUSAL_TARGET = 0.65
SCALING_TARGET = 1.85      # 2 threads vs 1
DECODE_TARGET = 0.80       # of triad


def load_file(path):
    """{run_name: {"time": seconds per iteration, "counters": {...}}} of one JSON file,
    using the median aggregate when repetitions were run, else the median of the
    iteration rows; and the file's context."""
    data = json.loads(Path(path).read_text())
    rows = defaultdict(list)
    medians = {}
    for b in data.get("benchmarks", []):
        if b.get("error_occurred"):
            print(f"warning: {b['name']}: {b.get('error_message')}", file=sys.stderr)
            continue
        name = b.get("run_name", b["name"])
        scale = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}[b.get("time_unit", "ns")]
        entry = {"time": b["real_time"] * scale, "counters": b}
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                medians[name] = entry
        else:
            rows[name].append(entry)
    result = {}
    for name, entries in rows.items():
        if name in medians:
            continue
        keys = set().union(*(e["counters"].keys() for e in entries))
        counters = {}
        for k in keys:
            vals = [e["counters"][k] for e in entries if isinstance(e["counters"].get(k), (int, float))]
            if vals:
                counters[k] = statistics.median(vals)
        result[name] = {"time": statistics.median(e["time"] for e in entries), "counters": counters}
    result.update(medians)
    return result, data.get("context", {})


def parse(name):
    parts = name.split("/")
    fields = {}
    for p in parts[1:]:
        if ":" in p:
            k, v = p.split(":", 1)
            fields[k] = int(v) if v.lstrip("-").isdigit() else v
        else:
            fields[p] = True
    return parts[0], fields


def pct(x):
    return f"{100 * x:.1f}%"


def mark(ok):
    return "yes" if ok else "**no**"


def main():
    report_dir = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    files = sorted(Path(report_dir).glob("*.json"))
    if not files:
        sys.exit(f"bench_report.py: no benchmark results in {report_dir}")

    # Every binary measures the limits in its own process; each row is judged
    # against the limits of the process that produced it.
    limits = {}  # binary -> {"fma": {threads: GFLOP/s}, "triad": {threads: GB/s}}
    prefill, decode = [], []
    context = {}
    for path in files:
        binary = path.stem
        runs, ctx = load_file(path)
        context.update(ctx)
        lim = limits.setdefault(binary, {"fma": {}, "triad": {}})
        for name, r in runs.items():
            variant, f = parse(name)
            c = r["counters"]
            r["binary"] = binary
            if name.startswith("peak/fma/"):
                lim["fma"][f["threads"]] = c["GFLOPS"]
            elif name.startswith("peak/triad/"):
                lim["triad"][f["threads"]] = c["GBps"]
            elif "GBps" in c:
                decode.append((variant, f, name, r))
            elif "GFLOPS" in c:
                prefill.append((variant, f, name, r))
        if 1 not in lim["fma"]:
            sys.exit(f"bench_report.py: {path.name} has no peak/fma/threads:1 row (needed for every percentage)")
    first = limits[files[0].stem]
    fma, triad = first["fma"], first["triad"]
    core_peak = fma[1]

    def frac(r, f):
        return r["counters"]["GFLOPS"] / (limits[r["binary"]]["fma"][1] * f.get("threads", 1))

    meta = (report_dir / "meta.txt").read_text().strip().splitlines() if (report_dir / "meta.txt").exists() else []
    out = ["# attnkit benchmark report", ""]
    out += [f"- {line}" for line in meta]
    out += [f"- attnkit {context.get('attnkit_version', '?')}, kernel arch `{context.get('attnkit_arch', '?')}`, "
            f"peak loop: {context.get('fma_peak_isa', '?')}",
            f"- host: {context.get('host_name', '?')}, {context.get('num_cpus', '?')} CPUs", ""]
    out += ["All ratios use the limits measured in this run (below). fp32, B = 1, H = 8, Lq = Lk = N. "
            "GFLOP/s count useful flop only: 4·N²·D·H, halved for causal; 4·D·H per allowed (query, key) "
            "pair for sparse patterns (`density` = allowed pairs ÷ N²). "
            "% of peak = GFLOP/s ÷ (1-core FMA peak × threads).", ""]

    out += ["## Machine limits (this run, measured in each benchmark process)", "",
            "| binary | measurement | threads | value | per core |", "|---|---|---|---|---|"]
    for binary, lim in limits.items():
        for t in sorted(lim["fma"]):
            v = lim["fma"][t]
            out.append(f"| {binary} | FMA peak (12 independent FMA chains) | {t} | {v:.1f} GFLOP/s | {v / t:.1f} GFLOP/s |")
        for t in sorted(lim["triad"]):
            v = lim["triad"][t]
            out.append(f"| {binary} | STREAM triad | {t} | {v:.1f} GB/s | {v / t:.1f} GB/s |")
    out.append("")

    def sort_key(item):
        v, f, _, _ = item
        order = {"softmax": 0, "sigmoid": 1, "eigen_naive": 2}.get(v, 3)
        return (order, v, f.get("D", 0), f.get("causal", 0), f.get("N", 0), f.get("threads", 1))

    prefill.sort(key=sort_key)
    if prefill:
        out += ["## Prefill", "", "| case | time | GFLOP/s | % of peak | perf.md target |", "|---|---|---|---|---|"]
        for v, f, name, r in prefill:
            fr = frac(r, f)
            target = ""
            if v == "softmax" and f.get("threads") == 1:
                if f.get("causal") and f.get("N", 0) >= 1024:
                    target = f"≥ {pct(CAUSAL_TARGET)}: {mark(fr >= CAUSAL_TARGET)}"
                elif f.get("N", 0) >= 1024:
                    target = f"≥ {pct(PREFILL_TARGET)}: {mark(fr >= PREFILL_TARGET)}"
                else:
                    target = f"≥ {pct(PREFILL_TARGET_N256)}: {mark(fr >= PREFILL_TARGET_N256)}"
            out.append(f"| `{name}` | {r['time'] * 1e3:.2f} ms | {r['counters']['GFLOPS']:.1f} | {pct(fr)} | {target} |")
        out.append("")

    if decode:
        out += ["## Decode (one query per head)", "",
                "| case | time | GB/s (K+V read) | % of triad (same threads) | target ≥ 80% |", "|---|---|---|---|---|"]
        for v, f, name, r in sorted(decode, key=lambda x: (x[0], x[1].get("threads", 1))):
            bw = r["counters"]["GBps"]
            t = f.get("threads", 1)
            tr = limits[r["binary"]]["triad"].get(t)
            share = bw / tr if tr else float("nan")
            ok = mark(share >= DECODE_TARGET) if tr else "?"
            out.append(f"| `{name}` | {r['time'] * 1e6:.0f} µs | {bw:.1f} | {pct(share) if tr else '?'} | {ok} |")
        out += ["", "K+V of this case is 32 MiB: partly cache-resident on large-L3 parts, so it can exceed "
                "the triad figure.", ""]

    by_name = {name: (v, f, r) for v, f, name, r in prefill}

    def gflops(name):
        return by_name[name][2]["counters"]["GFLOPS"] if name in by_name else None

    ratio_rows = []
    for v, f, name, r in prefill:
        if v == "eigen_naive":
            mine = f"softmax/N:{f['N']}/D:{f['D']}/causal:0/threads:1"
            if gflops(mine):
                ratio_rows.append((f"`{mine}` vs `{name}` (naive, materialised N×N)",
                                   f"{gflops(mine) / r['counters']['GFLOPS']:.2f}×", ""))
    for v, f, name, r in prefill:
        if v in ("softmax", "sigmoid") and f.get("threads") == 1:
            for t in sorted(limits[r["binary"]]["fma"]):
                if t == 1:
                    continue
                other = name.replace("/threads:1", f"/threads:{t}")
                if gflops(other):
                    s = gflops(other) / r["counters"]["GFLOPS"]
                    tgt = f"≥ {SCALING_TARGET}: {mark(s >= SCALING_TARGET)}" if t == 2 and v == "softmax" else ""
                    ratio_rows.append((f"`{other}` vs `{name}` (thread scaling)", f"{s:.2f}×", tgt))
    for v, f, name, r in prefill:
        if v == "softmax" and f.get("causal") == 1:
            dense = name.replace("/causal:1/", "/causal:0/")
            if dense in by_name:
                e = frac(r, f) / frac(by_name[dense][2], by_name[dense][1])
                ratio_rows.append((f"`{name}` vs `{dense}` (causal efficiency, per useful flop)", f"{e:.2f}×",
                                   f"≥ 0.90 (stretch): {mark(e >= 0.9)}"))
    for v, f, name, r in prefill:
        if v == "sigmoid":
            sm = name.replace("sigmoid/", "softmax/", 1)
            if gflops(sm):
                s = r["counters"]["GFLOPS"] / gflops(sm)
                ratio_rows.append((f"`{name}` vs `{sm}`", f"{s:.2f}×", f"≥ 1.0: {mark(s >= 1.0)}"))
    # The sparse and instrumentation targets: block-sparse time against density,
    # stochastic permutation against the symmetric window of the same width, the
    # sliding window's time per ×4 of N, the entropy observer's overhead.
    def time_of(name):
        return by_name[name][2]["time"] if name in by_name else None

    for v, f, name, r in prefill:
        if v == "block_sparse":
            dense = f"dense_for_block_sparse/N:{f['N']}/threads:{f['threads']}"
            rho = r["counters"].get("density")
            if time_of(dense) and rho:
                x = r["time"] / time_of(dense)
                ratio_rows.append((f"`{name}` vs `{dense}` (time; layout density ρ = {rho:.3f})", f"{x:.3f}×",
                                   f"ρ ± 20% ({0.8 * rho:.3f}–{1.2 * rho:.3f}): {mark(0.8 * rho <= x <= 1.2 * rho)}"))
        elif v == "stochastic_permutation":
            sym = name.replace("stochastic_permutation/", "sliding_window_sym/", 1)
            if time_of(sym):
                x = r["time"] / time_of(sym)
                ratio_rows.append((f"`{name}` vs `{sym}` (time)", f"{x:.2f}×", f"≤ 1.15: {mark(x <= 1.15)}"))
        elif v == "sliding_window":
            bigger = name.replace(f"/N:{f['N']}/", f"/N:{4 * f['N']}/")
            if time_of(bigger):
                x = time_of(bigger) / r["time"]
                ratio_rows.append((f"`{bigger}` vs `{name}` (time, N ×4)", f"{x:.2f}×", f"≤ 4.4: {mark(x <= 4.4)}"))
        elif v == "entropy" and f.get("on"):
            off = name.replace("entropy/on/", "entropy/off/", 1)
            if time_of(off):
                x = r["time"] / time_of(off)
                ratio_rows.append((f"`{name}` vs `{off}` (time)", f"{x:.2f}×", f"≤ 1.10: {mark(x <= 1.10)}"))
    if ratio_rows:
        out += ["## Ratios", "", "| comparison | ratio | perf.md target |", "|---|---|---|"]
        out += [f"| {a} | {b} | {c} |" for a, b, c in ratio_rows]
        out.append("")

    out += ["## Files", "", "- `throughput.png`: GFLOP/s vs N, softmax / sigmoid / naive Eigen, FMA peak lines",
            "- `throughput_variants.png`: the same for the other variants (when benchmarked)",
            "- `*.json`: raw Google Benchmark output, `*.txt`: console output", ""]
    (report_dir / "report.md").write_text("\n".join(out))

    # ------------------------------------------------------------ plots
    # throughput.png: the softmax family (softmax, sigmoid, naive baseline);
    # throughput_variants.png: every other variant with a sequence length, if any.
    family = {"softmax", "sigmoid", "eigen_naive"}
    groups = [("throughput", [p for p in prefill if p[0] in family], "prefill throughput"),
              ("throughput_variants", [p for p in prefill if p[0] not in family], "other variants")]
    colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
               "#bcbd22", "#17becf", "#000000", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5"]
    scripts = []
    for stem, rows, title in groups:
        series = defaultdict(list)  # (threads, label) -> [(N, GFLOP/s)]
        for v, f, name, r in rows:
            if "N" not in f:
                continue
            label = v
            for k, val in f.items():
                if k in ("N", "threads", "causal"):
                    continue
                label += f" {k}" if val is True else f" {k}{val}"
            label += " causal" if f.get("causal") else ""
            series[(f.get("threads", 1), label)].append((f["N"], r["counters"]["GFLOPS"]))
        if not series:
            continue
        thread_counts = sorted({t for t, _ in series})
        labels = sorted({key[1] for key in series})  # one colour per series, same in every panel
        ns = sorted({n for pts in series.values() for n, _ in pts})
        lines = []
        with open(report_dir / f"{stem}.dat", "w") as dat:
            for index, key in enumerate(sorted(series)):
                dat.write(f"# threads={key[0]} {key[1]}\n")
                for n, g in sorted(series[key]):
                    dat.write(f"{n} {g:.3f}\n")
                dat.write("\n\n")
                lines.append((key, index))
        gp = ["set terminal pngcairo size 1400,650 font 'sans,10' noenhanced", f"set output '{stem}.png'",
              f"set multiplot layout 1,{len(thread_counts)} title "
              f"'attnkit {title} (fp32, B=1, H=8; useful flop)  -  1-core FMA peak {core_peak:.0f} GFLOP/s'",
              "set logscale x 2", "set xlabel 'sequence length N'", "set ylabel 'GFLOP/s'", "set grid",
              "set key bottom right font ',9' box opaque", "set yrange [0:*]",
              f"set xrange [{ns[0] / 1.25}:{ns[-1] * 1.25}]",
              "set xtics (" + ", ".join(f"'{n}' {n}" for n in ns) + ")"]
        for t in thread_counts:
            peak_t = fma.get(t, core_peak * t)
            gp.append(f"set title '{t} thread{'s' if t > 1 else ''}'")
            items = [f"'{stem}.dat' index {i} using 1:2 with linespoints lw 2 pt {labels.index(key[1]) % 13 + 1} "
                     f"lc rgb '{colours[labels.index(key[1]) % len(colours)]}' title '{key[1]}'"
                     for key, i in lines if key[0] == t]
            items.append(f"{peak_t:.3f} with lines dashtype 2 lc rgb 'black' title 'FMA peak, {t} thread(s)'")
            gp.append("plot " + ", \\\n     ".join(items))
        gp.append("unset multiplot")
        scripts.append("\n".join(gp))
    (report_dir / "plot.gp").write_text("\n\n".join(scripts) + "\n")
    print(f"wrote {report_dir / 'report.md'} and {report_dir / 'plot.gp'}")


if __name__ == "__main__":
    main()
