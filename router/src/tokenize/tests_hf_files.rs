//! `ModelTokenizer::from_hf_dir`: the default model's tokenizer saved as tokenizer.json
//! must behave exactly like the GGUF one, and a post-processor must add BOS.

use std::path::PathBuf;

use tokenizers::processors::template::TemplateProcessing;

use super::chat_template::ChatMessage;
use super::from_vocab::build_tokenizer;
use super::gguf_vocab::GgufVocab;
use super::model_tokenizer::ModelTokenizer;
use super::test_support::{default_model_path, smollm2, tiny_byte_level_vocab};

/// A fresh directory under the system temp dir, unique per test.
fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pagedserve-tok-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

#[test]
fn tokenizer_json_of_the_default_model_matches_the_gguf() {
    let vocab = GgufVocab::read(&default_model_path()).expect("read GGUF");
    let (tokenizer, _) = build_tokenizer(&vocab).expect("build");
    let dir = temp_dir("smollm2");
    tokenizer
        .save(dir.join("tokenizer.json"), false)
        .expect("save");
    let config = serde_json::json!({
        "bos_token": "<|im_start|>",
        "eos_token": {"content": "<|im_end|>", "special": true},
        "chat_template": [{"name": "default", "template": vocab.chat_template}],
    });
    std::fs::write(dir.join("tokenizer_config.json"), config.to_string()).expect("write");
    std::fs::write(
        dir.join("generation_config.json"),
        r#"{"eos_token_id": [2, 0]}"#,
    )
    .expect("write");

    let hf = ModelTokenizer::from_hf_dir(&dir).expect("load tokenizer.json");
    let gguf = smollm2();
    assert_eq!(hf.vocab_size(), gguf.vocab_size());
    assert_eq!(hf.bos_token(), Some("<|im_start|>"));
    assert_eq!(hf.eos_token_ids(), &[2, 0]);
    for text in [
        "Hello world",
        "<|im_start|>user\n12 😀<|im_end|>",
        "  x\n\n",
    ] {
        assert_eq!(
            hf.encode(text, true).ok(),
            gguf.encode(text, true).ok(),
            "{text:?}"
        );
    }
    for id in 0..u32::try_from(gguf.vocab_size()).expect("fits") {
        assert_eq!(hf.token_bytes(id), gguf.token_bytes(id), "bytes of {id}");
    }
    let chat = [ChatMessage::new("user", "Hi")];
    assert_eq!(
        hf.apply_chat_template(&chat, true).ok(),
        gguf.apply_chat_template(&chat, true).ok()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn post_processor_adds_bos_and_jinja_file_wins() {
    let (mut tokenizer, _) = build_tokenizer(&tiny_byte_level_vocab()).expect("build");
    let template: TemplateProcessing = TemplateProcessing::builder()
        .try_single("<|start|> $A")
        .expect("template")
        .special_tokens(vec![("<|start|>", 1)])
        .build()
        .expect("template processing");
    tokenizer.with_post_processor(Some(template));
    let dir = temp_dir("tiny");
    tokenizer
        .save(dir.join("tokenizer.json"), true)
        .expect("save");
    let config = r#"{"bos_token": "<|start|>", "eos_token": "<|end|>", "chat_template": "old"}"#;
    std::fs::write(dir.join("tokenizer_config.json"), config).expect("write");
    std::fs::write(
        dir.join("chat_template.jinja"),
        "{{ bos_token }}{{ messages[0].content }}",
    )
    .expect("write");

    let tok = ModelTokenizer::from_hf_dir(&dir).expect("load");
    let hello = tok.token_to_id("hello").expect("token");
    assert_eq!(tok.encode("hello", true).expect("encode"), vec![1, hello]);
    assert_eq!(tok.encode("hello", false).expect("encode"), vec![hello]);
    assert_eq!(tok.eos_token_ids(), &[0]);
    let text = tok.apply_chat_template(&[ChatMessage::new("user", "x")], false);
    assert_eq!(text.expect("renders"), "<|start|>x");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_tokenizer_json_is_an_error() {
    let dir = temp_dir("empty");
    assert!(ModelTokenizer::from_hf_dir(&dir).is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
