//! Benchmark prompts: ShareGPT conversations, seeded random token strings, or a JSONL file.

pub mod jsonl;
pub mod random;
pub mod sharegpt;

/// One request to send: the prompt, its length in tokens of the served model's tokenizer,
/// and how many tokens to ask for (`max_tokens`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BenchRequest {
    pub prompt: String,
    pub prompt_len: usize,
    pub output_len: usize,
}
