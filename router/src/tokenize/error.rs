//! Typed errors of the tokenization module.

/// Failure to build or run the tokenizer.
#[derive(Debug, thiserror::Error)]
pub enum TokenizeError {
    /// The GGUF file could not be opened or its metadata parsed.
    #[error("reading GGUF metadata from {path}: {message}")]
    Gguf { path: String, message: String },
    /// A metadata key the tokenizer needs is absent or has the wrong type.
    #[error("GGUF metadata key `{key}`: {message}")]
    Metadata { key: &'static str, message: String },
    /// The vocabulary kind (or one of its parts) is not supported.
    #[error("unsupported tokenizer: {0}")]
    Unsupported(String),
    /// The `tokenizers` crate rejected the vocabulary or an encode/decode call.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A token id outside the vocabulary.
    #[error("token id {id} is outside the vocabulary (size {vocab_size})")]
    InvalidId { id: u32, vocab_size: usize },
}

impl From<tokenizers::Error> for TokenizeError {
    fn from(err: tokenizers::Error) -> Self {
        Self::Tokenizer(err.to_string())
    }
}

/// Failure to render a chat template.
#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    /// The template's own `raise_exception(...)` message (a user error, e.g. bad role order).
    #[error("{0}")]
    Raised(String),
    /// The template did not parse or failed while rendering.
    #[error("chat template error: {0}")]
    Render(String),
    /// The model has no chat template.
    #[error("the model has no chat template")]
    Missing,
}
