//! Pre-tokenizers for byte-level BPE vocabularies, chosen by GGUF `tokenizer.ggml.pre`.
//!
//! The split must be the one the vocabulary was trained with, or merges apply across
//! boundaries the model never saw. The patterns and the pre-type table follow
//! transformers' GGUF tokenizer builder (`GGUF_PRE_TOKENIZER_SPLITS`).

use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::tokenizer::SplitDelimiterBehavior;

use super::error::TokenizeError;

/// Llama-3: case-insensitive contractions, letters, numbers in groups of up to three.
const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2: as Llama-3 but every digit on its own.
const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen3.5: Qwen2 with combining marks kept inside words.
const QWEN35: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Mistral's tekken.
const TEKKEN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GPT-4o / Llama-4.
const GPT4O: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The split regex for a pre type, `None` for GPT-2's own.
fn split_pattern(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral" | "midm-2.0"
        | "lfm2" | "jina-v5-nano" | "dbrx" | "smaug-bpe" => LLAMA3,
        "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" => QWEN2,
        "qwen35" => QWEN35,
        "tekken" => TEKKEN,
        "gpt-4o" | "llama4" | "kanana2" | "talkie" | "minimax-m2" => GPT4O,
        _ => return None,
    })
}

/// The pre-tokenizer for a `gpt2`-model GGUF with the given `tokenizer.ggml.pre`.
pub fn byte_level_pre_tokenizer(pre: Option<&str>) -> Result<PreTokenizerWrapper, TokenizeError> {
    let gpt2 = || PreTokenizerWrapper::ByteLevel(ByteLevel::new(false, true, true));
    let pre = pre.unwrap_or("default");
    if let Some(pattern) = split_pattern(pre) {
        return regex_then_bytes(pattern);
    }
    Ok(match pre {
        // SmolLM's tokenizer.json: each digit alone, then GPT-2's regex. (Its vocabulary has
        // no multi-digit tokens, so this only matters for a space before a digit.)
        "smollm" | "starcoder" | "refact" => PreTokenizerWrapper::Sequence(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            gpt2(),
        ])),
        "default" | "gpt2" | "gpt-2" => gpt2(),
        other => {
            // transformers does the same; the split may differ from the model's own.
            tracing::warn!(
                pre = other,
                "unknown GGUF pre-tokenizer, splitting like GPT-2"
            );
            gpt2()
        }
    })
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

#[cfg(test)]
mod tests {
    use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer};

    use super::*;

    fn pieces(pre: &str, text: &str) -> Vec<String> {
        let pt = byte_level_pre_tokenizer(Some(pre)).expect("pre-tokenizer builds");
        let mut s = PreTokenizedString::from(text);
        pt.pre_tokenize(&mut s).expect("pre-tokenize");
        s.get_splits(OffsetReferential::Original, OffsetType::Byte)
            .into_iter()
            .map(|(piece, _, _)| piece.to_owned())
            .collect()
    }

    #[test]
    fn every_known_pattern_compiles() {
        for pre in [
            "llama-bpe",
            "qwen2",
            "qwen35",
            "tekken",
            "gpt-4o",
            "smollm",
            "gpt2",
            "x",
        ] {
            assert!(byte_level_pre_tokenizer(Some(pre)).is_ok(), "{pre}");
        }
    }

    #[test]
    fn splits_follow_the_pre_type() {
        // Llama-3 groups digits by three; Qwen2 and SmolLM split every digit.
        assert_eq!(pieces("llama-bpe", "12345"), ["123", "45"]);
        assert_eq!(pieces("qwen2", "12345"), ["1", "2", "3", "4", "5"]);
        assert_eq!(pieces("smollm", "a 12"), ["a", "Ġ", "1", "2"]);
        assert_eq!(pieces("gpt2", "a 12"), ["a", "Ġ12"]);
        assert_eq!(pieces("llama-bpe", "I'M here"), ["I", "'M", "Ġhere"]);
    }
}
