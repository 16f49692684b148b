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
        // A prompt may hold ids only the (padded) model has; like generated ones, no text.
        let known = prompt_ids.iter().copied().filter(|id| tokenizer.knows(*id));
        let mut context: Vec<u32> = known.rev().take(PROMPT_CONTEXT_TOKENS).collect();
        context.reverse();
        Self {
            tokenizer,
            skip_special_tokens,
            read_offset: context.len(),
            ids: context,
            prefix_offset: 0,
        }
    }

    /// The text this token completes; empty while a multi-byte char is incomplete.
    ///
    /// A token the tokenizer does not know is empty text, as in vLLM and TGI: models pad
    /// their embedding rows past the tokenizer's ids (Qwen2: 151,936 rows, ~151,665 ids), and
    /// such a row can be sampled (dummy weights, a bad fine-tune). It is left out of the
    /// window, so the bytes of a char it interrupts still join up and the next token's text
    /// is decoded with the same left context as without it.
    pub fn push(&mut self, token_id: u32) -> Result<String, TokenizeError> {
        if !self.tokenizer.knows(token_id) {
            return Ok(String::new());
        }
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{smollm2, tiny_tokenizer};
    use super::*;

    /// Pushes every id, checking no piece carries a broken char; returns the pieces.
    fn stream(tok: &ModelTokenizer, prompt: &[u32], ids: &[u32], skip: bool) -> Vec<String> {
        let mut decoder = tok.incremental_decoder(prompt, skip);
        let mut pieces: Vec<String> = ids
            .iter()
            .map(|id| decoder.push(*id).expect("push"))
            .collect();
        pieces.push(decoder.flush().expect("flush"));
        pieces
    }

    #[test]
    fn concatenated_pushes_equal_full_decode() {
        let tok = smollm2();
        let texts = [
            "Hello world, this is a test.",
            "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇰🇷 done",
            "日本語のテキスト 中文分词测试，标点。",
            "<|im_start|>assistant\nThe capital is Seoul.<|im_end|>",
            "  spaces\n\nand\ttabs  ",
        ];
        for text in texts {
            let ids = tok.encode(text, false).expect("encode");
            for skip in [false, true] {
                let pieces = stream(tok, &[], &ids, skip);
                assert_eq!(
                    pieces.concat(),
                    tok.decode(&ids, skip).expect("decode"),
                    "{text:?}"
                );
                assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
            }
        }
    }

    #[test]
    fn multibyte_chars_split_over_byte_tokens_are_held_back() {
        let tok = smollm2();
        // "😀" is four bytes; SmolLM2 spells it with several byte-level tokens.
        let ids = tok.encode("😀", false).expect("encode");
        assert!(ids.len() > 1, "{ids:?}");
        let pieces = stream(tok, &[], &ids, false);
        let (last, held) = pieces[..ids.len()].split_last().expect("non-empty");
        assert!(held.iter().all(String::is_empty), "{pieces:?}");
        assert_eq!(last, "😀");
        // CJK: three bytes per char.
        let ids = tok.encode("語", false).expect("encode");
        assert_eq!(stream(tok, &[], &ids, false).concat(), "語");
    }

    #[test]
    fn prompt_context_keeps_leading_spaces() {
        let tok = smollm2();
        let prompt = tok.encode(
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            false,
        );
        let prompt = prompt.expect("encode");
        let ids = tok.encode(" Hello world", false).expect("encode");
        let pieces = stream(tok, &prompt, &ids, true);
        assert_eq!(pieces.concat(), " Hello world");
        assert_eq!(pieces[0], " Hello");
    }

    #[test]
    fn flush_emits_a_dangling_partial_char_as_replacement() {
        let tok = smollm2();
        let ids = tok.encode("a😀", false).expect("encode");
        let mut decoder = tok.incremental_decoder(&[], false);
        let mut out = String::new();
        for id in &ids[..ids.len() - 1] {
            out.push_str(&decoder.push(*id).expect("push"));
        }
        assert_eq!(out, "a");
        assert_eq!(decoder.flush().expect("flush"), "\u{FFFD}");
        assert_eq!(decoder.flush().expect("flush"), "");
    }

    #[test]
    fn long_generation_keeps_a_small_window() {
        let tok = tiny_tokenizer();
        let hello = tok.token_to_id("hello").expect("token");
        let world = tok.token_to_id("Ġworld").expect("token");
        let mut decoder = tok.incremental_decoder(&[1, 1, 1, 1, 1, 1, 1, 1], true);
        let mut out = String::new();
        for _ in 0..1000 {
            out.push_str(&decoder.push(hello).expect("push"));
            out.push_str(&decoder.push(world).expect("push"));
        }
        assert_eq!(out, "hello world".repeat(1000));
        assert!(
            decoder.ids.len() <= 4,
            "window grew to {}",
            decoder.ids.len()
        );
    }

    #[test]
    fn unknown_generated_ids_are_empty_text() {
        let tok = smollm2();
        let unknown = u32::try_from(tok.vocab_size()).expect("vocab fits u32");
        // Between words, and in the middle of the byte tokens of one four-byte char.
        let ids = tok.encode("Hi 😀 there", false).expect("encode");
        let emoji = tok.encode("Hi 😀", false).expect("encode").len() - 1;
        let mut with_unknown = ids.clone();
        with_unknown.insert(emoji, unknown);
        with_unknown.insert(1, unknown + 1000);
        with_unknown.push(u32::MAX);
        let pieces = stream(tok, &[], &with_unknown, false);
        assert_eq!(pieces.concat(), "Hi 😀 there");
        assert_eq!(pieces[1], "", "{pieces:?}");
        assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
        // The tokenizer-level decode still rejects them (client-given ids must be a 400).
        assert!(matches!(
            tok.decode(&with_unknown, false),
            Err(TokenizeError::InvalidId { .. })
        ));
    }
}
