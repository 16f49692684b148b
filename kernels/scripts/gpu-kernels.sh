#!/usr/bin/env bash
# The kernels' GPU checks. On the build machine: `kernels/scripts/gpu-kernels.sh build` compiles
# the test binary and the attention bench (release) and copies them to .gpu/kernels/ (ignored by
# git; carry it to the device). On the GPU machine, from the repo root:
# `kernels/scripts/gpu-kernels.sh run` runs every kernel test, then the bench, logs into $OUT
# (or /tmp) and prints a short table last.
set -euo pipefail
cd "$(dirname "$0")/../.."
dest=.gpu/kernels

case "${1:-}" in
build)
    mkdir -p "$dest"
    test_bin=$(cargo test -p pagedserve-kernels --release --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')
    cargo build -p pagedserve-kernels --release --example attn_bench --example compile_ptx
    cp "$test_bin" "$dest/gpu-tests"
    cp target/release/examples/attn_bench target/release/examples/compile_ptx "$dest/"
    ls -la "$dest"
    ;;
run)
    out=${OUT:-/tmp/gpu-kernels}
    mkdir -p "$out"
    export LD_LIBRARY_PATH=/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.used --format=csv | tee "$out/gpu.txt"
    cache=$(mktemp -d)
    SECONDS=0
    "$dest/compile_ptx" sm_90 "$out/kernels.ptx" 2>&1 | tee "$out/compile.log"
    if [ -x /usr/local/cuda/bin/ptxas ]; then
        /usr/local/cuda/bin/ptxas -arch=sm_90 -v "$out/kernels.ptx" -o /dev/null 2>&1 | awk '
            /Compiling entry function/ { split($0, q, "\047"); name = q[2] }
            /spill stores/ { spill = $5 " B spill st, " $9 " B spill ld" }
            /Used [0-9]+ registers/ { print name ": " $5 " regs, " spill }' > "$out/regs.txt" || true
    fi
    set +e
    "$dest/gpu-tests" --test-threads=1 --nocapture > "$out/tests.log" 2>&1
    tests_rc=$?
    "$dest/attn_bench" "$cache" > "$out/bench.log" 2>&1
    bench_rc=$?
    set -e
    echo "== registers / spills (ptxas -v) =="
    grep -E "prefill|_g[134]_|reduce|sample|rope" "$out/regs.txt" 2>/dev/null || true
    echo "== kernel tests (rc $tests_rc) =="
    grep -E "rel L2|^test |test result|panicked|skipped" "$out/tests.log" | grep -v "^test result: ok. 0"
    echo "== attn_bench (rc $bench_rc) =="
    sed -n '/== attn_bench/,$p' "$out/bench.log"
    [ $bench_rc -eq 0 ] || tail -20 "$out/bench.log"
    echo "total ${SECONDS} s"
    ;;
*)
    echo "usage: $0 build|run" >&2
    exit 2
    ;;
esac
