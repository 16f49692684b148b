//! Llama-family hyper-parameters from GGUF metadata (`llama.*` keys). Llama, Mistral and
//! SmolLM2 GGUFs all use the `llama` architecture.

use std::collections::HashMap;

use candle_core::quantized::gguf_file::Value;

use crate::model::ModelError;

#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub num_layers: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rope_dim: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
    pub max_context: usize,
}

impl LlamaConfig {
    pub fn from_metadata(md: &HashMap<String, Value>) -> Result<Self, ModelError> {
        let arch = md
            .get("general.architecture")
            .and_then(|v| v.to_string().ok())
            .ok_or_else(|| ModelError::Format("no general.architecture".into()))?;
        if arch != "llama" {
            return Err(ModelError::UnsupportedArchitecture(arch.clone()));
        }
        let hidden = get_usize(md, "llama.embedding_length")?;
        let num_heads = get_usize(md, "llama.attention.head_count")?;
        let num_kv_heads = opt_usize(md, "llama.attention.head_count_kv")?.unwrap_or(num_heads);
        if num_heads == 0 || num_kv_heads == 0 || !num_heads.is_multiple_of(num_kv_heads) {
            return Err(ModelError::Format(format!(
                "{num_heads} heads, {num_kv_heads} KV heads"
            )));
        }
        if !hidden.is_multiple_of(num_heads) {
            return Err(ModelError::Format(format!(
                "hidden {hidden} not divisible by {num_heads} heads"
            )));
        }
        let head_dim = opt_usize(md, "llama.attention.key_length")?.unwrap_or(hidden / num_heads);
        let rope_dim = opt_usize(md, "llama.rope.dimension_count")?.unwrap_or(head_dim);
        if rope_dim > head_dim || !rope_dim.is_multiple_of(2) {
            return Err(ModelError::Format(format!(
                "rope dim {rope_dim} for head dim {head_dim}"
            )));
        }
        Ok(Self {
            num_layers: get_usize(md, "llama.block_count")?,
            hidden,
            ffn: get_usize(md, "llama.feed_forward_length")?,
            num_heads,
            num_kv_heads,
            head_dim,
            rope_dim,
            rope_base: opt_f32(md, "llama.rope.freq_base")?.unwrap_or(10000.0),
            rms_eps: opt_f32(md, "llama.attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            max_context: opt_usize(md, "llama.context_length")?.unwrap_or(4096),
        })
    }

    /// Applies `--max-model-len` (vLLM's flag, same meaning): the longest sequence, prompt and
    /// generated tokens together, this shard serves. Applied as soon as the config is read, so
    /// every size derived from `max_context` (RoPE table, block tables, the CUDA decode
    /// workspace) and what `Info` and `/v1/models` report follow it. `None` keeps the model's
    /// own context. A value above the model's own is refused, as vLLM refuses it: positions
    /// past what the model was trained on would be served silently wrong.
    pub fn with_max_model_len(self, max_model_len: Option<usize>) -> Result<Self, ModelError> {
        match max_model_len {
            None => Ok(self),
            Some(0) => Err(ModelError::Format(
                "max_model_len must be at least 1".into(),
            )),
            Some(requested) if requested > self.max_context => Err(ModelError::MaxModelLen {
                requested,
                model: self.max_context,
            }),
            Some(requested) => Ok(Self {
                max_context: requested,
                ..self
            }),
        }
    }
}

fn get_usize(md: &HashMap<String, Value>, key: &str) -> Result<usize, ModelError> {
    opt_usize(md, key)?.ok_or_else(|| ModelError::Format(format!("missing metadata {key}")))
}

/// Integer metadata of any width (writers differ between u32 and u64).
pub(crate) fn opt_usize(
    md: &HashMap<String, Value>,
    key: &str,
) -> Result<Option<usize>, ModelError> {
    let Some(v) = md.get(key) else {
        return Ok(None);
    };
    let n = match v {
        Value::U8(x) => *x as u64,
        Value::U16(x) => *x as u64,
        Value::U32(x) => *x as u64,
        Value::U64(x) => *x,
        Value::I8(x) => u64::try_from(*x).map_err(|_| bad(key))?,
        Value::I16(x) => u64::try_from(*x).map_err(|_| bad(key))?,
        Value::I32(x) => u64::try_from(*x).map_err(|_| bad(key))?,
        Value::I64(x) => u64::try_from(*x).map_err(|_| bad(key))?,
        _ => return Err(bad(key)),
    };
    usize::try_from(n).map(Some).map_err(|_| bad(key))
}

fn opt_f32(md: &HashMap<String, Value>, key: &str) -> Result<Option<f32>, ModelError> {
    match md.get(key) {
        None => Ok(None),
        Some(Value::F32(x)) => Ok(Some(*x)),
        Some(Value::F64(x)) => Ok(Some(*x as f32)),
        Some(_) => Err(bad(key)),
    }
}

fn bad(key: &str) -> ModelError {
    ModelError::Format(format!("metadata {key} has an unexpected type or value"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    fn smollm() -> HashMap<String, Value> {
        let mut md = HashMap::new();
        md.insert("general.architecture".into(), Value::String("llama".into()));
        md.insert("llama.block_count".into(), Value::U32(30));
        md.insert("llama.embedding_length".into(), Value::U32(576));
        md.insert("llama.feed_forward_length".into(), Value::U32(1536));
        md.insert("llama.attention.head_count".into(), Value::U32(9));
        md.insert("llama.attention.head_count_kv".into(), Value::U32(3));
        md.insert("llama.rope.freq_base".into(), Value::F32(100000.0));
        md.insert("llama.context_length".into(), Value::U64(8192));
        md
    }

    #[test]
    fn reads_llama_keys_with_defaults() {
        let c = LlamaConfig::from_metadata(&smollm()).unwrap();
        assert_eq!((c.num_layers, c.hidden, c.ffn), (30, 576, 1536));
        assert_eq!(
            (c.num_heads, c.num_kv_heads, c.head_dim, c.rope_dim),
            (9, 3, 64, 64)
        );
        assert_eq!(
            (c.rope_base, c.rms_eps, c.max_context),
            (100000.0, 1e-5, 8192)
        );
    }

    #[test]
    fn max_model_len_caps_the_context_and_refuses_more_than_the_model_has() {
        let c = LlamaConfig::from_metadata(&smollm()).unwrap();
        assert_eq!(c.clone().with_max_model_len(None).unwrap(), c);
        let capped = c.clone().with_max_model_len(Some(64)).unwrap();
        assert_eq!(capped.max_context, 64);
        assert_eq!(
            capped,
            LlamaConfig {
                max_context: 64,
                ..c.clone()
            },
            "only the context changes"
        );
        // The model's own limit is allowed, one more is not.
        let same = c.clone().with_max_model_len(Some(8192)).unwrap();
        assert_eq!(same.max_context, 8192);
        let err = c.clone().with_max_model_len(Some(8193)).unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::MaxModelLen {
                    requested: 8193,
                    model: 8192
                }
            ),
            "{err:?}"
        );
        let message = c
            .clone()
            .with_max_model_len(Some(10_000_000))
            .unwrap_err()
            .to_string();
        assert!(
            message.contains("10000000") && message.contains("8192"),
            "names both numbers: {message}"
        );
        assert!(c.with_max_model_len(Some(0)).is_err());
    }

    #[test]
    fn rejects_other_architectures_and_bad_values() {
        let mut md = smollm();
        md.insert("general.architecture".into(), Value::String("qwen2".into()));
        let err = LlamaConfig::from_metadata(&md).unwrap_err();
        assert!(matches!(err, ModelError::UnsupportedArchitecture(ref a) if a == "qwen2"));
        let mut md = smollm();
        md.insert("llama.attention.head_count_kv".into(), Value::U32(4));
        assert!(matches!(
            LlamaConfig::from_metadata(&md),
            Err(ModelError::Format(_))
        ));
        let mut md = smollm();
        md.remove("llama.block_count");
        assert!(matches!(
            LlamaConfig::from_metadata(&md),
            Err(ModelError::Format(_))
        ));
        let mut md = smollm();
        md.insert("llama.block_count".into(), Value::I32(-1));
        assert!(matches!(
            LlamaConfig::from_metadata(&md),
            Err(ModelError::Format(_))
        ));
    }
}
