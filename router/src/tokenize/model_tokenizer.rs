//! `ModelTokenizer`: the model's tokenizer, special tokens and chat template in one handle.

use std::path::Path;
use std::sync::Arc;

use tokenizers::Tokenizer;

use super::chat_template::{ChatMessage, ChatTemplate};
use super::error::{TemplateError, TokenizeError};
use super::from_vocab::build_tokenizer;
use super::gguf_vocab::GgufVocab;
use super::incremental::IncrementalDecoder;
use super::token_bytes::all_token_bytes;

/// The model's tokenizer. Cheap to clone (one `Arc` inside); `Send + Sync`.
#[derive(Clone)]
pub struct ModelTokenizer {
    inner: Arc<Inner>,
}

struct Inner {
    tokenizer: Tokenizer,
    /// Raw bytes of every vocabulary token, by id.
    token_bytes: Vec<Vec<u8>>,
    bos: Option<(u32, String)>,
    eos: Option<(u32, String)>,
    eos_ids: Vec<u32>,
    add_bos: bool,
    add_eos: bool,
    chat_template: Option<ChatTemplate>,
}

impl std::fmt::Debug for ModelTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos", &self.inner.bos)
            .field("eos", &self.inner.eos)
            .field("has_chat_template", &self.has_chat_template())
            .finish()
    }
}

impl ModelTokenizer {
    /// Reads only the GGUF metadata (not the tensor data).
    pub fn from_gguf(path: &Path) -> Result<Self, TokenizeError> {
        Self::from_vocab(&GgufVocab::read(path)?)
    }

    /// Builds the tokenizer from an already-read GGUF vocabulary.
    pub fn from_vocab(vocab: &GgufVocab) -> Result<Self, TokenizeError> {
        let (tokenizer, kind) = build_tokenizer(vocab)?;
        let named = |id: Option<u32>| {
            let id = id?;
            let text = vocab.tokens.get(usize::try_from(id).ok()?)?;
            Some((id, text.clone()))
        };
        let (bos, eos) = (named(vocab.bos_id), named(vocab.eos_id));
        let mut eos_ids: Vec<u32> = eos.iter().map(|(id, _)| *id).collect();
        for id in &vocab.extra_eos_ids {
            if !eos_ids.contains(id) && usize::try_from(*id).is_ok_and(|i| i < vocab.tokens.len()) {
                eos_ids.push(*id);
            }
        }
        let chat_template = vocab.chat_template.as_ref().map(|source| {
            ChatTemplate::new(
                source.clone(),
                bos.as_ref().map(|(_, t)| t.clone()),
                eos.as_ref().map(|(_, t)| t.clone()),
            )
        });
        Ok(Self {
            inner: Arc::new(Inner {
                token_bytes: all_token_bytes(vocab, kind),
                tokenizer,
                bos,
                eos,
                eos_ids,
                add_bos: vocab.add_bos,
                add_eos: vocab.add_eos,
                chat_template,
            }),
        })
    }

    /// Special-token text like `<|im_start|>` in `text` maps to its id; with
    /// `add_special_tokens`, BOS/EOS are added as the model's metadata asks.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizeError> {
        let encoding = self.inner.tokenizer.encode_fast(text, false)?;
        let body = encoding.get_ids();
        let mut ids = Vec::with_capacity(body.len() + 2);
        if add_special_tokens && self.inner.add_bos {
            ids.extend(self.inner.bos.as_ref().map(|(id, _)| *id));
        }
        ids.extend_from_slice(body);
        if add_special_tokens && self.inner.add_eos {
            ids.extend(self.inner.eos.as_ref().map(|(id, _)| *id));
        }
        Ok(ids)
    }

    /// Text of `ids`; invalid UTF-8 (a cut multi-byte char) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizeError> {
        self.check_ids(ids)?;
        Ok(self.inner.tokenizer.decode(ids, skip_special_tokens)?)
    }

    /// Number of token ids (the model's vocabulary, special tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.token_bytes.len()
    }

    /// The decoded text of the single token (vLLM-style logprobs `token`), e.g. " Paris";
    /// a token that is part of a multi-byte char shows as U+FFFD.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.token_bytes_ref(id)
            .map(|bytes| String::from_utf8_lossy(bytes).into_owned())
    }

    /// The vocabulary entry itself, e.g. "ĠParis".
    pub fn vocab_token(&self, id: u32) -> Option<String> {
        self.inner.tokenizer.id_to_token(id)
    }

    /// The id of an exact vocabulary entry or special token, e.g. "<|im_end|>".
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.tokenizer.token_to_id(token)
    }

    /// The token's raw UTF-8 bytes (OpenAI logprobs `bytes`); may be part of a char.
    pub fn token_bytes(&self, id: u32) -> Option<Vec<u8>> {
        self.token_bytes_ref(id).map(<[u8]>::to_vec)
    }

    pub fn bos_token(&self) -> Option<&str> {
        self.inner.bos.as_ref().map(|(_, t)| t.as_str())
    }

    pub fn eos_token(&self) -> Option<&str> {
        self.inner.eos.as_ref().map(|(_, t)| t.as_str())
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.inner.bos.as_ref().map(|(id, _)| *id)
    }

    /// Ids that end generation: EOS plus end-of-turn ids the metadata names.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.inner.eos_ids
    }

    pub fn has_chat_template(&self) -> bool {
        self.inner.chat_template.is_some()
    }

    /// Renders the model's chat template HF-style; the result already holds any BOS the
    /// template writes, so encode it with `add_special_tokens = false`.
    pub fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<String, TemplateError> {
        self.inner
            .chat_template
            .as_ref()
            .ok_or(TemplateError::Missing)?
            .render(messages, add_generation_prompt)
    }

    /// A streaming detokenizer; `prompt_ids` give it the left context of the first token.
    pub fn incremental_decoder(
        &self,
        prompt_ids: &[u32],
        skip_special_tokens: bool,
    ) -> IncrementalDecoder {
        IncrementalDecoder::new(self.clone(), prompt_ids, skip_special_tokens)
    }

    pub(crate) fn check_ids(&self, ids: &[u32]) -> Result<(), TokenizeError> {
        let vocab_size = self.vocab_size();
        match ids.iter().find(|id| self.token_bytes_ref(**id).is_none()) {
            Some(id) => Err(TokenizeError::InvalidId {
                id: *id,
                vocab_size,
            }),
            None => Ok(()),
        }
    }

    fn token_bytes_ref(&self, id: u32) -> Option<&[u8]> {
        let index = usize::try_from(id).ok()?;
        self.inner.token_bytes.get(index).map(Vec::as_slice)
    }
}
