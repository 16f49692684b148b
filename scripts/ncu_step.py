#!/usr/bin/env python3
"""Per-kernel times of the last model step in an Nsight Compute CSV log.

Usage: ncu_step.py NCU.csv

The log comes from `ncu --csv --metrics gpu__time_duration.sum --log-file NCU.csv
cuda_bench ...` with CUDA_BENCH_EAGER=1 (each kernel launched on its own, so each is one
row). A step starts with the `embedding` kernel; the last step runs from the last one to the
end of the log. Prints a table of kernels by total time, then one summary line.
"""
import csv
import sys
from collections import OrderedDict

UNIT_US = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3,
           "second": 1e6, "s": 1e6}


def rows(path):
    with open(path, newline="") as f:
        lines = [line for line in f if line.startswith('"')]
    for r in csv.DictReader(lines):
        if r.get("Metric Name") != "gpu__time_duration.sum":
            continue
        value = float(r["Metric Value"].replace(",", ""))
        yield r["Kernel Name"], value * UNIT_US.get(r["Metric Unit"], 1.0), r.get("Grid Size", "")


def short(name):
    name = name.split("(")[0]
    return name if len(name) <= 60 else name[:57] + "..."


def main():
    kernels = list(rows(sys.argv[1]))
    starts = [i for i, (n, _, _) in enumerate(kernels) if n.startswith("embedding")]
    if not starts:
        print(f"no step found among {len(kernels)} kernels")
        return 1
    step = kernels[starts[-1]:]
    groups = OrderedDict()
    for name, us, grid in step:
        g = groups.setdefault(short(name), [0, 0.0, grid])
        g[0] += 1
        g[1] += us
    total = sum(g[1] for g in groups.values())
    print("| kernel | grid | launches | total us | us each | share |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, (n, us, grid) in sorted(groups.items(), key=lambda kv: -kv[1][1]):
        print(f"| {name} | {grid} | {n} | {us:.1f} | {us / n:.2f} | {100 * us / total:.1f}% |")
    top = sorted(groups.items(), key=lambda kv: -kv[1][1])[:4]
    print(f"step: {len(step)} kernels, sum {total:.0f} us; "
          + ", ".join(f"{k} {100 * v[1] / total:.0f}%" for k, v in top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
