//! Streaming detokenization that never emits a broken UTF-8 sequence.
//!
//! The prefix-offset/read-offset method (TGI, vLLM): decode a small window of already
//! emitted tokens together with the new ones and emit only the new suffix. Decoding
//! with left context keeps decoders that depend on it (leading-space stripping,
//! byte fallback) right, and a suffix ending in U+FFFD is held back until the bytes
//! that complete the char arrive.

use super::error::TokenizeError;
use super::model_tokenizer::ModelTokenizer;

/// Prompt tokens kept as left context for the first generated token (vLLM uses 5).
const PROMPT_CONTEXT_TOKENS: usize = 5;

/// Turns generated token ids into text pieces, one `push` per token.
pub struct IncrementalDecoder {
    tokenizer: ModelTokenizer,
    skip_special_tokens: bool,
    /// Context tokens plus tokens not yet fully emitted.
    ids: Vec<u32>,
    /// `ids[prefix_offset..read_offset]` is the emitted context window.
    prefix_offset: usize,
    /// `ids[read_offset..]` is not emitted yet.
    read_offset: usize,
}

impl IncrementalDecoder {
    pub(crate) fn new(
        tokenizer: ModelTokenizer,
        prompt_ids: &[u32],
        skip_special_tokens: bool,
    ) -> Self {
        let context = &prompt_ids[prompt_ids.len().saturating_sub(PROMPT_CONTEXT_TOKENS)..];
        Self {
            tokenizer,
            skip_special_tokens,
            ids: context.to_vec(),
            prefix_offset: 0,
            read_offset: context.len(),
        }
    }

    /// The text this token completes; empty while a multi-byte char is incomplete.
    pub fn push(&mut self, token_id: u32) -> Result<String, TokenizeError> {
        self.tokenizer.check_ids(&[token_id])?;
        self.ids.push(token_id);
        let prefix_text = self.decode(self.prefix_offset, self.read_offset)?;
        let new_text = self.decode(self.prefix_offset, self.ids.len())?;
        if new_text.ends_with('\u{FFFD}') || new_text.len() <= prefix_text.len() {
            return Ok(String::new());
        }
        // Decoders may rewrite the window's start; only a clean extension is emitted.
        let Some(suffix) = new_text.get(prefix_text.len()..) else {
            return Ok(String::new());
        };
        if !new_text.starts_with(&prefix_text) {
            return Ok(String::new());
        }
        let suffix = suffix.to_owned();
        self.advance();
        Ok(suffix)
    }

    /// Whatever is held back (a dangling partial char comes out as U+FFFD).
    pub fn flush(&mut self) -> Result<String, TokenizeError> {
        if self.read_offset == self.ids.len() {
            return Ok(String::new());
        }
        let prefix_text = self.decode(self.prefix_offset, self.read_offset)?;
        let new_text = self.decode(self.prefix_offset, self.ids.len())?;
        let held = match new_text.get(prefix_text.len()..) {
            Some(suffix) if new_text.starts_with(&prefix_text) => suffix.to_owned(),
            _ => self.decode(self.read_offset, self.ids.len())?,
        };
        self.advance();
        Ok(held)
    }

    fn decode(&self, start: usize, end: usize) -> Result<String, TokenizeError> {
        self.tokenizer
            .decode(&self.ids[start..end], self.skip_special_tokens)
    }

    /// Everything pushed so far is emitted; the tokens of this emission become the context.
    fn advance(&mut self) {
        self.prefix_offset = self.read_offset;
        self.read_offset = self.ids.len();
        // Forget tokens left of the window so the buffer stays small on long generations.
        self.ids.drain(..self.prefix_offset);
        self.read_offset -= self.prefix_offset;
        self.prefix_offset = 0;
    }
}
