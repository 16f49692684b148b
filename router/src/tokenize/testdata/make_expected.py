#!/usr/bin/env python3
"""Writes the tokenizer and chat-template expectations the Rust tests compare against.

Reference: transformers' own GGUF tokenizer builder (integrations/gguf) fed the GGUF's
metadata (read with the `gguf` package, so no torch is needed), with the pre-tokenizer
of SmolLM2's published tokenizer.json (Digits(individual_digits) + ByteLevel) -- transformers
does not know the `smollm` pre type and would fall back to plain GPT-2 splitting (for this
vocabulary the two agree on every test string; `transformers_gguf_ids` is written where they
would not). Chat templates are rendered with transformers' `render_jinja_template` (jinja2 with
HF's environment). A synthetic SentencePiece vocabulary goes through the same builder.

Writes tokenizer_expected.json, chat_expected.json and sentencepiece_expected.json here.

Run (outside the repo's tree of dependencies; a throwaway venv is fine):
    python3 -m venv /tmp/tokref-venv
    /tmp/tokref-venv/bin/pip install tokenizers transformers gguf jinja2
    /tmp/tokref-venv/bin/python router/src/tokenize/testdata/make_expected.py [MODEL.gguf]
"""

import json
import os
import sys
from pathlib import Path

from gguf import GGUFReader
from tokenizers import pre_tokenizers
from transformers.convert_slow_tokenizer import bytes_to_unicode
from transformers.integrations.gguf.gguf_tokenizer_mapping import (
    GGUF_TOKENIZER_MAPPING,
    convert_gguf_tokenizer,
)
from transformers.utils.chat_template_utils import render_jinja_template

HERE = Path(__file__).resolve().parent
CACHE = Path(os.environ.get("PAGEDSERVE_CACHE", Path.home() / ".cache" / "pagedserve"))
DEFAULT_MODEL = CACHE / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"

TEXTS = [
    "Hello world",
    " Hello",
    "  two leading spaces",
    "trailing spaces   ",
    "12345",
    "3.14159 and 1,000,000 and x 1 22 333 4444",
    "mixed 123abc456 tokens",
    "a\nb\n\nc\r\nd",
    "\ttab\tseparated\t",
    "\n\n\n",
    "   ",
    "",
    "émigré naïve café ÀÁÂÃÄÅ",
    "日本語のテキスト",
    "中文分词测试，标点。",
    "Привет, мир!",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇰🇷",
    "it's I'm we'll they've DON'T",
    "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n<|im_start|>user\nWhat is the capital of South Korea?<|im_end|>\n"
    "<|im_start|>assistant\n",
    "<|endoftext|>",
    "text<|im_end|>more",
    "<|im_start",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n",
    'fn main() { println!("{}", 1 + 2); }',
    "http://example.com/path?q=1&x=2#frag",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "The quick brown fox jumps over the lazy dog.",
]

# A few ids to pin their raw bytes: specials, a space-prefixed word, newline, a split byte.
BYTE_IDS = [0, 1, 2, 198, 216, 33, 905, 19556, 49151]

SMOLLM_CHATS = [
    ([{"role": "user", "content": "Hi"}], True),
    ([{"role": "user", "content": "Hi"}], False),
    (
        [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": "What is the capital of South Korea?"},
        ],
        True,
    ),
    (
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello! How can I help?"},
            {"role": "user", "content": "Tell me a joke.\nA short one."},
        ],
        True,
    ),
    ([], True),
]

MISTRAL_LIKE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}"
)

# trim_blocks/lstrip_blocks, whitespace control, filters and Python methods HF templates use.
BLOCKY = """{%- set ns = namespace(system='') %}
{%- for message in messages %}
    {%- if message.role == 'system' %}
        {%- set ns.system = message.content | trim %}
    {%- endif %}
{%- endfor %}
{% if ns.system %}
<<SYS>>{{ ns.system }}<</SYS>>
{% endif %}
{% for message in messages if message.role != 'system' %}
    {% if loop.first %}
[first]
    {% endif %}
[{{ message.role | upper }}] {{ message.content.strip() }} ({{ message.content.split(' ') | length }} words{% if message.content.startswith('Hi') %}, greeting{% endif %}{% if message.content.endswith('?') %}, question{% endif %})
{% endfor %}
{% if add_generation_prompt %}
[ASSISTANT]
{%- endif %}"""

PY_METHODS = (
    "{% for m in messages %}{{ m.content.lstrip('x').rstrip('!') }}|{{ m.content.lower() }}|"
    "{{ m.content.replace('a', 'A') }}|{{ m.content.title() }}|{{ m.role.capitalize() }}|"
    "{{ m.get('role') }}|{{ m.get('missing', 'dflt') }}|{{ m.content.split() | join(',') }}|"
    "{{ m.content.find('a') }}|{{ m.content.count('a') }}\n{% endfor %}"
)

UNDEFINED = (
    "[{{ foo }}]{% if tools %}T{% else %}F{% endif %}{% if tools is none %}N{% endif %}"
    "{% if foo is defined %}D{% else %}U{% endif %}[{{ messages[0].missing }}]"
    "{{ messages | length }}{{ messages[-1]['content'] }}"
)

TOJSON = (
    "{{ messages | tojson }}\n{{ messages[0] | tojson(indent=2) }}\n"
    # Keys in sorted order: minijinja (without its preserve_order feature) keeps dict
    # *literals* sorted, where Python keeps insertion order. Messages keep their order.
    "{{ {'a': [true, none, 1.5, 'x\"y'], 'b': 1, 'c': {}} | tojson(sort_keys=true) }}\n"
    "{{ {'k': [1, 2]} | tojson(indent=1, separators=[',', ':']) }}\n"
    "{{ 'ünï <tag> &' | tojson }}"
)

# How values print: Python's str() of bools, None, numbers, lists and dicts.
PRINTING = (
    "{{ add_generation_prompt }}|{{ none }}|{{ 1 == 1 }}|{{ 3 / 2 }}|{{ 7 // 2 }}|{{ 2 ** 3 }}|"
    "{{ 'a' ~ 1 }}|{{ 1.0 }}|{{ [1, 'a', none, true] }}|{{ messages[0] }}|"
    '{{ ["it\'s", \'say "x"\'] }}'
)

CUSTOM_CHATS = [
    ("mistral_like_ok", MISTRAL_LIKE, [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Bye"},
    ], False),
    ("mistral_like_bad_order", MISTRAL_LIKE, [
        {"role": "assistant", "content": "Hello"},
    ], False),
    ("mistral_like_bad_role", MISTRAL_LIKE, [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "x"},
    ], False),
    ("blocky", BLOCKY, [
        {"role": "system", "content": "  Be brief.  "},
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "  Hello! "},
        {"role": "user", "content": "What now?"},
    ], True),
    ("blocky_no_prompt", BLOCKY, [{"role": "user", "content": "Hi"}], False),
    ("py_methods", PY_METHODS, [
        {"role": "user", "content": "xxabc banana ab!!"},
        {"role": "assistant", "content": "ALL CAPS and a title"},
    ], False),
    ("undefined", UNDEFINED, [{"role": "user", "content": "Hi"}], False),
    ("printing", PRINTING, [{"role": "user", "content": "Hi"}], True),
    ("tojson", TOJSON, [{"role": "user", "content": "Hi \"there\"\n"}], False),
]


# A synthetic SentencePiece (`llama` GGUF model) vocabulary: no such model is on disk, so
# transformers' GGUF builder is run on this one, with merges rebuilt from the scores.
SPM_PIECES = [
    ("\u2581", -1.0), ("e", -2.0), ("l", -2.1), ("o", -2.2), ("h", -2.3), ("w", -2.4),
    ("r", -2.5), ("d", -2.6), ("a", -2.7), ("t", -2.8), ("ll", -3.0), ("\u2581h", -3.1),
    ("\u2581w", -3.2), ("he", -3.3), ("llo", -3.4), ("\u2581he", -3.5), ("\u2581hello", -3.6),
    ("or", -3.7), ("\u2581wor", -3.8), ("ld", -3.9), ("\u2581world", -4.0), ("\u2581\u2581", -4.1),
    ("at", -4.2), ("\u2581a", -4.3), ("\u2581at", -4.4), ("é", -4.5), ("<think>", 0.0),
]
SPM_TEXTS = [
    "hello world",
    " hello",
    "hello  world",
    "héllo 😀 wat",
    "hello\nworld",
    "<s>hello</s> world",
    "hello <think>at</think>",
    "zzz",
    "",
]


def spm_vocab():
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [2, 3, 3] + [6] * 256
    scores = [0.0, 0.0, 0.0] + [0.0] * 256
    for piece, score in SPM_PIECES:
        tokens.append(piece)
        types.append(4 if piece.startswith("<") else 1)
        scores.append(score)
    return {"tokenizer_type": "llama", "tokens": tokens, "token_type": types, "scores": scores,
            "bos_token_id": 1, "eos_token_id": 2, "unk_token_id": 0}


def spm_fixture():
    vocab = spm_vocab()
    tok, _ = convert_gguf_tokenizer("llama", dict(vocab))
    cases = []
    for text in SPM_TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        cases.append({"text": text, "ids": ids,
                      "decoded": tok.decode(ids, skip_special_tokens=False),
                      "decoded_skip_special": tok.decode(ids, skip_special_tokens=True)})
    return {"vocab": vocab, "cases": cases}


def read_tokenizer_dict(path):
    reader = GGUFReader(str(path))
    fields = {k: f.contents() for k, f in reader.fields.items() if k.startswith("tokenizer")}
    tok_dict = {
        name: fields["tokenizer." + key]
        for key, name in GGUF_TOKENIZER_MAPPING["tokenizer"].items()
        if "tokenizer." + key in fields
    }
    return tok_dict, fields


def build_reference(tok_dict):
    """(tokenizer as transformers builds it from the GGUF, same with SmolLM2's pre-tokenizer)."""
    plain, _ = convert_gguf_tokenizer("llama", tok_dict)
    smollm, _ = convert_gguf_tokenizer("llama", tok_dict)
    smollm.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ]
    )
    return plain, smollm


def render(template, messages, add_generation_prompt, bos, eos):
    try:
        rendered, _ = render_jinja_template(
            conversations=[messages],
            chat_template=template,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos,
            eos_token=eos,
        )
        return {"expected": rendered[0]}
    except Exception as err:  # jinja2 TemplateError from raise_exception
        return {"raised": str(err)}


def main():
    model = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_MODEL
    tok_dict, fields = read_tokenizer_dict(model)
    plain, smollm = build_reference(tok_dict)
    tokens = tok_dict["tokens"]
    bos, eos = tokens[fields["tokenizer.ggml.bos_token_id"]], tokens[fields["tokenizer.ggml.eos_token_id"]]

    cases = []
    for text in TEXTS:
        ids = smollm.encode(text, add_special_tokens=False).ids
        case = {
            "text": text,
            "ids": ids,
            "decoded": smollm.decode(ids, skip_special_tokens=False),
            "decoded_skip_special": smollm.decode(ids, skip_special_tokens=True),
        }
        plain_ids = plain.encode(text, add_special_tokens=False).ids
        if plain_ids != ids:
            case["transformers_gguf_ids"] = plain_ids
        cases.append(case)
    # Raw bytes: control tokens as written, others through GPT-2's byte alphabet.
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    types = tok_dict["token_type"]
    token_bytes = {}
    for i in BYTE_IDS:
        tok = tokens[i]
        raw = tok.encode("utf-8") if types[i] == 3 else bytes(byte_of[c] for c in tok)
        token_bytes[str(i)] = list(raw)

    tokenizer_fixture = {
        "model_file": model.name,
        "vocab_size": len(tokens),
        "bos_token": bos,
        "eos_token": eos,
        "cases": cases,
        "token_bytes": token_bytes,
    }
    template = fields["tokenizer.chat_template"]
    chat_fixture = {
        "model_file": model.name,
        "smollm2": [
            {"messages": m, "add_generation_prompt": g, **render(template, m, g, bos, eos)}
            for m, g in SMOLLM_CHATS
        ],
        "custom": [
            {
                "name": name,
                "template": tpl,
                "messages": m,
                "add_generation_prompt": g,
                "bos_token": "<s>",
                "eos_token": "</s>",
                **render(tpl, m, g, "<s>", "</s>"),
            }
            for name, tpl, m, g in CUSTOM_CHATS
        ],
    }
    outputs = [
        ("tokenizer_expected.json", tokenizer_fixture),
        ("chat_expected.json", chat_fixture),
        ("sentencepiece_expected.json", spm_fixture()),
    ]
    for name, data in outputs:
        with open(HERE / name, "w", encoding="utf-8") as f:
            json.dump(data, f, ensure_ascii=False, indent=1)
            f.write("\n")
        print("wrote", HERE / name)


if __name__ == "__main__":
    main()
