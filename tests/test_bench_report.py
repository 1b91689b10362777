#!/usr/bin/env python3
"""Tests of scripts/bench_report.py (run by ctest when Python 3 is found).

Synthetic Google Benchmark JSON with known limits and figures checks that every
figure is judged against one set of limits (the best measurement), that the report
warns when the limit measurements differ by more than 10%, that a figure above 100%
of its limit is flagged and never counted as meeting a target, and that the report
cites no file outside the repository. With --bench PATH (a bench binary) it also runs
the real pipeline: --limits-only and --no-peaks smoke runs, then the report.

usage: test_bench_report.py [--bench PATH_TO_bench_softmax]
"""
import json
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path

REPORT = Path(__file__).resolve().parent.parent / "scripts" / "bench_report.py"
BENCH = None


def row(name, time_ms, **counters):
    return dict(name=name, run_name=name, run_type="iteration", real_time=time_ms, time_unit="ms", **counters)


def write(folder, stem, rows):
    (folder / f"{stem}.json").write_text(json.dumps({"context": {"attnkit_version": "0.1.0"}, "benchmarks": rows}))


def limits(fma1, fma2, triad1, triad2):
    return [row("peak/fma/threads:1", 10, GFLOPS=fma1), row("peak/fma/threads:2", 10, GFLOPS=fma2),
            row("peak/triad/threads:1", 10, GBps=triad1), row("peak/triad/threads:2", 10, GBps=triad2)]


def report(folder):
    subprocess.run([sys.executable, str(REPORT), str(folder)], check=True, capture_output=True, text=True)
    return (folder / "report.md").read_text()


def line_of(text, name):
    return next(line for line in text.splitlines() if line.startswith(f"| `{name}`"))


class SyntheticRuns(unittest.TestCase):
    def run_case(self, start, end, figures):
        with tempfile.TemporaryDirectory() as d:
            folder = Path(d)
            write(folder, "limits_start", start)
            write(folder, "limits_end", end)
            write(folder, "bench_softmax", figures)
            (folder / "bench_variants.json").write_text("")  # --filter matched none of its cases
            return report(folder), (folder / "plot.gp").read_text()

    def test_one_set_of_limits_and_targets(self):
        figures = [row("softmax/N:4096/D:64/causal:0/threads:1", 10, GFLOPS=80.0),   # 80% of 100
                   row("softmax/N:4096/D:64/causal:0/threads:2", 10, GFLOPS=150.0),  # 78.9% of 190
                   row("softmax/N:4096/D:64/causal:1/threads:1", 10, GFLOPS=60.0),   # 60% < 70%
                   row("softmax_decode/Lk:4096/D:128/H:8/threads:1", 1, GBps=36.0)]  # 90% of 40
        text, gp = self.run_case(limits(100.0, 190.0, 40.0, 80.0), limits(97.0, 185.0, 39.0, 78.0), figures)
        self.assertNotIn("## Warnings", text)  # measurements within 10%
        self.assertIn("| 1 | 100.0 | 100.0 | 40.0 |", text)  # the best measurement is the limit
        self.assertIn("80.0% | ≥ 75.0%: yes", line_of(text, "softmax/N:4096/D:64/causal:0/threads:1"))
        self.assertIn("78.9%", line_of(text, "softmax/N:4096/D:64/causal:0/threads:2"))
        self.assertIn("≥ 70.0%: **no**", line_of(text, "softmax/N:4096/D:64/causal:1/threads:1"))
        self.assertIn("90.0% | ≥ 80.0%: yes", line_of(text, "softmax_decode/Lk:4096/D:128/H:8/threads:1"))
        self.assertNotIn("perf.md", text)  # targets are stated in the script, with their source
        self.assertIn("Targets: attnkit's performance targets", text)
        self.assertIn("FMA peak of this run: 1 thread 100, 2 threads 190 GFLOP/s", gp)  # title = table

    def test_spread_and_figures_above_the_limit_are_flagged(self):
        figures = [row("softmax/N:4096/D:64/causal:0/threads:1", 10, GFLOPS=130.0),   # 130% of 100
                   row("softmax/N:4096/D:64/causal:0/threads:2", 10, GFLOPS=150.0),
                   row("softmax_decode/Lk:4096/D:128/H:8/threads:1", 1, GBps=50.0)]  # 125% of 40
        text, _ = self.run_case(limits(100.0, 190.0, 40.0, 80.0), limits(70.0, 185.0, 39.0, 78.0), figures)
        self.assertIn("## Warnings", text)
        self.assertIn("FMA peak on 1 thread(s) varied by 30%", text)
        big = line_of(text, "softmax/N:4096/D:64/causal:0/threads:1")
        self.assertIn("130.0%", big)
        self.assertIn("measurement problem", big)
        self.assertNotIn("yes", big)
        dec = line_of(text, "softmax_decode/Lk:4096/D:128/H:8/threads:1")
        self.assertIn("measurement problem", dec)
        self.assertNotIn("yes", dec)
        scaling = next(line for line in text.splitlines() if "(thread scaling)" in line)
        self.assertIn("not judged", scaling)  # a ratio built on a suspect figure is not judged


@unittest.skipUnless(BENCH or "--bench" in sys.argv, "no bench binary given")
class RealPipeline(unittest.TestCase):
    def test_limits_only_no_peaks_and_report(self):
        with tempfile.TemporaryDirectory() as d:
            folder = Path(d)
            quick = ["--quick", "--benchmark_min_time=0.001", "--benchmark_out_format=json"]
            subprocess.run([BENCH, "--limits-only", *quick, f"--benchmark_out={folder / 'limits_start.json'}"],
                           check=True, capture_output=True)
            subprocess.run([BENCH, "--no-peaks", *quick, "--benchmark_filter=^softmax/N:256/D:64/causal:0/",
                            f"--benchmark_out={folder / 'bench_softmax.json'}"], check=True, capture_output=True)
            names = [b["name"] for b in json.loads((folder / "limits_start.json").read_text())["benchmarks"]]
            self.assertTrue(names and all(n.startswith("peak/") for n in names))
            rows = json.loads((folder / "bench_softmax.json").read_text())["benchmarks"]
            self.assertTrue(rows)
            for b in rows:  # no peak rows and no in-process fractions with --no-peaks
                self.assertFalse(b["name"].startswith("peak/"))
                self.assertNotIn("peak_frac", b)
            text = report(folder)
            self.assertIn("softmax/N:256/D:64/causal:0/threads:1", text)


if __name__ == "__main__":
    if "--bench" in sys.argv:
        i = sys.argv.index("--bench")
        BENCH = sys.argv[i + 1]
        del sys.argv[i:i + 2]
    unittest.main(verbosity=2)
