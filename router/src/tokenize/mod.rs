//! Tokenizer, chat templates, incremental detokenization and stop strings.
//!
//! [`ModelTokenizer`] is built from the model's GGUF metadata (vocabulary, merges, special
//! tokens, chat template; `from_gguf`) or from a HF model directory (`from_hf_dir`), and is
//! cheap to clone and share. Each generated sequence gets its own [`IncrementalDecoder`]
//! (token ids -> text that never ends in a broken UTF-8 char) and [`StopMatcher`]
//! (text -> text before the first stop string). Chat templates render in a minijinja
//! environment that behaves like the jinja2 one transformers uses.
//!
//! The expectations in `testdata/` come from transformers; `testdata/make_expected.py`
//! regenerates them.

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
mod tests_malformed;
#[cfg(test)]
mod tests_real_templates;
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
