//! Turns OpenAI request parameters plus tokenized prompts into a checked
//! `GenerationRequest`, or an `ApiError` that names the offending parameter.

use pagedserve_proto::v1::{SamplingParams, StoppingCriteria};

use crate::api::types::{CommonParams, StopSpec};
use crate::error::ApiError;
use crate::generation_defaults::GenerationDefaults;

/// Largest `top_logprobs` (chat) / `logprobs` (completions) accepted, as vLLM.
pub const MAX_TOP_LOGPROBS: i64 = 20;

/// Most sequences (prompts × n) one request may start. Each costs the router a decoder, a
/// route and a channel, and the shard a queue entry; unbounded, a 10 KB request (2,400
/// one-token prompts, n = 128) started 300k sequences, whose submit and cancel alone held the
/// shard's engine thread (and so every other request on it) for minutes in a debug build.
pub const MAX_SEQUENCES_PER_REQUEST: usize = 4096;

/// Most stop strings per request, and bytes per stop string. OpenAI allows 4 strings and
/// vLLM any number; but every choice keeps its own copy of the list and checks each
/// generated token against every string and every held-back suffix (work per token up to
/// count × length²), so unbounded, one small request could make each of its thousands of
/// choices arbitrarily slow and large. 64 strings of 256 bytes (a long sentence, ~85 CJK
/// chars) is far past real use (`\n\n`, `</s>`, `Observation:`) and keeps that cost small.
pub const MAX_STOP_STRINGS: usize = 64;
pub const MAX_STOP_BYTES: usize = 256;

/// Facts about the deployment (and the endpoint) that bound a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_context: u32,
    /// Token ids a prompt or `stop_token_ids` may use ([`crate::AppState::vocab_size`]).
    pub vocab_size: usize,
    /// What the endpoint calls its prompt (`prompt`, `messages`), for the 400s about it.
    pub prompt_param: &'static str,
    pub max_n: u32,
    /// The model's generation_config.json sampling defaults, for what a request leaves out.
    pub defaults: GenerationDefaults,
}

/// A validated request: one group of `n` choices per prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationRequest {
    pub prompts: Vec<Vec<u32>>,
    /// Per prompt: its max new tokens (explicit, or what the context leaves).
    pub max_tokens: Vec<u32>,
    pub n: u32,
    pub sampling: SamplingParams,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    pub stop: Vec<String>,
    /// Some(k): return the sampled token's logprob and k alternatives.
    pub logprobs: Option<u32>,
    pub stream: bool,
    pub include_usage: bool,
    pub skip_special_tokens: bool,
}

impl GenerationRequest {
    /// Per-sequence stopping criteria for prompt `index`.
    pub fn stopping(&self, index: usize) -> StoppingCriteria {
        StoppingCriteria {
            max_tokens: self.max_tokens.get(index).copied().unwrap_or(1),
            stop_token_ids: self.stop_token_ids.clone(),
            ignore_eos: self.ignore_eos,
        }
    }
}

/// Checks the number of logprob alternatives asked for; `param` is the name the endpoint
/// gives it (chat: `top_logprobs`, completions: `logprobs`), so the 400 names what the
/// client sent.
pub fn validate_logprobs(param: &str, requested: Option<i64>) -> Result<Option<u32>, ApiError> {
    match requested {
        None => Ok(None),
        Some(k) if (0..=MAX_TOP_LOGPROBS).contains(&k) => Ok(Some(k as u32)),
        Some(k) => Err(ApiError::invalid_param(
            param,
            format!("{param} must be between 0 and {MAX_TOP_LOGPROBS}, got {k}."),
        )),
    }
}

/// Validates everything; `logprobs` is the checked number of alternatives (None: off).
pub fn validate(
    common: &CommonParams,
    prompts: Vec<Vec<u32>>,
    logprobs: Option<u32>,
    limits: Limits,
) -> Result<GenerationRequest, ApiError> {
    let common = &limits.defaults.apply(common);
    check_prompt_ids(&prompts, limits)?;
    let requested = requested_max_tokens(common)?;
    let max_tokens = prompts
        .iter()
        .map(|p| resolve_max_tokens(p.len(), requested, limits.max_context, limits.prompt_param))
        .collect::<Result<Vec<_>, _>>()?;
    let stop_token_ids = common.stop_token_ids.clone().unwrap_or_default();
    if let Some(bad) = stop_token_ids
        .iter()
        .find(|id| **id as usize >= limits.vocab_size)
    {
        return Err(ApiError::invalid_param(
            "stop_token_ids",
            format!("stop token id {bad} is outside the vocabulary."),
        ));
    }
    let n = validate_n(common.n, limits.max_n)?;
    check_sequence_count(prompts.len(), n)?;
    Ok(GenerationRequest {
        prompts,
        max_tokens,
        n,
        sampling: validate_sampling(common)?,
        stop_token_ids,
        ignore_eos: common.ignore_eos.unwrap_or(false),
        stop: validate_stop(common.stop.clone())?,
        logprobs,
        stream: common.stream.unwrap_or(false),
        include_usage: common
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        skip_special_tokens: common.skip_special_tokens.unwrap_or(true),
    })
}

/// Every prompt id must be one the model has: the shard fails a sequence with any other,
/// which reached the client as a 500 instead of this 400.
fn check_prompt_ids(prompts: &[Vec<u32>], limits: Limits) -> Result<(), ApiError> {
    let vocab = limits.vocab_size;
    match prompts.iter().flatten().find(|id| **id as usize >= vocab) {
        Some(bad) => Err(ApiError::invalid_param(
            limits.prompt_param,
            format!("Token id {bad} is out of vocabulary (size {vocab})."),
        )),
        None => Ok(()),
    }
}

/// A client's cap on new tokens, with the name it was sent under.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MaxTokens {
    /// `max_completion_tokens` or `max_tokens`, for the 400s about it.
    pub param: &'static str,
    pub value: u32,
}

/// `max_completion_tokens` wins over the older `max_tokens`; both must be >= 1.
fn requested_max_tokens(common: &CommonParams) -> Result<Option<MaxTokens>, ApiError> {
    let (param, value) = match (common.max_completion_tokens, common.max_tokens) {
        (Some(v), _) => ("max_completion_tokens", v),
        (None, Some(v)) => ("max_tokens", v),
        (None, None) => return Ok(None),
    };
    if value < 1 {
        return Err(ApiError::invalid_param(
            param,
            format!("{param} must be at least 1, got {value}."),
        ));
    }
    let value = u32::try_from(value).unwrap_or(u32::MAX);
    Ok(Some(MaxTokens { param, value }))
}

/// Checks the prompt against the context and fills in an absent max_tokens. The 400s name
/// what the client sent: `prompt_param` (`prompt` or `messages`) for a prompt too long
/// alone, else the max-tokens parameter it used.
pub fn resolve_max_tokens(
    prompt_len: usize,
    requested: Option<MaxTokens>,
    max_context: u32,
    prompt_param: &str,
) -> Result<u32, ApiError> {
    if prompt_len == 0 {
        return Err(ApiError::invalid_param(
            prompt_param,
            "The prompt is empty.",
        ));
    }
    let context = max_context as usize;
    if prompt_len >= context {
        return Err(ApiError::invalid_param(
            prompt_param,
            format!(
                "This model's maximum context length is {context} tokens. However, your \
                 request has {prompt_len} input tokens. Please reduce the length of the \
                 input messages."
            ),
        ));
    }
    let room = (context - prompt_len) as u32;
    match requested {
        None => Ok(room),
        Some(MaxTokens { value, .. }) if value <= room => Ok(value),
        Some(MaxTokens { param, value: max }) => Err(ApiError::invalid_param(
            param,
            format!(
                "This model's maximum context length is {context} tokens. However, you \
                 requested {} tokens ({prompt_len} in the messages, {max} in the \
                 completion). Please reduce the length of the messages or completion.",
                prompt_len as u64 + u64::from(max)
            ),
        )),
    }
}

/// At most [`MAX_STOP_STRINGS`] stop strings of at most [`MAX_STOP_BYTES`] bytes each.
fn validate_stop(stop: Option<StopSpec>) -> Result<Vec<String>, ApiError> {
    let stop = stop.map(StopSpec::into_vec).unwrap_or_default();
    if stop.len() > MAX_STOP_STRINGS {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "At most {MAX_STOP_STRINGS} stop sequences are allowed, got {}.",
                stop.len()
            ),
        ));
    }
    if let Some(long) = stop.iter().find(|s| s.len() > MAX_STOP_BYTES) {
        return Err(ApiError::invalid_param(
            "stop",
            format!(
                "A stop sequence may be at most {MAX_STOP_BYTES} bytes long, got {}.",
                long.len()
            ),
        ));
    }
    Ok(stop)
}

fn validate_n(n: Option<i64>, max_n: u32) -> Result<u32, ApiError> {
    let n = n.unwrap_or(1);
    if n < 1 || n > i64::from(max_n) {
        return Err(ApiError::invalid_param(
            "n",
            format!("n must be between 1 and {max_n}, got {n}."),
        ));
    }
    Ok(n as u32)
}

/// At most [`MAX_SEQUENCES_PER_REQUEST`] choices in all; the error names `prompt` when the
/// prompts alone are too many, else `n`.
fn check_sequence_count(prompts: usize, n: u32) -> Result<(), ApiError> {
    let sequences = prompts.saturating_mul(n as usize);
    if sequences <= MAX_SEQUENCES_PER_REQUEST {
        return Ok(());
    }
    let param = match prompts > MAX_SEQUENCES_PER_REQUEST {
        true => "prompt",
        false => "n",
    };
    Err(ApiError::invalid_param(
        param,
        format!(
            "This request asks for {sequences} completions ({prompts} prompts × n = {n}); \
             at most {MAX_SEQUENCES_PER_REQUEST} are allowed in one request."
        ),
    ))
}

fn check_range(param: &str, value: f32, ok: bool, range: &str) -> Result<(), ApiError> {
    if ok && value.is_finite() {
        Ok(())
    } else {
        Err(ApiError::invalid_param(
            param,
            format!("{param} must be {range}, got {value}."),
        ))
    }
}

/// Sampling ranges follow OpenAI (and vLLM for its extensions).
pub fn validate_sampling(common: &CommonParams) -> Result<SamplingParams, ApiError> {
    let temperature = common.temperature.unwrap_or(1.0);
    check_range(
        "temperature",
        temperature,
        (0.0..=2.0).contains(&temperature),
        "in [0, 2]",
    )?;
    let top_p = common.top_p.unwrap_or(1.0);
    check_range("top_p", top_p, top_p > 0.0 && top_p <= 1.0, "in (0, 1]")?;
    let min_p = common.min_p.unwrap_or(0.0);
    check_range("min_p", min_p, (0.0..=1.0).contains(&min_p), "in [0, 1]")?;
    let presence = common.presence_penalty.unwrap_or(0.0);
    check_range(
        "presence_penalty",
        presence,
        (-2.0..=2.0).contains(&presence),
        "in [-2, 2]",
    )?;
    let frequency = common.frequency_penalty.unwrap_or(0.0);
    let ok = (-2.0..=2.0).contains(&frequency);
    check_range("frequency_penalty", frequency, ok, "in [-2, 2]")?;
    let repetition = common.repetition_penalty.unwrap_or(1.0);
    check_range("repetition_penalty", repetition, repetition > 0.0, "> 0")?;
    let top_k = match common.top_k.unwrap_or(0) {
        -1 | 0 => 0,
        k if k >= 1 => u32::try_from(k).unwrap_or(u32::MAX),
        k => {
            return Err(ApiError::invalid_param(
                "top_k",
                format!("top_k must be -1 (disable) or at least 1, got {k}."),
            ));
        }
    };
    Ok(SamplingParams {
        temperature,
        top_p,
        top_k,
        min_p,
        seed: common.seed.map(|s| s as u64),
        presence_penalty: presence,
        frequency_penalty: frequency,
        repetition_penalty: repetition,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_context: 100,
        vocab_size: 1000,
        prompt_param: "prompt",
        max_n: 8,
        defaults: GenerationDefaults::NONE,
    };

    fn params(json: &str) -> CommonParams {
        serde_json::from_str(json).expect("valid params json")
    }

    fn param_of(result: Result<GenerationRequest, ApiError>) -> Option<String> {
        match result {
            Err(ApiError::BadRequest { param, .. }) => param,
            other => panic!("expected a 400, got {other:?}"),
        }
    }

    #[test]
    fn defaults_fill_in() {
        let req = validate(&params("{}"), vec![vec![1; 30]], None, LIMITS).expect("valid");
        assert_eq!(req.max_tokens, vec![70]);
        assert_eq!(req.n, 1);
        assert_eq!(req.sampling.temperature, 1.0);
        assert_eq!(req.sampling.top_p, 1.0);
        assert!(req.skip_special_tokens && !req.stream && req.logprobs.is_none());
    }

    #[test]
    fn max_tokens_rules() {
        let p = vec![vec![1; 30]];
        let bad = validate(&params(r#"{"max_tokens":0}"#), p.clone(), None, LIMITS);
        assert_eq!(param_of(bad), Some("max_tokens".into()));
        let bad = validate(
            &params(r#"{"max_completion_tokens":-3}"#),
            p.clone(),
            None,
            LIMITS,
        );
        assert_eq!(param_of(bad), Some("max_completion_tokens".into()));
        let ok = validate(
            &params(r#"{"max_tokens":50,"max_completion_tokens":7}"#),
            p,
            None,
            LIMITS,
        );
        assert_eq!(ok.map(|r| r.max_tokens).ok(), Some(vec![7]));
    }

    fn max(value: u32) -> Option<MaxTokens> {
        let param = "max_tokens";
        Some(MaxTokens { param, value })
    }

    #[test]
    fn context_overflow_uses_vllm_message() {
        let err = resolve_max_tokens(30, max(80), 100, "messages").expect_err("too long");
        assert_eq!(
            err.to_string(),
            "This model's maximum context length is 100 tokens. However, you requested 110 \
             tokens (30 in the messages, 80 in the completion). Please reduce the length of \
             the messages or completion."
        );
        assert_eq!(
            resolve_max_tokens(30, max(70), 100, "messages").ok(),
            Some(70)
        );
        assert!(
            resolve_max_tokens(100, None, 100, "messages").is_err(),
            "prompt alone fills the context"
        );
        assert!(
            resolve_max_tokens(0, None, 100, "prompt").is_err(),
            "empty prompt"
        );
    }

    #[test]
    fn context_overflow_names_the_param_the_client_sent() {
        let long = || vec![vec![1; 100]];
        let completions = validate(&params("{}"), long(), None, LIMITS);
        assert_eq!(param_of(completions), Some("prompt".into()));
        let chat = Limits {
            prompt_param: "messages",
            ..LIMITS
        };
        assert_eq!(
            param_of(validate(&params("{}"), long(), None, chat)),
            Some("messages".into())
        );
        let p = || vec![vec![1; 30]];
        let new_name = params(r#"{"max_completion_tokens":80}"#);
        let bad = validate(&new_name, p(), None, LIMITS);
        assert_eq!(param_of(bad), Some("max_completion_tokens".into()));
        let old_name = params(r#"{"max_tokens":80}"#);
        let bad = validate(&old_name, p(), None, LIMITS);
        assert_eq!(param_of(bad), Some("max_tokens".into()));
    }

    #[test]
    fn sampling_ranges_name_the_param() {
        for (json, param) in [
            (r#"{"temperature":2.5}"#, "temperature"),
            (r#"{"temperature":-0.1}"#, "temperature"),
            (r#"{"top_p":0}"#, "top_p"),
            (r#"{"presence_penalty":3}"#, "presence_penalty"),
            (r#"{"frequency_penalty":-2.5}"#, "frequency_penalty"),
            (r#"{"repetition_penalty":0}"#, "repetition_penalty"),
            (r#"{"min_p":1.5}"#, "min_p"),
            (r#"{"top_k":-2}"#, "top_k"),
            (r#"{"n":0}"#, "n"),
            (r#"{"n":9}"#, "n"),
            (r#"{"stop_token_ids":[5000]}"#, "stop_token_ids"),
        ] {
            let result = validate(&params(json), vec![vec![1]], None, LIMITS);
            assert_eq!(param_of(result), Some(param.to_string()), "{json}");
        }
        for param in ["top_logprobs", "logprobs"] {
            let bad_lp = validate_logprobs(param, Some(21)).map(|_| params("{}"));
            let bad_lp = bad_lp.and_then(|p| validate(&p, vec![vec![1]], None, LIMITS));
            assert_eq!(param_of(bad_lp), Some(param.into()));
            assert_eq!(validate_logprobs(param, Some(20)).ok(), Some(Some(20)));
            assert!(validate_logprobs(param, Some(-1)).is_err());
        }
    }

    #[test]
    fn prompt_ids_past_the_vocabulary_name_the_prompt_param() {
        let prompts = vec![vec![1, 2], vec![3, 1000]];
        let bad = validate(&params("{}"), prompts.clone(), None, LIMITS);
        assert_eq!(param_of(bad), Some("prompt".into()));
        let chat = Limits {
            prompt_param: "messages",
            ..LIMITS
        };
        assert_eq!(
            param_of(validate(&params("{}"), prompts, None, chat)),
            Some("messages".into())
        );
        let ok = validate(&params("{}"), vec![vec![999]], None, LIMITS);
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn stop_strings_are_bounded() {
        let stop = |strings: Vec<String>| params(&json!({ "stop": strings }).to_string());
        let at_limit = stop(vec!["x".repeat(MAX_STOP_BYTES); MAX_STOP_STRINGS]);
        let ok = validate(&at_limit, vec![vec![1]], None, LIMITS);
        assert_eq!(ok.map(|r| r.stop.len()).ok(), Some(MAX_STOP_STRINGS));
        let too_many = stop(vec!["x".into(); MAX_STOP_STRINGS + 1]);
        let bad = validate(&too_many, vec![vec![1]], None, LIMITS);
        assert_eq!(param_of(bad), Some("stop".into()));
        let too_long = stop(vec!["a".into(), "x".repeat(MAX_STOP_BYTES + 1)]);
        let bad = validate(&too_long, vec![vec![1]], None, LIMITS);
        assert_eq!(param_of(bad), Some("stop".into()));
        // The length is in bytes: 86 three-byte chars are 258.
        let one = params(&json!({ "stop": "語".repeat(86) }).to_string());
        assert_eq!(
            param_of(validate(&one, vec![vec![1]], None, LIMITS)),
            Some("stop".into())
        );
    }

    #[test]
    fn sequence_count_is_bounded() {
        let limits = Limits {
            max_n: 128,
            ..LIMITS
        };
        let prompts = |k: usize| vec![vec![1]; k];
        let n = |v: u32| params(&format!(r#"{{"n":{v}}}"#));
        let ok = validate(&n(128), prompts(32), None, limits);
        assert_eq!(
            ok.map(|r| r.n).ok(),
            Some(128),
            "32 × 128 = 4096 is allowed"
        );
        let bad = validate(&n(128), prompts(33), None, limits);
        assert_eq!(param_of(bad), Some("n".into()));
        let bad = validate(&n(1), prompts(MAX_SEQUENCES_PER_REQUEST + 1), None, limits);
        assert_eq!(param_of(bad), Some("prompt".into()));
        let Err(err) = validate(&n(128), prompts(2400), None, limits) else {
            panic!("300k sequences accepted");
        };
        assert!(err.to_string().contains("307200 completions"), "{err}");
    }

    #[test]
    fn vllm_extensions_pass_through() {
        let req = validate(
            &params(
                r#"{"top_k":-1,"min_p":0.1,"repetition_penalty":1.2,"seed":-1,"ignore_eos":true,
                "stop":["a","b"],"stop_token_ids":[3],"n":2,"stream":true,
                "stream_options":{"include_usage":true}}"#,
            ),
            vec![vec![1, 2], vec![3]],
            Some(2),
            LIMITS,
        )
        .expect("valid");
        assert_eq!(req.sampling.top_k, 0);
        assert_eq!(req.sampling.seed, Some(u64::MAX));
        assert_eq!(req.stop, vec!["a".to_string(), "b".to_string()]);
        assert_eq!(req.max_tokens, vec![98, 99]);
        assert_eq!(req.stopping(1).stop_token_ids, vec![3]);
        assert!(req.stopping(0).ignore_eos && req.stream && req.include_usage);
        assert_eq!(req.logprobs, Some(2));
    }
}
