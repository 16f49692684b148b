#!/usr/bin/env python3
"""What bounds a ShareGPT run at request rate inf: replay its requests through a model of the
engine's scheduler and a cost model of one step, and print the duration at several rates.

    scripts/sharegpt_bound.py RESULT.json [RESULT.json ...]

RESULT.json is a `pagedserve bench --result-json` file of a rate-inf run (its `input_lens` and
`output_lens`). The scheduler model is the engine's FIFO policy (`shard/src/engine/
scheduler.rs`): every request arrives at once; each step the running sequences come first,
oldest first, each with all it still needs up to `--max-batch-tokens`, then admission in
arrival order up to `--max-num-seqs`. A step's time, for Llama-3-8B in bf16:

    max(weight bytes / (BW * eff_w), linear + attention FLOPs / F) + KV bytes / (BW * eff_kv) + c

With the rates measured on an H100 (copy bandwidth 3,015 GB/s; the decode GEMV/cuBLAS at ~80%
of it, prefill GEMMs at ~560 TFLOP/s, decode attention at ~85%, ~0.4 ms outside the kernels
per step: the "today" row) it reproduces measured durations within a few percent and the
per-step trace of docs/perf.md group by group; the other rows say what faster kernels, or
none at all, could give with the same schedule.

That formula underprices steps of 200-500 rows (the steps of `--longest-first` with a small
`--max-batch-tokens`, which the engine runs with `--scheduling-policy lof`) by 2-3 ms each: it
predicted 12,038 tok/s where the engine made 8,753. The "measured curves" rows price a step
from measured pieces instead (`curve_step_time`: the linear layers' time by rows, a cost per
row for the small kernels, lm_head, KV reads, prefill attention); they come within 5% of the
FIFO runs and 10-14% (still optimistic) of the small-budget `lof` runs, and their what-if rows
say what the next kernel gains would buy. Python 3 standard library only.
"""

import argparse
import json
import sys
from collections import deque

P_BODY = 8.03e9 - 2 * 0.525e9  # Llama-3-8B parameters less embedding and lm_head
P_HEAD = 0.525e9  # lm_head, applied to the rows that need logits
WEIGHT_BYTES = 2 * (8.03e9 - 0.525e9)  # every bf16 weight but the embedding table
KV_BYTES_PER_TOKEN = 32 * 8 * 128 * 2 * 2  # layers * KV heads * head dim * (K, V) * bf16
ATTN_FLOPS_PER_PAIR = 4 * 32 * 128 * 32  # QK^T and PV, all heads and layers, per (query, key)

# (name, copy bandwidth B/s, weight-read efficiency, GEMM FLOP/s, KV-read efficiency, s a step)
SCENARIOS = [
    ("today (H100 rates measured 2026-11-26)", 3.015e12, 0.80, 560e12, 0.85, 0.4e-3),
    ("small steps at 91% (our batch-1 GEMV)", 3.015e12, 0.91, 560e12, 0.92, 0.15e-3),
    ("... and GEMMs at 700 TFLOP/s", 3.015e12, 0.91, 700e12, 0.92, 0.15e-3),
    ("H100 datasheet: 3.35 TB/s, 989 TFLOP/s, 0 gaps", 3.35e12, 1.0, 989e12, 1.0, 0.0),
]


# One Llama-3-8B layer's linear layers (qkv, o, gate/up, down) by rows, us, measured on an H100
# (linear_bench, 2026-11-26): our GEMV up to 32 rows, cuBLAS above; from 512 rows compute-bound
# at the 512-row rate (733 TFLOP/s).
LAYER_US = [(1, 148.3), (8, 149.6), (16, 154.6), (24, 169.2), (32, 169.6), (64, 177.0),
            (96, 182.7), (128, 185.1), (192, 201.3), (256, 209.4), (320, 244.1), (512, 305.2)]


def layers_s(rows):
    """The 32 layers' linear layers for `rows` rows, seconds, interpolated in LAYER_US."""
    if rows >= LAYER_US[-1][0]:
        return 32 * LAYER_US[-1][1] * 1e-6 * rows / LAYER_US[-1][0]
    for (r0, t0), (r1, t1) in zip(LAYER_US, LAYER_US[1:]):
        if rows <= r1:
            return 32 * 1e-6 * (t0 + (t1 - t0) * (max(rows, r0) - r0) / (r1 - r0))
    return 0.0


def tally(chunks, comp, inp, gen):
    """A step's tokens, rows that need logits, bf16 KV bytes read and attention (query, key)
    pairs."""
    tokens = rows = kv = pairs = 0
    for s, n in chunks:
        tokens += n
        if comp[s] + n == inp[s] + gen[s]:
            rows += 1
        pairs += n * comp[s] + n * (n + 1) // 2
        kv += (comp[s] + n) * KV_BYTES_PER_TOKEN
    return tokens, rows, kv, pairs


def curve_step_time(chunks, comp, inp, gen, rates):
    """A step priced from measured curves rather than peak rates (the "measured" rows):
    linear layers from LAYER_US (scaled by `gemm`), `row_s` a row for the small kernels (norms,
    RoPE, SiLU: ~5 us a row in 2026-11-26's ncu profile of a 256-row step), lm_head over the
    rows that need logits, KV reads at `eff_kv` of copy bandwidth (`kv_scale` of bf16's bytes),
    prefill attention at 250 TFLOP/s, and a fixed gap."""
    _, bw, gemm, row_s, eff_kv, kv_scale, gap = rates
    tokens, rows, kv, pairs = tally(chunks, comp, inp, gen)
    kv *= kv_scale
    head = max(2 * P_HEAD / (bw * 0.85), 2 * P_HEAD * rows / 600e12) if rows else 0.0
    return (gemm * layers_s(tokens) + row_s * tokens + head + kv / (bw * eff_kv)
            + ATTN_FLOPS_PER_PAIR * pairs / 250e12 + gap)


# ("curve", copy bandwidth, GEMM time factor, s a row, KV efficiency, KV bytes factor, gap)
CURVE_SCENARIOS = [
    ("measured curves (H100, 2026-11-26 late)", ("curve", 3.015e12, 1.0, 5e-6, 0.88, 1.0, 0.15e-3)),
    ("... small kernels at 2 us a row", ("curve", 3.015e12, 1.0, 2e-6, 0.88, 1.0, 0.15e-3)),
    ("... and GEMMs 15% faster", ("curve", 3.015e12, 0.85, 2e-6, 0.88, 1.0, 0.15e-3)),
    ("... and an FP8 KV cache", ("curve", 3.015e12, 0.85, 2e-6, 0.88, 0.5, 0.15e-3)),
]


def step_time(chunks, comp, inp, gen, rates):
    if rates[0] == "curve":
        return curve_step_time(chunks, comp, inp, gen, rates)
    bw, eff_w, flops, eff_kv, gap = rates
    tokens, rows, kv, pairs = tally(chunks, comp, inp, gen)
    work = 2 * P_BODY * tokens + 2 * P_HEAD * rows + ATTN_FLOPS_PER_PAIR * pairs
    return max(WEIGHT_BYTES / (bw * eff_w), work / flops) + kv / (bw * eff_kv) + gap


def simulate(inp, out, budget, max_seqs, rates, longest_first=False):
    """Returns (seconds, steps) for one rate-inf run under the FIFO scheduler, or admitting
    the longest answers first (the engine's `--scheduling-policy lof`)."""
    order = sorted(range(len(inp)), key=lambda i: -out[i]) if longest_first else range(len(inp))
    waiting = deque(order)
    comp = [0] * len(inp)  # tokens whose KV exists
    gen = [0] * len(inp)  # tokens generated
    running = []
    seconds, steps = 0.0, 0
    while waiting or running:
        left, chunks = budget, []
        for s in running:
            if left == 0:
                break
            n = min(inp[s] + gen[s] - comp[s], left)
            chunks.append((s, n))
            left -= n
        while left and waiting and len(running) < max_seqs:
            s = waiting.popleft()
            n = min(inp[s], left)
            running.append(s)
            chunks.append((s, n))
            left -= n
        seconds += step_time(chunks, comp, inp, gen, rates)
        steps += 1
        for s, n in chunks:
            comp[s] += n
            if comp[s] == inp[s] + gen[s]:
                gen[s] += 1  # this chunk reached the end: its logits gave a token
        running = [s for s in running if gen[s] < out[s]]
    return seconds, steps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("results", nargs="+", help="pagedserve bench --result-json files")
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--max-num-seqs", type=int, default=1024)
    ap.add_argument("--longest-first", action="store_true",
                    help="admit by answer length, longest first (--scheduling-policy lof)")
    args = ap.parse_args()
    for path in args.results:
        with open(path) as f:
            run = json.load(f)
        inp, out = run["input_lens"], run["output_lens"]
        total = sum(out)
        print(f"{path}: {len(inp)} requests, {sum(inp):,} prompt and {total:,} output tokens, "
              f"longest answer {max(out):,}")
        print(f"  {'measured':48} {run['duration']:7.2f} s {run['output_throughput']:8,.0f} tok/s")
        rows = [(name, rates) for name, *rates in SCENARIOS] + CURVE_SCENARIOS
        for name, rates in rows:
            secs, steps = simulate(inp, out, args.max_batch_tokens, args.max_num_seqs, rates,
                                   args.longest_first)
            print(f"  {name:48} {secs:7.2f} s {total / secs:8,.0f} tok/s  ({steps:,} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
