#!/usr/bin/env python3
"""Writes a tokenizer-only GGUF (no tensors) for benchmarks with `--load-format dummy`.

Dummy weights of a real shape (Llama-3-8B: 128,256 ids) need a tokenizer whose vocabulary
covers every id the model can sample, but no real Llama-3 tokenizer may be downloaded here.
This copies the default model's tokenizer (SmolLM2: byte-level BPE, 49,152 ids, its chat
template) and pads the vocabulary with plain tokens ("Ġd12345") up to `--vocab`, so prompts
tokenize as with SmolLM2 and every sampled id detokenizes to a short word. A few MB instead of
the model's ~100 MB, so it travels to the GPU machine cheaply.

    python3 scripts/make_dummy_tokenizer.py SRC.gguf OUT.gguf --vocab 128256

Needs the `gguf` package (pip install gguf numpy).
"""
import argparse

import gguf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("out")
    ap.add_argument("--vocab", type=int, default=128256)
    args = ap.parse_args()

    reader = gguf.GGUFReader(args.src)
    arch = str(bytes(reader.fields["general.architecture"].parts[-1]), "utf-8")
    writer = gguf.GGUFWriter(args.out, arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        if vtype == gguf.GGUFValueType.ARRAY:
            sub = field.types[1]
            if sub == gguf.GGUFValueType.STRING:
                value = [str(bytes(field.parts[i]), "utf-8") for i in field.data]
            else:
                value = [field.parts[i].tolist()[0] for i in field.data]
            if name == "tokenizer.ggml.tokens":
                value += [f"\u0120d{i}" for i in range(len(value), args.vocab)]
            elif name == "tokenizer.ggml.token_type":
                value += [1] * (args.vocab - len(value))  # NORMAL
            elif name == "tokenizer.ggml.scores":
                value += [0.0] * (args.vocab - len(value))
            writer.add_array(name, value)
        elif vtype == gguf.GGUFValueType.STRING:
            writer.add_string(name, str(bytes(field.parts[-1]), "utf-8"))
        else:
            writer.add_key_value(name, field.parts[-1].tolist()[0], vtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
