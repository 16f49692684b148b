//! SentencePiece (`llama` GGUF model) vocabularies: Llama-2, Mistral, ...
//!
//! Built the way transformers builds them from a GGUF (`LlamaTokenizer`): BPE with byte
//! fallback (`<0xNN>` tokens), `▁` for spaces with one prepended to the first piece of
//! text, and merges recovered from the vocabulary ranked by token score when the file
//! has none (`generate_merges`).

use std::cmp::Ordering;

use tokenizers::Tokenizer;
use tokenizers::decoders::DecoderWrapper;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Merges, Vocab};
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};

use super::error::TokenizeError;
use super::from_vocab::{parse_merges, token_ids};
use super::gguf_vocab::GgufVocab;

const SPACE: char = '\u{2581}';

/// Builds a tokenizer for a SentencePiece GGUF vocabulary.
pub fn sentencepiece_bpe(vocab: &GgufVocab) -> Result<Tokenizer, TokenizeError> {
    let ids = token_ids(vocab);
    let merges = if vocab.merges.is_empty() {
        merges_from_scores(vocab, &ids)?
    } else {
        parse_merges(&vocab.merges)?
    };
    let mut builder = BPE::builder()
        .vocab_and_merges(ids, merges)
        .byte_fallback(true)
        .fuse_unk(true);
    let unk = vocab
        .unk_id
        .and_then(|id| vocab.tokens.get(usize::try_from(id).ok()?));
    if let Some(unk) = unk {
        builder = builder.unk_token(unk.clone());
    }
    let mut tokenizer = Tokenizer::new(builder.build()?);
    let prepend = if vocab.add_space_prefix {
        PrependScheme::First
    } else {
        PrependScheme::Never
    };
    tokenizer.with_pre_tokenizer(Some(PreTokenizerWrapper::Metaspace(Metaspace::new(
        SPACE, prepend, false,
    ))));
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new(SPACE.to_string(), " ")?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if vocab.add_space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(Sequence::new(decoders)));
    Ok(tokenizer)
}

/// transformers' `generate_merges(vocab, scores)`: every split of a token into two
/// vocabulary tokens is a merge, ranked by the whole token's score (best first), then by
/// longer left and right parts; ties keep vocabulary order.
fn merges_from_scores(vocab: &GgufVocab, ids: &Vocab) -> Result<Merges, TokenizeError> {
    if vocab.scores.len() != vocab.tokens.len() {
        return Err(TokenizeError::Metadata {
            key: "tokenizer.ggml.scores",
            message: format!(
                "{} scores for {} tokens (needed to rebuild merges)",
                vocab.scores.len(),
                vocab.tokens.len()
            ),
        });
    }
    let mut ranked: Vec<(f32, &str, &str)> = Vec::new();
    for (token, score) in vocab.tokens.iter().zip(&vocab.scores) {
        let mut local: Vec<(u32, u32, &str, &str)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (left, right) = token.split_at(at);
                Some((*ids.get(left)?, *ids.get(right)?, left, right))
            })
            .collect();
        local.sort_by_key(|(l, r, _, _)| (*l, *r));
        ranked.extend(local.into_iter().map(|(_, _, l, r)| (*score, l, r)));
    }
    // Stable sort, descending, as Python's sorted(..., reverse=True).
    ranked.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(Ordering::Equal)
            .then_with(|| b.1.chars().count().cmp(&a.1.chars().count()))
            .then_with(|| b.2.chars().count().cmp(&a.2.chars().count()))
    });
    Ok(ranked
        .into_iter()
        .map(|(_, l, r)| (l.to_owned(), r.to_owned()))
        .collect())
}
