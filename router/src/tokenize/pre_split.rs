//! Pre-tokenizers for byte-level BPE vocabularies, chosen by GGUF `tokenizer.ggml.pre`.
//!
//! The split must be the one the vocabulary was trained with, or merges apply across
//! boundaries the model never saw; these mirror the models' HF `tokenizer.json` files.

use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::tokenizer::SplitDelimiterBehavior;

use super::error::TokenizeError;

/// Llama-3's split: case-insensitive contractions, letters, numbers in groups of up to three.
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's split: as Llama-3 but every digit on its own.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer for a `gpt2`-model GGUF with the given `tokenizer.ggml.pre`.
pub fn byte_level_pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizerWrapper, TokenizeError> {
    let gpt2_split = || ByteLevel::new(false, true, true);
    let wrapper = match pre.unwrap_or("default") {
        // SmolLM / StarCoder: each digit alone, then GPT-2's regex.
        "smollm" | "starcoder" | "refact" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(gpt2_split()),
        ])),
        "llama-bpe" | "llama3" | "llama-v3" => regex_then_bytes(LLAMA3_PATTERN)?,
        "qwen2" | "qwen" => regex_then_bytes(QWEN2_PATTERN)?,
        "default" | "gpt2" | "gpt-2" => PreTokenizerWrapper::ByteLevel(gpt2_split()),
        other => {
            return Err(TokenizeError::Unsupported(format!(
                "byte-level BPE pre-tokenizer `{other}`"
            )));
        }
    };
    Ok(wrapper)
}

fn regex_then_bytes(pattern: &str) -> Result<PreTokenizerWrapper, TokenizeError> {
    let split = Split::new(
        SplitPattern::Regex(pattern.to_owned()),
        SplitDelimiterBehavior::Isolated,
        false,
    )?;
    Ok(PreTokenizerWrapper::Sequence(Sequence::new(vec![
        PreTokenizerWrapper::Split(split),
        PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, false)),
    ])))
}
