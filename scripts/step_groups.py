#!/usr/bin/env python3
"""Where a rate-inf run's time went, by kind of engine step.

Usage: step_groups.py SERVER.log

SERVER.log is a server's log at RUST_LOG=info,pagedserve_shard::engine=trace (gpu-check's
BENCH_RUST_LOG), which has one `step` line per engine step with prefill_tokens, decode_seqs,
forward_us and step_us. Prints the steps grouped as docs/perf.md's ShareGPT section groups
them: prefill chunks, then decode-only steps by batch size; then a line fitted through each
step's forward time against its rows (fixed cost a step, cost a row). With
pagedserve_shard::backend=trace too (its `cuda step` lines carry staged_us), it adds the host
time the GPU waits through between steps: the engine's own work outside the forward pass and
the backend's staging of each step before its first launch.

Overlapped steps (`overlap=true`, the GPU default since 2026-11-27): the host launches step
n+1 before it waits for step n, so the fit and the GPU-idle line do not apply (a step's
forward_us is its launch plus the wait for the step before). It prints instead the host's
launch time and how long it then waited for the GPU: a wait near zero is a step where the GPU
may have waited for the host.
"""
import re
import statistics
import sys

GROUPS = [
    ("prefill chunks (+ the running decodes)", lambda p, d: p > 0),
    ("decode, > 512 sequences", lambda p, d: p == 0 and d > 512),
    ("decode, 257-512", lambda p, d: p == 0 and 257 <= d <= 512),
    ("decode, 129-256", lambda p, d: p == 0 and 129 <= d <= 256),
    ("decode, 33-128", lambda p, d: p == 0 and 33 <= d <= 128),
    ("decode, 17-32", lambda p, d: p == 0 and 17 <= d <= 32),
    ("decode, <= 16", lambda p, d: p == 0 and 1 <= d <= 16),
]


def main():
    steps = []
    # The backend's staging of each step (`cuda step` lines), graph-replayed (True) or eager.
    staged = {True: [], False: []}
    with open(sys.argv[1], errors="replace") as f:
        for line in f:
            if "step_us" not in line and "staged_us" not in line:
                continue
            line = re.sub(r"\x1b\[[0-9;]*m", "", line)  # tracing's colours, when it has them
            fields = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", line)}
            if {"prefill_tokens", "decode_seqs", "forward_us", "step_us"} <= fields.keys():
                fields["overlap"] = "overlap=true" in line
                steps.append(fields)
            elif "cuda step" in line and "staged_us" in fields:
                staged["graph=true" in line].append(fields["staged_us"])
    if not steps:
        print("no step lines (was the server run with engine=trace?)")
        return 1
    total = sum(s["step_us"] for s in steps)
    forward = sum(s["forward_us"] for s in steps)
    print(f"{len(steps)} steps, {total / 1e6:.2f} s; forward {100 * forward / total:.1f}% of step time")
    print("| steps | count | time (s) | ms a step |")
    print("| --- | --- | --- | --- |")
    for name, pick in GROUPS:
        group = [s for s in steps if pick(s["prefill_tokens"], s["decode_seqs"])]
        if group:
            t = sum(s["step_us"] for s in group)
            print(f"| {name} | {len(group)} | {t / 1e6:.2f} | {t / len(group) / 1e3:.1f} |")
    if any(s["overlap"] for s in steps):
        overlapped(steps)
    else:
        fit(steps)
        host_time(steps, staged)
    return 0


def overlapped(steps):
    """The host's launch of each overlapped step, and its wait for the step before."""
    ran = [s for s in steps if s["overlap"] and s["forward_us"] > 0]
    if not ran:
        return
    launch = [s.get("launch_us", 0) for s in ran]
    wait = [s["forward_us"] - s.get("launch_us", 0) for s in ran]
    short = sum(1 for w in wait if w < 100)
    print(f"overlapped steps: {len(ran)}; host launch median {statistics.median(launch):.0f} us "
          f"(total {sum(launch) / 1e6:.3f} s), then waited for the GPU a median "
          f"{statistics.median(wait) / 1e3:.2f} ms; {short} steps waited under 100 us "
          f"(where the GPU may have waited for the host)")


def host_time(steps, staged):
    """The engine's work outside the forward pass, and the backend's staging (plan, layout,
    copies) before a step's first kernel, split by graph-replayed and eager steps: both are
    time the GPU has nothing to run, as the engine launches a step only after the last one's
    tokens are back."""
    engine = sum(s["step_us"] - s["forward_us"] for s in steps)
    total = sum(s["step_us"] for s in steps)
    print(f"host time, GPU idle: engine outside forward {engine / 1e6:.3f} s "
          f"({engine / max(len(steps), 1):.0f} us a step)", end="")
    for graph, name in ((False, "eager"), (True, "graph")):
        xs = staged[graph]
        if xs:
            print(f"; staging of {len(xs)} {name} steps {sum(xs) / 1e6:.3f} s "
                  f"(median {statistics.median(xs):.0f} us)", end="")
    idle = engine + sum(staged[False]) + sum(staged[True])
    print(f"; together {100 * idle / max(total, 1):.1f}% of step time")


def fit(steps):
    """Least-squares line through (rows, forward time) of the steps that ran rows: a step's
    fixed cost (every weight read once, at any batch) and its cost a row, and what each adds
    up to over the run."""
    pts = [(s["prefill_tokens"] + s["decode_seqs"], s["forward_us"]) for s in steps]
    pts = [(r, f) for r, f in pts if r > 0]
    n = len(pts)
    if n < 2:
        return
    mr = sum(r for r, _ in pts) / n
    mf = sum(f for _, f in pts) / n
    var = sum((r - mr) ** 2 for r, _ in pts)
    if var == 0:
        return
    per_row = sum((r - mr) * (f - mf) for r, f in pts) / var
    fixed = mf - per_row * mr
    rms = (sum((fixed + per_row * r - f) ** 2 for r, f in pts) / n) ** 0.5
    rows = sum(r for r, _ in pts)
    print(f"forward ~ {fixed / 1e3:.2f} ms + {per_row:.1f} us x rows (RMS error {rms / 1e3:.2f} ms): "
          f"{n} steps x fixed = {n * fixed / 1e6:.2f} s, {rows:,} rows x per-row = "
          f"{rows * per_row / 1e6:.2f} s")


if __name__ == "__main__":
    sys.exit(main())
