//! Malformed tokenizer inputs give typed errors, never panics.

use candle_core::quantized::gguf_file::{self, Value};

use super::gguf_vocab::GgufVocab;
use super::model_tokenizer::ModelTokenizer;
use super::test_support::tiny_byte_level_vocab;

fn write_gguf(name: &str, metadata: &[(&str, Value)]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("pagedserve-tok-{}-{name}", std::process::id()));
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let mut f = std::fs::File::create(&path).expect("create");
    gguf_file::write(&mut f, &md, &[]).expect("write gguf");
    path
}

/// candle's header reader divided by `general.alignment` unchecked: 0 panicked the router.
#[test]
fn zero_alignment_gguf_is_an_error() {
    let path = write_gguf(
        "align.gguf",
        &[
            ("general.alignment", Value::U32(0)),
            ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ],
    );
    let err = GgufVocab::read(&path).expect_err("alignment 0").to_string();
    std::fs::remove_file(&path).expect("cleanup");
    assert!(
        err.contains("align.gguf") && err.contains("alignment"),
        "{err}"
    );
}

#[test]
fn empty_vocabulary_is_an_error() {
    let mut vocab = tiny_byte_level_vocab();
    vocab.tokens.clear();
    vocab.token_types.clear();
    vocab.merges.clear();
    let err = ModelTokenizer::from_vocab(&vocab)
        .expect_err("no tokens")
        .to_string();
    assert!(err.contains("tokenizer.ggml.tokens"), "{err}");
}

#[test]
fn merges_of_unknown_tokens_are_an_error() {
    let mut vocab = tiny_byte_level_vocab();
    vocab.merges.push("zzz qqq".into());
    let err = ModelTokenizer::from_vocab(&vocab)
        .expect_err("unknown merge")
        .to_string();
    assert!(err.contains("zzz"), "{err}");
    let mut vocab = tiny_byte_level_vocab();
    vocab.merges.push("nospace".into());
    let err = ModelTokenizer::from_vocab(&vocab)
        .expect_err("bad merge")
        .to_string();
    assert!(err.contains("nospace"), "{err}");
}

#[test]
fn special_ids_outside_the_vocabulary_are_dropped_not_indexed() {
    let mut vocab = tiny_byte_level_vocab();
    vocab.bos_id = Some(u32::MAX);
    vocab.eos_id = Some(1 << 20);
    vocab.extra_eos_ids = vec![1 << 21];
    let tok = ModelTokenizer::from_vocab(&vocab).expect("builds");
    assert!(tok.encode("hello", true).is_ok());
}
