//! Tokenizer, chat templates, incremental detokenization and stop strings.
//!
//! [`ModelTokenizer`] is built from the model's GGUF metadata (vocabulary, merges,
//! special tokens, chat template) and shared via `Arc`; each request gets its own
//! [`IncrementalDecoder`] and [`StopMatcher`].

mod chat_template;
mod error;
mod from_vocab;
mod gguf_vocab;
mod hf_files;
mod incremental;
mod model_tokenizer;
mod pre_split;
mod pycompat;
mod sentencepiece;
mod stop;
mod template_env;
mod template_json;
mod token_bytes;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests_chat;
#[cfg(test)]
mod tests_hf_files;
#[cfg(test)]
mod tests_sentencepiece;
#[cfg(test)]
mod tests_shard_fixture;
#[cfg(test)]
mod tests_tokenizer;

pub use chat_template::{ChatMessage, ChatTemplate};
pub use error::{TemplateError, TokenizeError};
pub use gguf_vocab::GgufVocab;
pub use incremental::IncrementalDecoder;
pub use model_tokenizer::ModelTokenizer;
pub use stop::{StopMatcher, StopOutcome};
