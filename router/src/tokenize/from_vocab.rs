//! Builds a `tokenizers::Tokenizer` from a GGUF vocabulary.

use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::{AddedToken, Tokenizer};

use super::error::TokenizeError;
use super::gguf_vocab::{
    GgufVocab, TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_USER_DEFINED,
};
use super::model_tokenizer::{AddSpecial, Parts};
use super::pre_split::byte_level_pre_tokenizer;
use super::token_bytes::all_token_bytes;

/// How the vocabulary maps text to tokens; decides how raw token bytes are recovered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VocabKind {
    /// GPT-2 style: every byte is a printable char in the vocabulary.
    ByteLevel,
    /// SentencePiece: `▁` for spaces, `<0xNN>` byte-fallback tokens.
    SentencePiece,
}

/// The tokenizer, token bytes and special tokens a GGUF vocabulary describes.
pub(super) fn gguf_parts(vocab: &GgufVocab) -> Result<Parts, TokenizeError> {
    let (tokenizer, kind) = build_tokenizer(vocab)?;
    let named = |id: Option<u32>| {
        let id = id?;
        let text = vocab.tokens.get(usize::try_from(id).ok()?)?;
        Some((id, text.clone()))
    };
    Ok(Parts {
        tokenizer,
        token_bytes: all_token_bytes(&vocab.tokens, &vocab.token_types, kind),
        bos: named(vocab.bos_id),
        eos: named(vocab.eos_id),
        extra_eos_ids: vocab.extra_eos_ids.clone(),
        add_special: AddSpecial::Explicit {
            bos: vocab.add_bos,
            eos: vocab.add_eos,
        },
        chat_template: vocab.chat_template.clone(),
    })
}

/// Builds the tokenizer and reports which kind of vocabulary it is.
pub fn build_tokenizer(vocab: &GgufVocab) -> Result<(Tokenizer, VocabKind), TokenizeError> {
    // An empty vocabulary built a tokenizer of size 0 that failed (or returned nothing) on
    // every request instead of failing at start-up (found by tests_malformed.rs).
    if vocab.tokens.is_empty() {
        return Err(TokenizeError::Metadata {
            key: "tokenizer.ggml.tokens",
            message: "empty vocabulary".into(),
        });
    }
    let (mut tokenizer, kind) = match vocab.model.as_str() {
        "gpt2" => (byte_level_bpe(vocab)?, VocabKind::ByteLevel),
        "llama" => (
            super::sentencepiece::sentencepiece_bpe(vocab)?,
            VocabKind::SentencePiece,
        ),
        other => {
            return Err(TokenizeError::Unsupported(format!(
                "GGUF tokenizer model `{other}`"
            )));
        }
    };
    add_special_tokens(&mut tokenizer, vocab)?;
    Ok((tokenizer, kind))
}

/// GGUF merges are "left right" strings.
pub fn parse_merges(merges: &[String]) -> Result<Merges, TokenizeError> {
    merges
        .iter()
        .map(|merge| {
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_owned(), b.to_owned()))
                .ok_or_else(|| TokenizeError::Metadata {
                    key: "tokenizer.ggml.merges",
                    message: format!("merge `{merge}` is not two space-separated parts"),
                })
        })
        .collect()
}

fn byte_level_bpe(vocab: &GgufVocab) -> Result<Tokenizer, TokenizeError> {
    let bpe = BPE::builder()
        .vocab_and_merges(token_ids(vocab), parse_merges(&vocab.merges)?)
        .build()?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(byte_level_pre_tokenizer(vocab.pre.as_deref())?));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::new(
        false, true, true,
    ))));
    Ok(tokenizer)
}

/// token -> id; on a duplicated token string the first id wins, as in llama.cpp.
pub fn token_ids(vocab: &GgufVocab) -> Vocab {
    let mut map = Vocab::default();
    for (id, token) in vocab.tokens.iter().enumerate() {
        if let Ok(id) = u32::try_from(id) {
            map.entry(token.clone()).or_insert(id);
        }
    }
    map
}

/// Control (and unknown) tokens become special added tokens (matched whole in text, dropped by
/// skip_special_tokens); user-defined ones are matched whole but kept on decode.
fn add_special_tokens(tokenizer: &mut Tokenizer, vocab: &GgufVocab) -> Result<(), TokenizeError> {
    let mut special = Vec::new();
    let mut user = Vec::new();
    for (token, ty) in vocab.tokens.iter().zip(&vocab.token_types) {
        match *ty {
            TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN => {
                special.push(AddedToken::from(token.clone(), true))
            }
            TOKEN_TYPE_USER_DEFINED => user.push(AddedToken::from(token.clone(), false)),
            _ => {}
        }
    }
    tokenizer.add_special_tokens(special)?;
    tokenizer.add_tokens(user)?;
    Ok(())
}
