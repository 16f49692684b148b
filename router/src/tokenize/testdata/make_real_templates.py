#!/usr/bin/env python3
"""Renders the real chat templates in real_templates/*.tokenizer_config.json (copied from the
tokenizer_config.json of Mistral-7B-Instruct-v0.2, Meta-Llama-3-8B-Instruct and
Qwen2-7B-Instruct) with transformers' `apply_chat_template`, and writes what it renders — or
the message a template raises — to real_templates_expected.json for tests_real_templates.rs.

Run by hand: `target/fixture-venv/bin/python router/src/tokenize/testdata/make_real_templates.py`
(a venv with transformers; scripts/make_hf_fixtures.py creates one).
"""
import json
from pathlib import Path

from transformers import PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[3]
# Any tokenizer.json will do: only the template, bos and eos tokens take part in rendering.
TOKENIZER = REPO / "shard" / "tests" / "data" / "hf" / "llama" / "tokenizer.json"

SYSTEM = {"role": "system", "content": "You are a pirate. Answer in one line."}
U1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "Arr, Paris it be."}
U2 = {"role": "user", "content": "  And of Italy?\n"}
CASES = [
    ("single turn", [U1], True),
    ("single turn, no generation prompt", [U1], False),
    ("system message", [SYSTEM, U1], True),
    ("multi-turn", [U1, A1, U2], True),
    ("multi-turn with system", [SYSTEM, U1, A1, U2], True),
    ("ends with the assistant", [U1, A1], False),
    ("two user turns in a row", [U1, U2], True),
    ("unicode", [{"role": "user", "content": "Grüße 👋 — 你好"}], True),
]


def main():
    out = {}
    for path in sorted(HERE.glob("real_templates/*.tokenizer_config.json")):
        cfg = json.loads(path.read_text())
        tok = PreTrainedTokenizerFast(tokenizer_file=str(TOKENIZER))
        tok.bos_token = cfg.get("bos_token")
        tok.eos_token = cfg.get("eos_token")
        tok.chat_template = cfg["chat_template"]
        model = path.name.removesuffix(".tokenizer_config.json")
        cases = []
        for name, messages, gen in CASES:
            case = {"name": name, "messages": messages, "add_generation_prompt": gen}
            try:
                case["expected"] = tok.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=gen)
            except Exception as e:  # the template's own raise_exception
                case["raised"] = getattr(e, "message", None) or str(e)
            cases.append(case)
        out[model] = cases
    (HERE / "real_templates_expected.json").write_text(
        json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    for model, cases in out.items():
        raised = sum("raised" in c for c in cases)
        print(f"{model}: {len(cases)} cases, {raised} raise")


if __name__ == "__main__":
    main()
