//! The tokenizer part of a GGUF file's metadata (`tokenizer.*` keys).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};

use super::error::TokenizeError;

/// GGUF token types (llama.cpp `llama_token_type`).
pub const TOKEN_TYPE_UNKNOWN: i32 = 2;
pub const TOKEN_TYPE_CONTROL: i32 = 3;
pub const TOKEN_TYPE_USER_DEFINED: i32 = 4;
pub const TOKEN_TYPE_BYTE: i32 = 6;

/// Everything the tokenizer needs from a GGUF, read without touching tensor data.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    /// `tokenizer.ggml.model`: `gpt2` (byte-level BPE) or `llama` (SentencePiece).
    pub model: String,
    /// `tokenizer.ggml.pre`: which pre-tokenizer split the vocabulary was trained with.
    pub pre: Option<String>,
    pub tokens: Vec<String>,
    /// One per token; 1 (normal) when the file has none.
    pub token_types: Vec<i32>,
    pub merges: Vec<String>,
    pub scores: Vec<f32>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    /// Extra end ids (`eot`, `eom`) some models stop on besides EOS.
    pub extra_eos_ids: Vec<u32>,
    pub unk_id: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    pub chat_template: Option<String>,
}

impl GgufVocab {
    /// Reads the metadata of the GGUF at `path` (header only).
    pub fn read(path: &Path) -> Result<Self, TokenizeError> {
        let gguf_err = |message: String| TokenizeError::Gguf {
            path: path.display().to_string(),
            message,
        };
        let mut file = std::fs::File::open(path).map_err(|e| gguf_err(e.to_string()))?;
        let content = read_content(&mut file).map_err(gguf_err)?;
        Self::from_metadata(&content.metadata)
    }

    /// Extracts the vocabulary from parsed GGUF metadata.
    pub fn from_metadata(md: &HashMap<String, Value>) -> Result<Self, TokenizeError> {
        let model = string(md, "tokenizer.ggml.model")?.ok_or(TokenizeError::Metadata {
            key: "tokenizer.ggml.model",
            message: "missing (the GGUF carries no tokenizer)".into(),
        })?;
        let tokens = strings(md, "tokenizer.ggml.tokens")?.ok_or(TokenizeError::Metadata {
            key: "tokenizer.ggml.tokens",
            message: "missing".into(),
        })?;
        let token_types = match array(md, "tokenizer.ggml.token_type")? {
            Some(values) => values
                .iter()
                .map(|v| {
                    v.to_i32()
                        .map_err(|e| meta_err("tokenizer.ggml.token_type", e))
                })
                .collect::<Result<Vec<_>, _>>()?,
            None => vec![1; tokens.len()],
        };
        if token_types.len() != tokens.len() {
            return Err(TokenizeError::Metadata {
                key: "tokenizer.ggml.token_type",
                message: format!("{} types for {} tokens", token_types.len(), tokens.len()),
            });
        }
        let scores = match array(md, "tokenizer.ggml.scores")? {
            Some(values) => values
                .iter()
                .map(|v| v.to_f32().map_err(|e| meta_err("tokenizer.ggml.scores", e)))
                .collect::<Result<Vec<_>, _>>()?,
            None => Vec::new(),
        };
        let extra_eos_ids = [
            u32_key(md, "tokenizer.ggml.eot_token_id")?,
            u32_key(md, "tokenizer.ggml.eom_token_id")?,
        ];
        let is_sentencepiece = model == "llama";
        Ok(Self {
            model,
            pre: string(md, "tokenizer.ggml.pre")?,
            merges: strings(md, "tokenizer.ggml.merges")?.unwrap_or_default(),
            scores,
            bos_id: u32_key(md, "tokenizer.ggml.bos_token_id")?,
            eos_id: u32_key(md, "tokenizer.ggml.eos_token_id")?,
            extra_eos_ids: extra_eos_ids.into_iter().flatten().collect(),
            unk_id: u32_key(md, "tokenizer.ggml.unknown_token_id")?,
            // llama.cpp's defaults when the keys are absent: SentencePiece vocabularies add BOS.
            add_bos: bool_key(md, "tokenizer.ggml.add_bos_token")?.unwrap_or(is_sentencepiece),
            add_eos: bool_key(md, "tokenizer.ggml.add_eos_token")?.unwrap_or(false),
            add_space_prefix: bool_key(md, "tokenizer.ggml.add_space_prefix")?
                .unwrap_or(is_sentencepiece),
            chat_template: string(md, "tokenizer.chat_template")?,
            tokens,
            token_types,
        })
    }
}

/// candle's header reader, with its panics turned into errors. It divides by
/// `general.alignment` unchecked, so a GGUF with alignment 0 panicked the router at start-up
/// ("attempt to divide by zero", found by tests_malformed.rs); a parser of untrusted bytes in
/// a dependency gets the net for whatever else it may hide. The panic hook still logs it.
fn read_content(file: &mut std::fs::File) -> Result<Content, String> {
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(file)));
    match read {
        Ok(content) => content.map_err(|e| e.to_string()),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let hint = match msg.contains("divide by zero") {
                true => " (is general.alignment 0?)",
                false => "",
            };
            Err(format!(
                "malformed GGUF header: the reader failed with `{msg}`{hint}"
            ))
        }
    }
}

fn meta_err(key: &'static str, err: candle_core::Error) -> TokenizeError {
    TokenizeError::Metadata {
        key,
        message: err.to_string(),
    }
}

fn array<'a>(
    md: &'a HashMap<String, Value>,
    key: &'static str,
) -> Result<Option<&'a Vec<Value>>, TokenizeError> {
    md.get(key)
        .map(|v| v.to_vec().map_err(|e| meta_err(key, e)))
        .transpose()
}

fn strings(
    md: &HashMap<String, Value>,
    key: &'static str,
) -> Result<Option<Vec<String>>, TokenizeError> {
    array(md, key)?
        .map(|values| {
            values
                .iter()
                .map(|v| v.to_string().cloned().map_err(|e| meta_err(key, e)))
                .collect()
        })
        .transpose()
}

fn string(md: &HashMap<String, Value>, key: &'static str) -> Result<Option<String>, TokenizeError> {
    md.get(key)
        .map(|v| v.to_string().cloned().map_err(|e| meta_err(key, e)))
        .transpose()
}

fn bool_key(md: &HashMap<String, Value>, key: &'static str) -> Result<Option<bool>, TokenizeError> {
    md.get(key)
        .map(|v| v.to_bool().map_err(|e| meta_err(key, e)))
        .transpose()
}

/// Token ids are stored as u32 by llama.cpp, but some converters write i32/u64.
fn u32_key(md: &HashMap<String, Value>, key: &'static str) -> Result<Option<u32>, TokenizeError> {
    let Some(value) = md.get(key) else {
        return Ok(None);
    };
    let wide: i64 = match value {
        Value::U32(v) => i64::from(*v),
        Value::I32(v) => i64::from(*v),
        Value::U64(v) => i64::try_from(*v).unwrap_or(-1),
        Value::I64(v) => *v,
        Value::U16(v) => i64::from(*v),
        Value::I16(v) => i64::from(*v),
        other => {
            return Err(TokenizeError::Metadata {
                key,
                message: format!("expected an integer, found {:?}", other.value_type()),
            });
        }
    };
    // llama.cpp writes -1 (as i32) for "no such token".
    Ok(u32::try_from(wide).ok())
}
