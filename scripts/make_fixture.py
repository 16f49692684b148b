#!/usr/bin/env python3
"""Writes shard/tests/data/fixture.json: greedy continuations and top-5 logits from HF
transformers on the same GGUF the shard serves, so the Rust CPU backend can be checked
against an independent implementation.

Run once by hand (not in CI): `python3 scripts/make_fixture.py`. It creates its own venv
under target/ (gitignored) and installs transformers, gguf and torch there.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / "target" / "fixture-venv"
OUT = REPO / "shard" / "tests" / "data" / "fixture.json"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
NEW_TOKENS = 32
TOP_K = 5

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
PROMPTS = [
    "<|im_start|>user\nWhat is the capital of South Korea?<|im_end|>\n<|im_start|>assistant\n",
    f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
    "Write a short poem about the sea.<|im_end|>\n<|im_start|>assistant\n",
    "The quick brown fox jumps over the lazy dog. Once upon a time, in a small village,",
    # Longer than 64 tokens: exercises chunked prefill and several KV blocks.
    f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n"
    "I am planning a trip to Europe next summer. I would like to visit France, Italy and "
    "Spain, and I have about three weeks and a moderate budget. I enjoy museums, old "
    "architecture, good food and walking around cities. Which cities would you recommend, "
    "and in what order should I visit them?<|im_end|>\n<|im_start|>assistant\n",
]


def ensure_venv() -> None:
    """Re-executes this script inside the fixture venv, creating it on first use."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call(
            [str(py), "-m", "pip", "install", "--quiet", "transformers", "gguf", "torch", "accelerate"]
        )
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


def model_path() -> Path:
    cache = Path(os.environ.get("PAGEDSERVE_CACHE", Path.home() / ".cache" / "pagedserve"))
    path = cache / "models" / MODEL_FILE
    if not path.exists():
        sys.exit(f"{path} is missing: fetch the default model first")
    return path


def gguf_special_ids(path: Path) -> dict:
    """bos/eos/pad straight from the GGUF: transformers' conversion gets them wrong."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    ids = {}
    for name in ("bos", "eos", "padding"):
        field = reader.fields.get(f"tokenizer.ggml.{name}_token_id")
        if field is not None:
            ids[name] = int(field.parts[field.data[0]][0])
    return ids


def greedy(model, torch, prompt_ids: list) -> tuple:
    """Exactly NEW_TOKENS greedy steps (no EOS stop) with top-k logits at each step."""
    tokens, tops = [], []
    past = None
    inp = torch.tensor([prompt_ids])
    with torch.no_grad():
        for _ in range(NEW_TOKENS):
            out = model(input_ids=inp, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[0, -1].float()
            vals, idx = torch.topk(logits, TOP_K)
            tops.append([[int(i), float(v)] for i, v in zip(idx, vals)])
            nxt = int(torch.argmax(logits))
            tokens.append(nxt)
            inp = torch.tensor([[nxt]])
    return tokens, tops


def main() -> None:
    ensure_venv()
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_path()
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32
    )
    model.eval()
    cases = []
    for text in PROMPTS:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        generated, top = greedy(model, torch, ids)
        cases.append({"prompt": text, "prompt_ids": ids, "generated_ids": generated, "top5": top})
        print(f"{len(ids)} prompt tokens -> {tok.decode(generated)!r}")
    fixture = {
        "model": MODEL_FILE,
        "new_tokens": NEW_TOKENS,
        "special_ids": gguf_special_ids(path),
        "versions": {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
        },
        "cases": cases,
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(fixture, indent=1) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
