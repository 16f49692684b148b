//! Turning logits into tokens, with vLLM's semantics: penalties (repetition, frequency,
//! presence) on a copy of the logits, then greedy argmax when temperature < 1e-5, else
//! temperature → top-k → top-p → min-p → one draw from the request's seeded RNG; logprobs are
//! the log-softmax of the raw logits.
//!
//! Everything is O(V) per step on typical settings (no full sort of the vocabulary), and
//! nothing here panics on what a request or a model produces: see [`Sampler::sample`].

mod config;
mod draw;
mod fastmath;
mod filter;
mod logprobs;
mod penalties;
mod sampler;
mod scratch;
mod select;

pub use config::{GREEDY_TEMPERATURE, MAX_TOP_LOGPROBS, SamplingConfig, SamplingError};
pub use sampler::Sampler;

/// The token chosen for one sequence in one step.
#[derive(Debug, Clone, PartialEq)]
pub struct SampledToken {
    pub token_id: u32,
    /// Present when the request asked for logprobs.
    pub logprobs: Option<TokenLogprobs>,
}

/// Log-probabilities under the model's raw distribution (before penalties and temperature).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprobs {
    /// Of the sampled token.
    pub logprob: f32,
    /// The `top_logprobs` most likely tokens, best first (ties to the lower id); fewer only
    /// when the vocabulary is smaller. May or may not include the sampled token.
    pub top: Vec<(u32, f32)>,
}

impl From<&TokenLogprobs> for pagedserve_proto::v1::Logprobs {
    fn from(lp: &TokenLogprobs) -> Self {
        Self {
            logprob: lp.logprob,
            top: lp
                .top
                .iter()
                .map(|&(token_id, logprob)| pagedserve_proto::v1::TokenLogprob {
                    token_id,
                    logprob,
                })
                .collect(),
        }
    }
}
