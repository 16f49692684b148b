//! `ModelTokenizer`: the model's tokenizer, special tokens and chat template in one handle.

use std::path::Path;
use std::sync::Arc;

use tokenizers::Tokenizer;

use super::chat_template::{ChatMessage, ChatTemplate};
use super::error::{TemplateError, TokenizeError};
use super::from_vocab::gguf_parts;
use super::gguf_vocab::GgufVocab;
use super::hf_files::hf_parts;
use super::incremental::IncrementalDecoder;

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
    add_special: AddSpecial,
    chat_template: Option<ChatTemplate>,
}

/// How `encode(.., add_special_tokens = true)` adds BOS/EOS.
#[derive(Debug, Clone, Copy)]
pub(super) enum AddSpecial {
    /// GGUF: `tokenizer.ggml.add_bos_token` / `add_eos_token`.
    Explicit { bos: bool, eos: bool },
    /// tokenizer.json: its post-processor (e.g. Llama-3's `<|begin_of_text|>` template).
    PostProcessor,
}

/// Everything a `ModelTokenizer` is made of, from a GGUF or from HF tokenizer files.
pub(super) struct Parts {
    pub tokenizer: Tokenizer,
    pub token_bytes: Vec<Vec<u8>>,
    pub bos: Option<(u32, String)>,
    pub eos: Option<(u32, String)>,
    /// Besides EOS, ids that also end generation (end-of-turn tokens).
    pub extra_eos_ids: Vec<u32>,
    pub add_special: AddSpecial,
    pub chat_template: Option<String>,
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
        Ok(Self::from_parts(gguf_parts(vocab)?))
    }

    /// A HF model directory: `tokenizer.json`, and when present `tokenizer_config.json`
    /// (special tokens, chat template), `chat_template.jinja`, `generation_config.json`.
    pub fn from_hf_dir(dir: &Path) -> Result<Self, TokenizeError> {
        Ok(Self::from_parts(hf_parts(dir)?))
    }

    fn from_parts(parts: Parts) -> Self {
        let vocab_size = parts.token_bytes.len();
        let mut eos_ids: Vec<u32> = parts.eos.iter().map(|(id, _)| *id).collect();
        for id in parts.extra_eos_ids {
            if !eos_ids.contains(&id) && usize::try_from(id).is_ok_and(|i| i < vocab_size) {
                eos_ids.push(id);
            }
        }
        let name = |t: &Option<(u32, String)>| t.as_ref().map(|(_, text)| text.clone());
        let chat_template = parts
            .chat_template
            .map(|source| ChatTemplate::new(source, name(&parts.bos), name(&parts.eos)));
        Self {
            inner: Arc::new(Inner {
                tokenizer: parts.tokenizer,
                token_bytes: parts.token_bytes,
                bos: parts.bos,
                eos: parts.eos,
                eos_ids,
                add_special: parts.add_special,
                chat_template,
            }),
        }
    }

    /// Special-token text like `<|im_start|>` in `text` maps to its id; with
    /// `add_special_tokens`, BOS/EOS are added as the model's metadata asks.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizeError> {
        let (bos, eos) = match self.inner.add_special {
            AddSpecial::Explicit { bos, eos } => (bos, eos),
            AddSpecial::PostProcessor => {
                let encoding = self.inner.tokenizer.encode_fast(text, add_special_tokens)?;
                return Ok(encoding.get_ids().to_vec());
            }
        };
        let encoding = self.inner.tokenizer.encode_fast(text, false)?;
        let body = encoding.get_ids();
        let mut ids = Vec::with_capacity(body.len() + 2);
        if add_special_tokens && bos {
            ids.extend(self.inner.bos.as_ref().map(|(id, _)| *id));
        }
        ids.extend_from_slice(body);
        if add_special_tokens && eos {
            ids.extend(self.inner.eos.as_ref().map(|(id, _)| *id));
        }
        Ok(ids)
    }

    /// Text of `ids`; invalid UTF-8 (a cut multi-byte char) becomes U+FFFD.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizeError> {
        self.check_ids(ids)?;
        Ok(self.inner.tokenizer.decode(ids, skip_special_tokens)?)
    }

    /// Like `decode`, but an id the tokenizer does not know (one only a padded model has) is
    /// empty text, as when the model generates it.
    pub fn decode_known(
        &self,
        ids: &[u32],
        skip_special_tokens: bool,
    ) -> Result<String, TokenizeError> {
        let known: Vec<u32> = ids.iter().copied().filter(|id| self.knows(*id)).collect();
        self.decode(&known, skip_special_tokens)
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

    /// Whether `id` is one of the tokenizer's ids (the model may have more, e.g. padding).
    pub fn knows(&self, id: u32) -> bool {
        self.token_bytes_ref(id).is_some()
    }

    fn check_ids(&self, ids: &[u32]) -> Result<(), TokenizeError> {
        let vocab_size = self.vocab_size();
        match ids.iter().find(|id| !self.knows(**id)) {
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
