//! SentencePiece (`llama` GGUF model) vocabularies: Llama-2, Mistral.

use tokenizers::Tokenizer;

use super::error::TokenizeError;
use super::gguf_vocab::GgufVocab;

/// Builds a tokenizer for a SentencePiece GGUF vocabulary.
pub fn sentencepiece_bpe(_vocab: &GgufVocab) -> Result<Tokenizer, TokenizeError> {
    Err(TokenizeError::Unsupported(
        "llama (sentencepiece) GGUF vocabulary".into(),
    ))
}
