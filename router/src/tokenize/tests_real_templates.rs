//! The real chat templates of Mistral-7B-Instruct-v0.2, Meta-Llama-3-8B-Instruct and
//! Qwen2-7B-Instruct (testdata/real_templates/, copied from their tokenizer_config.json),
//! loaded the way a HF model directory is, render exactly what transformers'
//! `apply_chat_template` renders (testdata/make_real_templates.py), and raise the
//! template's own message where transformers does.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::chat_template::ChatMessage;
use super::error::TemplateError;
use super::model_tokenizer::ModelTokenizer;

#[derive(Deserialize)]
struct Case {
    name: String,
    messages: Vec<Message>,
    add_generation_prompt: bool,
    expected: Option<String>,
    raised: Option<String>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: String,
}

/// The template's model, and the tiny fixture whose tokenizer.json has its special tokens.
const MODELS: &[(&str, &str)] = &[
    ("Mistral-7B-Instruct-v0.2", "mistral"),
    ("Meta-Llama-3-8B-Instruct", "llama"),
    ("Qwen2-7B-Instruct", "qwen2"),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A model directory: the fixture's tokenizer.json and the real tokenizer_config.json.
fn model_dir(model: &str, fixture: &str, test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "pagedserve-tpl-{}-{fixture}-{test}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let tokenizer = repo_root().join(format!("shard/tests/data/hf/{fixture}/tokenizer.json"));
    std::fs::copy(tokenizer, dir.join("tokenizer.json")).expect("copy tokenizer.json");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "src/tokenize/testdata/real_templates/{model}.tokenizer_config.json"
    ));
    std::fs::copy(config, dir.join("tokenizer_config.json")).expect("copy tokenizer_config");
    dir
}

#[test]
fn real_templates_render_like_transformers() {
    let all: std::collections::HashMap<String, Vec<Case>> =
        serde_json::from_str(include_str!("testdata/real_templates_expected.json"))
            .expect("fixture parses");
    let mut raised = 0;
    for (model, fixture) in MODELS {
        let cases = all.get(*model).expect("cases for every model");
        assert!(cases.len() >= 6, "{model}");
        let dir = model_dir(model, fixture, "render");
        let tok = ModelTokenizer::from_hf_dir(&dir).expect("load the model directory");
        for case in cases {
            let messages: Vec<ChatMessage> = case
                .messages
                .iter()
                .map(|m| ChatMessage::new(m.role.clone(), m.content.clone()))
                .collect();
            let got = tok.apply_chat_template(&messages, case.add_generation_prompt);
            match (&case.expected, &case.raised, got) {
                (Some(want), _, Ok(text)) => assert_eq!(&text, want, "{model}: {}", case.name),
                (_, Some(want), Err(TemplateError::Raised(message))) => {
                    raised += 1;
                    assert_eq!(&message, want, "{model}: {}", case.name)
                }
                (_, _, other) => panic!("{model}: {}: unexpected {other:?}", case.name),
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    assert!(raised >= 2, "the error cases ran");
}

/// Model, fixture, BOS, EOS, control tokens of its template.
type SpecialCase = (
    &'static str,
    &'static str,
    Option<&'static str>,
    &'static str,
    &'static [&'static str],
);

/// The special tokens of tokenizer_config.json and the added tokens of tokenizer.json: BOS
/// and EOS resolve to ids, and a rendered prompt encodes each control token as one id.
#[test]
fn special_and_added_tokens_encode_as_single_ids() {
    let cases: &[SpecialCase] = &[
        (
            "Mistral-7B-Instruct-v0.2",
            "mistral",
            Some("<s>"),
            "</s>",
            &["<s>"],
        ),
        (
            "Meta-Llama-3-8B-Instruct",
            "llama",
            Some("<|begin_of_text|>"),
            "<|eot_id|>",
            &[
                "<|begin_of_text|>",
                "<|start_header_id|>",
                "<|end_header_id|>",
                "<|eot_id|>",
            ],
        ),
        (
            "Qwen2-7B-Instruct",
            "qwen2",
            None,
            "<|im_end|>",
            &["<|im_start|>", "<|im_end|>"],
        ),
    ];
    for (model, fixture, bos, eos, controls) in cases {
        let dir = model_dir(model, fixture, "special");
        let tok = ModelTokenizer::from_hf_dir(&dir).expect("load");
        assert_eq!(tok.bos_token(), *bos, "{model}");
        assert_eq!(tok.eos_token(), Some(*eos), "{model}");
        let eos_id = tok.token_to_id(eos).expect("eos id");
        assert!(tok.eos_token_ids().contains(&eos_id), "{model}");
        let chat = [ChatMessage::new("user", "Hello world")];
        let text = tok.apply_chat_template(&chat, true).expect("renders");
        let ids = tok.encode(&text, false).expect("encodes");
        for control in *controls {
            let id = tok
                .token_to_id(control)
                .expect("control token in the vocabulary");
            assert!(
                ids.contains(&id),
                "{model}: {control} not one id in {ids:?}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
