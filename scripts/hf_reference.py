#!/usr/bin/env python3
"""Hugging Face transformers on a Llama-3-8B-shaped model with random bf16 weights: the
side-by-side reference for docs/perf.md (run by scripts/gpu-check on the GPU machine).

Prints batch-1 decode tok/s (model.generate, greedy, the static cache and torch.compile off:
transformers' default eager path) and continuous-batching throughput (model.generate_batch,
transformers' own paged-attention continuous batching) when this transformers has it.

    python3 scripts/hf_reference.py [--prompts N] [--new-tokens M]
"""
import argparse
import json
import time

import torch
import transformers
from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM


def llama3_8b() -> LlamaConfig:
    return LlamaConfig(
        vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
        rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False,
        bos_token_id=128000, eos_token_id=128001, torch_dtype="bfloat16")


def batch1_decode(model, context: int, new_tokens: int) -> float:
    ids = torch.randint(100, 30000, (1, context), device="cuda")
    gen = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False)
    model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False)  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    model.generate(ids, **gen)
    torch.cuda.synchronize()
    total = time.perf_counter() - t
    # Subtract the prefill (one forward of the prompt), timed alone.
    t = time.perf_counter()
    with torch.no_grad():
        model(ids)
    torch.cuda.synchronize()
    prefill = time.perf_counter() - t
    return new_tokens / (total - prefill)


def continuous_batching(model, prompts: int, new_tokens: int):
    if not hasattr(model, "generate_batch"):
        return None
    gen = GenerationConfig(max_new_tokens=new_tokens, do_sample=False, eos_token_id=-1,
                           pad_token_id=0, use_cuda_graph=False,
                           num_blocks=4096, block_size=128, max_batch_tokens=8192)
    lens = torch.randint(32, 512, (prompts,)).tolist()
    inputs = [torch.randint(100, 30000, (n,)).tolist() for n in lens]
    model.generate_batch(inputs=inputs[:8], generation_config=gen)  # warm-up
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = model.generate_batch(inputs=inputs, generation_config=gen)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t
    generated = sum(len(r.generated_tokens) for r in out.values())
    return generated / dt, prompts, generated, dt


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--prompts", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = LlamaForCausalLM(llama3_8b()).to(torch.bfloat16).eval()
    result = {"transformers": transformers.__version__, "torch": torch.__version__,
              "device": torch.cuda.get_device_name()}
    result["batch1_decode_tok_s"] = batch1_decode(model, args.context, args.new_tokens)
    try:
        cb = continuous_batching(model, args.prompts, args.new_tokens)
        if cb:
            result["generate_batch_tok_s"], result["cb_prompts"], result["cb_tokens"], \
                result["cb_secs"] = cb
        else:
            result["generate_batch"] = "not in this transformers"
    except Exception as e:  # a reference number, not a test: report and go on
        result["generate_batch_error"] = f"{type(e).__name__}: {e}"[:300]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
