//! Errors of `pagedserve bench`: everything that stops a run before or after the requests.
//! Failures of single requests are not errors here; they are recorded in the results.

use std::path::PathBuf;

use pagedserve_router::tokenize::TokenizeError;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("could not read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("could not write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Dataset { path: PathBuf, message: String },
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizeError),
    #[error("could not load the tokenizer from {path}: {source}")]
    TokenizerLoad {
        path: PathBuf,
        source: TokenizeError,
    },
    #[error("{0}")]
    Fetch(String),
    #[error("invalid option: {0}")]
    Usage(String),
    #[error("{url}: {message}")]
    Server { url: String, message: String },
    #[error(
        "--base-url `{url}` is not a server address ({reason}); expected e.g. http://127.0.0.1:8000"
    )]
    BaseUrl { url: String, reason: String },
    #[error("no prompt of the dataset passed the filters; nothing to send")]
    NoRequests,
    #[error("{path} is not a benchmark result: {message}")]
    ResultFile { path: PathBuf, message: String },
    #[error("could not start the HTTP client: {0}")]
    Client(reqwest::Error),
}

pub type Result<T, E = BenchError> = std::result::Result<T, E>;
