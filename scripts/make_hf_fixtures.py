#!/usr/bin/env python3
"""Writes tiny random-weight models in Hugging Face layout under shard/tests/data/hf/ (one
directory per family: Llama with llama3 rope scaling in f32, Mistral with a sliding window in
bf16 sharded, Qwen2 with q/k/v biases in f16), each with tokenizer files, the family's real chat
template and an `expected.json` of transformers' logits for the same weights, so the Rust
loader can be checked against an independent implementation.

Run by hand (not in CI; transformers is not there): `python3 scripts/make_hf_fixtures.py`.
It reuses (or creates) the venv under target/fixture-venv that scripts/make_fixture.py uses.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / "target" / "fixture-venv"
OUT = REPO / "shard" / "tests" / "data" / "hf"
NEW_TOKENS = 6
SEED = 1234

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Once upon a time, in a small village, there lived a baker who made bread.",
    "What is the capital of South Korea? Seoul is the capital.",
    "Hello world! How are you today? I am fine, thank you.",
    "def fib(n): return n if n < 2 else fib(n - 1) + fib(n - 2)",
]
PROMPTS = [
    "Hello world",
    "Once upon a time, in a small village, the quick brown fox met a baker.",
]

# The real templates of the families' instruct models (their tokenizer_config.json).
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)
MISTRAL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)
QWEN2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def ensure_venv() -> None:
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    py = VENV / "bin" / "python"
    if not py.exists():
        subprocess.check_call([sys.executable, "-m", "venv", str(VENV)])
        subprocess.check_call([str(py), "-m", "pip", "install", "--quiet", "transformers", "torch"])
    os.execv(str(py), [str(py), __file__, *sys.argv[1:]])


def train_tokenizer(specials, bos):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    return tok


FAMILIES = {
    "llama": dict(
        arch="LlamaForCausalLM",
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"],
        bos="<|begin_of_text|>", eos="<|eot_id|>", template=LLAMA3_TEMPLATE,
        dtype="float32", shard=None,
        config=dict(tie_word_embeddings=True, rope_theta=10000.0,
                    rope_scaling={"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 32}),
        generation=dict(eos_token_id=["<|end_of_text|>", "<|eot_id|>"], do_sample=True,
                        temperature=0.6, top_p=0.9),
    ),
    "mistral": dict(
        arch="MistralForCausalLM",
        specials=["<unk>", "<s>", "</s>"],
        bos="<s>", eos="</s>", template=MISTRAL_TEMPLATE,
        dtype="bfloat16", shard="150KB",
        config=dict(tie_word_embeddings=False, rope_theta=1000000.0, sliding_window=8),
        generation=dict(eos_token_id="</s>"),
    ),
    "qwen2": dict(
        arch="Qwen2ForCausalLM",
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos=None, eos="<|im_end|>", template=QWEN2_TEMPLATE,
        dtype="float16", shard=None,
        config=dict(tie_word_embeddings=False, rope_theta=1000000.0, use_sliding_window=False),
        generation=dict(eos_token_id=["<|im_end|>", "<|endoftext|>"], do_sample=True,
                        temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05),
    ),
}


def build_config(name, fam, vocab):
    import transformers

    cls = getattr(transformers, fam["arch"].replace("ForCausalLM", "Config"))
    ids = lambda t: vocab[t]
    return cls(
        # head_dim 64 (2 query heads sharing 1 KV head): the smallest head the CUDA kernels take.
        vocab_size=len(vocab), hidden_size=128, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=128,
        rms_norm_eps=1e-6, bos_token_id=ids(fam["bos"]) if fam["bos"] else None,
        eos_token_id=ids(fam["eos"]), architectures=[fam["arch"]], **fam["config"],
    )


def randomize(model):
    import torch

    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.15 * torch.randn(p.shape, generator=g))


def legacy_rope_keys(path):
    """Hub configs (and transformers < 5) spell rope settings as `rope_theta` and
    `rope_scaling`; transformers 5 writes `rope_parameters`. Llama and Mistral get the old
    spelling, Qwen2 keeps the new one, so the loader is tested on both."""
    cfg = json.loads(path.read_text())
    rope = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rope.pop("rope_theta")
    cfg["rope_scaling"] = None if rope.get("rope_type") == "default" else rope
    path.write_text(json.dumps(cfg, indent=2) + "\n")


def save_tokenizer(out, fam, tok):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=fam["bos"], eos_token=fam["eos"],
        unk_token="<unk>" if "<unk>" in fam["specials"] else None,
    )
    fast.save_pretrained(out)
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    jinja = out / "chat_template.jinja"
    if jinja.exists():
        jinja.unlink()
    # Mistral-style list of named templates; the others a plain string.
    if fam["arch"].startswith("Mistral"):
        cfg["chat_template"] = [{"name": "default", "template": fam["template"]},
                                {"name": "tool_use", "template": "{{ 'tools' }}"}]
    else:
        cfg["chat_template"] = fam["template"]
    cfg_path.write_text(json.dumps(cfg, indent=2, ensure_ascii=False) + "\n")
    reloaded = PreTrainedTokenizerFast.from_pretrained(out)
    reloaded.chat_template = fam["template"]
    return reloaded


def expected(model_dir, tok):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    cases = []
    for text in PROMPTS:
        ids = tok(text)["input_ids"]
        seq = list(ids)
        logits_rows = []
        with torch.no_grad():
            for _ in range(NEW_TOKENS):
                out = model(torch.tensor([seq])).logits[0, -1]
                logits_rows.append([round(float(x), 5) for x in out])
                seq.append(int(out.argmax()))
        cases.append({"prompt_ids": ids, "generated_ids": seq[len(ids):], "logits": logits_rows})
    return model, cases


def window_matters(model, cases):
    """The long prompt's logits must change without the sliding window, or the test is moot."""
    import torch

    model.config.sliding_window = None
    ids = cases[1]["prompt_ids"]
    with torch.no_grad():
        full = model(torch.tensor([ids])).logits[0, -1]
    diff = max(abs(float(a) - b) for a, b in zip(full, cases[1]["logits"][0]))
    assert diff > 0.1, f"sliding window changes logits by only {diff}"
    return diff


def main():
    ensure_venv()
    import shutil

    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    for name, fam in FAMILIES.items():
        out = OUT / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        tok = train_tokenizer(fam["specials"], fam["bos"] if name == "llama" else None)
        vocab = tok.get_vocab()
        config = build_config(name, fam, vocab)
        torch.manual_seed(SEED)
        model = AutoModelForCausalLM.from_config(config)
        randomize(model)
        model = model.to(getattr(torch, fam["dtype"]))
        kwargs = {"max_shard_size": fam["shard"]} if fam["shard"] else {}
        model.save_pretrained(out, **kwargs)
        if name != "qwen2":
            legacy_rope_keys(out / "config.json")
        gen = dict(fam["generation"])
        eos = gen["eos_token_id"]
        gen["eos_token_id"] = [vocab[t] for t in eos] if isinstance(eos, list) else vocab[eos]
        gen_cfg = GenerationConfig(bos_token_id=config.bos_token_id, **gen)
        gen_cfg.save_pretrained(out)
        hf_tok = save_tokenizer(out, fam, tok)
        ref, cases = expected(out, hf_tok)
        record = {"family": name, "dtype": fam["dtype"], "transformers": transformers.__version__,
                  "new_tokens": NEW_TOKENS, "cases": cases}
        if name == "mistral":
            record["window_effect"] = window_matters(ref, cases)
        (out / "expected.json").write_text(json.dumps(record) + "\n")
        files = sorted(p.name for p in out.iterdir())
        size = sum(p.stat().st_size for p in out.iterdir())
        print(f"{name}: {size / 1024:.0f} KiB {files}")


if __name__ == "__main__":
    main()
