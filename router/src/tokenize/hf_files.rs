//! A tokenizer from a HF model directory (`tokenizer.json` and its companions), for models
//! that come as safetensors rather than GGUF.

use std::path::Path;

use serde_json::Value as Json;
use tokenizers::Tokenizer;

use super::error::TokenizeError;
use super::from_vocab::VocabKind;
use super::gguf_vocab::{TOKEN_TYPE_BYTE, TOKEN_TYPE_CONTROL};
use super::model_tokenizer::{AddSpecial, Parts};
use super::token_bytes::{all_token_bytes, parse_byte_token};

const NORMAL: i32 = 1;

/// Reads `dir/tokenizer.json` plus, when present, `tokenizer_config.json` (BOS/EOS,
/// chat template), `chat_template.jinja` and `generation_config.json` (extra EOS ids).
pub(super) fn hf_parts(dir: &Path) -> Result<Parts, TokenizeError> {
    let path = dir.join("tokenizer.json");
    let tokenizer = Tokenizer::from_file(&path)
        .map_err(|e| TokenizeError::Tokenizer(format!("{}: {e}", path.display())))?;
    let config = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Json::Null);
    let generation = read_json(&dir.join("generation_config.json"))?.unwrap_or(Json::Null);
    let chat_template = match read_text(&dir.join("chat_template.jinja"))? {
        Some(text) => Some(text),
        None => config_chat_template(&config),
    };
    let (tokens, types, kind) = vocabulary(&tokenizer);
    let named = |key: &str| {
        let text = token_text(config.get(key)?)?;
        Some((tokenizer.token_to_id(&text)?, text))
    };
    Ok(Parts {
        token_bytes: all_token_bytes(&tokens, &types, kind),
        bos: named("bos_token"),
        eos: named("eos_token"),
        extra_eos_ids: ids(generation.get("eos_token_id")),
        add_special: AddSpecial::PostProcessor,
        chat_template,
        tokenizer,
    })
}

/// Tokens by id (holes as ""), their GGUF-style types, and the byte encoding in use.
fn vocabulary(tokenizer: &Tokenizer) -> (Vec<String>, Vec<i32>, VocabKind) {
    let vocab = tokenizer.get_vocab(true);
    let size = vocab.values().max().map_or(0, |max| *max as usize + 1);
    let mut tokens = vec![String::new(); size];
    for (token, id) in vocab {
        tokens[id as usize] = token;
    }
    let byte_level = tokenizer
        .get_decoder()
        .and_then(|d| serde_json::to_string(d).ok())
        .is_some_and(|json| json.contains("\"ByteLevel\""));
    let kind = if byte_level {
        VocabKind::ByteLevel
    } else {
        VocabKind::SentencePiece
    };
    let added = tokenizer.get_added_tokens_decoder();
    let types = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| {
            let id = u32::try_from(id).unwrap_or(u32::MAX);
            if added.contains_key(&id) {
                TOKEN_TYPE_CONTROL
            } else if kind == VocabKind::SentencePiece && parse_byte_token(token).is_some() {
                TOKEN_TYPE_BYTE
            } else {
                NORMAL
            }
        })
        .collect();
    (tokens, types, kind)
}

/// `"<s>"` or `{"content": "<s>", ...}`.
fn token_text(value: &Json) -> Option<String> {
    match value {
        Json::String(s) => Some(s.clone()),
        Json::Object(map) => map.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

/// `eos_token_id` as a number or a list of numbers.
fn ids(value: Option<&Json>) -> Vec<u32> {
    let as_id = |v: &Json| v.as_u64().and_then(|n| u32::try_from(n).ok());
    match value {
        Some(Json::Array(items)) => items.iter().filter_map(as_id).collect(),
        Some(v) => as_id(v).into_iter().collect(),
        None => Vec::new(),
    }
}

/// A string, or a list of named templates of which `default` (else the first) is used.
fn config_chat_template(config: &Json) -> Option<String> {
    match config.get("chat_template")? {
        Json::String(s) => Some(s.clone()),
        Json::Array(named) => {
            let template = |t: &Json| t.get("template")?.as_str().map(str::to_owned);
            named
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .or_else(|| named.first())
                .and_then(template)
        }
        _ => None,
    }
}

fn read_text(path: &Path) -> Result<Option<String>, TokenizeError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(TokenizeError::Tokenizer(format!("{}: {e}", path.display()))),
    }
}

fn read_json(path: &Path) -> Result<Option<Json>, TokenizeError> {
    read_text(path)?
        .map(|text| {
            serde_json::from_str(&text)
                .map_err(|e| TokenizeError::Tokenizer(format!("{}: {e}", path.display())))
        })
        .transpose()
}
