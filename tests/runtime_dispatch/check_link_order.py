#!/usr/bin/env python3
"""The link-order guarantee of run-time dispatch (attnkit/dispatch/runtime_kernels.hpp).

Inline functions that do not depend on the SIMD arch (validation, workspace,
std::vector members, ...) are compiled in every target's translation unit, each
with its own -march, and the linker keeps one copy. That copy must be the
baseline's, or a CPU without AVX would run AVX instructions. This script takes the
final binary, the baseline object and the higher targets' objects, finds the weak
functions the baseline shares with a higher target whose copy there uses
instructions beyond x86-64 (VEX/EVEX, BMI, LZCNT, MOVBE, POPCNT), and fails if
the binary's copy of any of them uses such instructions.

usage: check_link_order.py BINARY OBJECT...   (the target's objects, as CMake lists
them: kernels_x86_64.* is the baseline, kernels_x86_64_v*.* the higher targets)
"""
import re
import subprocess
import sys

BEYOND_BASELINE = re.compile(r":\s+(v[a-z0-9]+|shlx|shrx|sarx|andn|bextr|lzcnt|tzcnt|movbe|popcnt|kmov[bwdq])\s")
HEADER = re.compile(r"^[0-9a-f]+ <(.+)>:$")


def weak_functions(obj):
    out = subprocess.run(["nm", obj], check=True, capture_output=True, text=True).stdout
    return {line.split()[2] for line in out.splitlines() if len(line.split()) == 3 and line.split()[1] == "W"}


def functions_beyond_baseline(path):
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", path], check=True, capture_output=True,
                         text=True).stdout
    found, current = set(), None
    for line in out.splitlines():
        m = HEADER.match(line)
        if m:
            current = m.group(1)
        elif current and BEYOND_BASELINE.search(line):
            found.add(current)
    return found


def main():
    binary = sys.argv[1]
    objects = [o for arg in sys.argv[2:] for o in arg.split(";") if o]  # ctest passes a CMake list as one argument
    baseline = [o for o in objects if re.search(r"kernels_x86_64\.cpp\.o(bj)?$", o)]
    higher = [o for o in objects if re.search(r"kernels_x86_64_v[0-9]+\.cpp\.o(bj)?$", o)]
    if len(baseline) != 1 or not higher:
        print("expected one baseline and some higher-target objects, got", objects)
        return 1
    baseline = baseline[0]
    shared_risky = set()
    base = weak_functions(baseline)
    for obj in higher:
        shared_risky |= base & weak_functions(obj) & functions_beyond_baseline(obj)
    bad = sorted(shared_risky & functions_beyond_baseline(binary))
    print(f"{len(shared_risky)} functions shared by the baseline and a higher target use newer instructions "
          f"in the higher target's copy; the binary keeps the baseline copy of all but {len(bad)}")
    for name in bad:
        print("  not the baseline copy:", subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
