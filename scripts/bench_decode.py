#!/usr/bin/env python3
"""Single-stream decode speed and N-stream output throughput, measured the same way for
pagedserve (any OpenAI-compatible server) and for llama.cpp (llama-cpp-python, in process).

Decode tok/s of one stream = (tokens after the first) / (time from first to last token), i.e.
1 / TPOT, so prompt processing is excluded. Throughput with N streams = all generated tokens /
wall time from the first request sent to the last stream finished.

  scripts/bench_decode.py server --url http://127.0.0.1:8000 --api-key K [--streams 16]
  scripts/bench_decode.py llamacpp --model PATH.gguf --threads 2

Standard library only for the server mode (urllib + threads), so it runs anywhere.
"""

import argparse
import json
import statistics
import threading
import time
import urllib.request

PROMPT = "<|im_start|>user\nWrite a long story about a lighthouse keeper.<|im_end|>\n<|im_start|>assistant\n"


def stream_server(url, api_key, model, max_tokens, seed):
    """One streamed /v1/completions request; returns token arrival times."""
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0.8,
        "seed": seed,
        "stream": True,
        "ignore_eos": True,
    }
    req = urllib.request.Request(
        url + "/v1/completions",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {api_key}"},
    )
    times = []
    with urllib.request.urlopen(req, timeout=600) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("choices"):
                times.append(time.perf_counter())
    return times


def decode_rate(times):
    if len(times) < 2:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def model_name(url, api_key):
    req = urllib.request.Request(url + "/v1/models", headers={"Authorization": f"Bearer {api_key}"})
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)["data"][0]["id"]


def run_server(args):
    model = model_name(args.url, args.api_key)
    stream_server(args.url, args.api_key, model, 16, 0)  # warm-up
    singles = [decode_rate(stream_server(args.url, args.api_key, model, args.max_tokens, i)) for i in range(args.repeats)]
    results = [None] * args.streams

    def worker(i):
        results[i] = stream_server(args.url, args.api_key, model, args.max_tokens, 100 + i)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(args.streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    total = sum(len(r) for r in results)
    report(singles, {"streams": args.streams, "tokens": total, "wall_s": wall, "output_tok_s": total / wall})


def run_llamacpp(args):
    from llama_cpp import Llama

    llm = Llama(model_path=args.model, n_threads=args.threads, n_threads_batch=args.threads, n_ctx=2048, verbose=False)

    def once(seed):
        times = []
        for _ in llm.create_completion(PROMPT, max_tokens=args.max_tokens, temperature=0.8, seed=seed, stream=True):
            times.append(time.perf_counter())
        return times

    once(0)  # warm-up
    singles = [decode_rate(once(i)) for i in range(args.repeats)]
    report(singles, None)


def report(singles, multi):
    out = {
        "single_stream_decode_tok_s_median": statistics.median(singles),
        "single_stream_decode_tok_s_runs": [round(s, 1) for s in singles],
    }
    if multi:
        out["concurrent"] = multi
    print(json.dumps(out, indent=2), flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("server")
    s.add_argument("--url", default="http://127.0.0.1:8000")
    s.add_argument("--api-key", default="")
    s.add_argument("--streams", type=int, default=16)
    l = sub.add_parser("llamacpp")
    l.add_argument("--model", required=True)
    l.add_argument("--threads", type=int, default=2)
    for q in (s, l):
        q.add_argument("--max-tokens", type=int, default=128)
        q.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    run_server(args) if args.mode == "server" else run_llamacpp(args)


if __name__ == "__main__":
    main()
