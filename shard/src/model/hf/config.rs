//! `config.json` of a HF Llama / Mistral / Qwen2 checkpoint -> [`LlamaConfig`] and the facts
//! the GGUF layout keeps elsewhere (tied embeddings, RoPE frequency factors, sliding window).

use serde::Deserialize;
use serde_json::Value as Json;

use crate::model::{LlamaConfig, ModelError};

/// `architectures[0]` values this loader serves.
pub const SUPPORTED_ARCHITECTURES: &[&str] =
    &["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM"];

#[derive(Debug, Deserialize)]
struct RawConfig {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<Json>,
    /// transformers >= 5 spells `rope_theta` and `rope_scaling` as one object.
    rope_parameters: Option<Json>,
    max_position_embeddings: Option<usize>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    sliding_window: Option<usize>,
    use_sliding_window: Option<bool>,
    #[serde(default)]
    hidden_act: Option<String>,
    bos_token_id: Option<Json>,
    eos_token_id: Option<Json>,
}

fn default_eps() -> f64 {
    1e-6
}

/// Everything the HF source derives from `config.json`.
#[derive(Debug, Clone, PartialEq)]
pub struct HfConfig {
    pub architecture: String,
    pub llama: LlamaConfig,
    pub tied_embeddings: bool,
    /// llama.cpp's `rope_freqs`: per frequency, the divisor of `base^(-2i/d)`.
    pub rope_freq_factors: Option<Vec<f32>>,
    pub sliding_window: Option<usize>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

impl HfConfig {
    pub fn parse(text: &str) -> Result<Self, ModelError> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| ModelError::Format(format!("config.json: {e}")))?;
        let architecture = raw
            .architectures
            .first()
            .cloned()
            .or_else(|| raw.model_type.clone())
            .unwrap_or_default();
        if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
            return Err(ModelError::UnsupportedArchitecture(architecture));
        }
        if let Some(act) = raw.hidden_act.as_deref().filter(|a| *a != "silu") {
            return Err(ModelError::Format(format!(
                "hidden_act `{act}` (only silu)"
            )));
        }
        let llama = llama_config(&raw)?;
        let rope_freq_factors = freq_factors(&rope_scaling(&raw), &llama)?;
        Ok(Self {
            tied_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            sliding_window: sliding_window(&raw, &architecture)?,
            bos_token_id: token_ids(raw.bos_token_id.as_ref())?.first().copied(),
            eos_token_ids: token_ids(raw.eos_token_id.as_ref())?,
            architecture,
            llama,
            rope_freq_factors,
        })
    }
}

fn llama_config(raw: &RawConfig) -> Result<LlamaConfig, ModelError> {
    let num_heads = raw.num_attention_heads;
    let num_kv_heads = raw.num_key_value_heads.unwrap_or(num_heads);
    if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
        return Err(ModelError::Format(format!(
            "{num_heads} heads, {num_kv_heads} KV heads"
        )));
    }
    let head_dim = match raw.head_dim {
        Some(d) => d,
        None if raw.hidden_size.is_multiple_of(num_heads) => raw.hidden_size / num_heads,
        None => {
            return Err(ModelError::Format(format!(
                "hidden {} not divisible by {num_heads} heads",
                raw.hidden_size
            )));
        }
    };
    if head_dim == 0 || !head_dim.is_multiple_of(2) {
        return Err(ModelError::Format(format!("head_dim {head_dim}")));
    }
    let theta = raw
        .rope_theta
        .or_else(|| raw.rope_parameters.as_ref()?.get("rope_theta")?.as_f64())
        .unwrap_or(10000.0);
    Ok(LlamaConfig {
        num_layers: raw.num_hidden_layers,
        hidden: raw.hidden_size,
        ffn: raw.intermediate_size,
        num_heads,
        num_kv_heads,
        head_dim,
        rope_dim: head_dim,
        rope_base: theta as f32,
        rms_eps: raw.rms_norm_eps as f32,
        max_context: raw.max_position_embeddings.unwrap_or(4096),
    })
}

/// `rope_scaling`, or transformers 5's `rope_parameters`; `None` for plain RoPE.
fn rope_scaling(raw: &RawConfig) -> Option<Json> {
    let scaling = raw
        .rope_scaling
        .clone()
        .or_else(|| raw.rope_parameters.clone())
        .filter(|s| !s.is_null())?;
    let kind = scaling
        .get("rope_type")
        .or_else(|| scaling.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    (kind != "default").then_some(scaling)
}

/// llama3 and linear scaling as per-frequency divisors (what llama.cpp's converter writes
/// into `rope_freqs.weight`); other schemes are refused rather than served wrong.
fn freq_factors(scaling: &Option<Json>, cfg: &LlamaConfig) -> Result<Option<Vec<f32>>, ModelError> {
    let Some(s) = scaling else { return Ok(None) };
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    let num = |key: &str| -> Result<f64, ModelError> {
        s.get(key)
            .and_then(Json::as_f64)
            .ok_or_else(|| ModelError::Format(format!("rope_scaling ({kind}) without {key}")))
    };
    let half = cfg.rope_dim / 2;
    let base = cfg.rope_base as f64;
    let inv_freq = |i: usize| base.powf(-2.0 * i as f64 / cfg.rope_dim as f64);
    match kind {
        "linear" => Ok(Some(vec![num("factor")? as f32; half])),
        "llama3" => {
            let factor = num("factor")?;
            let low = num("low_freq_factor")?;
            let high = num("high_freq_factor")?;
            let old_ctx = num("original_max_position_embeddings")?;
            let (low_wavelen, high_wavelen) = (old_ctx / low, old_ctx / high);
            let factors = (0..half)
                .map(|i| {
                    let wavelen = 2.0 * std::f64::consts::PI / inv_freq(i);
                    if wavelen < high_wavelen {
                        1.0
                    } else if wavelen > low_wavelen {
                        factor as f32
                    } else {
                        let smooth = (old_ctx / wavelen - low) / (high - low);
                        (1.0 / ((1.0 - smooth) / factor + smooth)) as f32
                    }
                })
                .collect();
            Ok(Some(factors))
        }
        other => Err(ModelError::Format(format!(
            "rope_scaling type `{other}` is not supported (supported: default, linear, llama3)"
        ))),
    }
}

/// Mistral's `sliding_window` (when set); Qwen2 only with `use_sliding_window`, which its
/// per-layer variant (`max_window_layers`) makes something this loader does not serve.
fn sliding_window(raw: &RawConfig, architecture: &str) -> Result<Option<usize>, ModelError> {
    match architecture {
        "MistralForCausalLM" => Ok(raw.sliding_window.filter(|&w| w > 0)),
        "Qwen2ForCausalLM" if raw.use_sliding_window == Some(true) => Err(ModelError::Format(
            "Qwen2 with use_sliding_window = true is not supported".into(),
        )),
        _ => Ok(None),
    }
}

/// A token id or a list of them (`eos_token_id: [128001, 128009]`).
pub fn token_ids(value: Option<&Json>) -> Result<Vec<u32>, ModelError> {
    let one = |v: &Json| {
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ModelError::Format(format!("token id {v}")))
    };
    match value {
        None | Some(Json::Null) => Ok(Vec::new()),
        Some(Json::Array(items)) => items.iter().map(one).collect(),
        Some(v) => Ok(vec![one(v)?]),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    /// Mistral-7B-Instruct-v0.2's config.json.
    const MISTRAL: &str = r#"{"architectures": ["MistralForCausalLM"], "bos_token_id": 1,
        "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 4096,
        "intermediate_size": 14336, "max_position_embeddings": 32768, "model_type": "mistral",
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "rms_norm_eps": 1e-05, "rope_theta": 1000000.0, "sliding_window": null,
        "tie_word_embeddings": false, "torch_dtype": "bfloat16", "vocab_size": 32000}"#;

    #[test]
    fn reads_mistral_7b() {
        let c = HfConfig::parse(MISTRAL).unwrap();
        assert_eq!(c.architecture, "MistralForCausalLM");
        let l = &c.llama;
        assert_eq!((l.num_layers, l.hidden, l.ffn), (32, 4096, 14336));
        assert_eq!((l.num_heads, l.num_kv_heads, l.head_dim), (32, 8, 128));
        assert_eq!((l.rope_base, l.rms_eps, l.max_context), (1e6, 1e-5, 32768));
        assert_eq!((c.sliding_window, c.tied_embeddings), (None, false));
        assert_eq!(
            (c.bos_token_id, c.eos_token_ids.as_slice()),
            (Some(1), &[2][..])
        );
        assert!(c.rope_freq_factors.is_none());
    }

    #[test]
    fn llama3_scaling_matches_llama_cpp_factors() {
        // Llama-3.1-8B: theta 500000, factor 8, low 1, high 4, original context 8192.
        let text = MISTRAL.replace(
            r#""sliding_window": null"#,
            r#""rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
               "eos_token_id": [128001, 128008, 128009]"#,
        );
        let text = text.replace(r#""eos_token_id": 2,"#, "");
        let text = text.replace("MistralForCausalLM", "LlamaForCausalLM");
        let text = text.replace("1000000.0", "500000.0");
        let c = HfConfig::parse(&text).unwrap();
        let f = c.rope_freq_factors.unwrap();
        assert_eq!(f.len(), 64);
        // High frequencies untouched, low ones divided by the full factor, a smooth band between.
        assert_eq!(f[0], 1.0);
        assert_eq!(f[63], 8.0);
        assert!(f.iter().any(|&x| x > 1.0 && x < 8.0));
        assert!(f.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(c.eos_token_ids, vec![128001, 128008, 128009]);
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let text = MISTRAL.replace("MistralForCausalLM", "GemmaForCausalLM");
        let err = HfConfig::parse(&text).unwrap_err();
        assert!(
            matches!(err, ModelError::UnsupportedArchitecture(ref a) if a == "GemmaForCausalLM")
        );
        assert!(err.to_string().contains("GemmaForCausalLM"), "{err}");
    }

    #[test]
    fn refuses_unknown_rope_scaling_and_bad_heads() {
        let yarn = MISTRAL.replace(
            r#""sliding_window": null"#,
            r#""rope_scaling": {"type": "yarn", "factor": 4.0}"#,
        );
        let err = HfConfig::parse(&yarn).unwrap_err().to_string();
        assert!(err.contains("yarn"), "{err}");
        let heads = MISTRAL.replace(r#""num_key_value_heads": 8"#, r#""num_key_value_heads": 5"#);
        assert!(matches!(
            HfConfig::parse(&heads),
            Err(ModelError::Format(_))
        ));
        assert!(matches!(HfConfig::parse("{}"), Err(ModelError::Format(_))));
    }

    #[test]
    fn mistral_window_and_qwen2_switch() {
        let text = MISTRAL.replace(r#""sliding_window": null"#, r#""sliding_window": 4096"#);
        assert_eq!(HfConfig::parse(&text).unwrap().sliding_window, Some(4096));
        let qwen = text.replace("MistralForCausalLM", "Qwen2ForCausalLM");
        assert_eq!(HfConfig::parse(&qwen).unwrap().sliding_window, None);
        let on = qwen.replace(r#""sliding_window": 4096"#, r#""use_sliding_window": true"#);
        assert!(HfConfig::parse(&on).is_err());
    }
}
