//! The config and the tensors of a model source must agree before anything is loaded or
//! sized from them. A file whose `blk.0.ffn_up.weight` is `[16, 16]` where the config says
//! `[16, 8]` used to load, and then every request failed in the first matmul with a message
//! naming no tensor; a config with 2^60 layers sized the KV cache before any layer was read.
//! Checking only reads shapes, so it costs nothing next to the load.

use crate::model::source::ModelSource;
use crate::model::{LlamaConfig, ModelError};

/// Checks the config's values and every tensor the decoder reads against it.
pub fn check_model(src: &dyn ModelSource) -> Result<(), ModelError> {
    let cfg = src.config()?;
    check_config(&cfg)?;
    let vocab = vocab_size(src, &cfg)?;
    let q = mul(cfg.num_heads, cfg.head_dim)?;
    let kv = mul(cfg.num_kv_heads, cfg.head_dim)?;
    let h = cfg.hidden;
    expect(src, "output_norm.weight", &[h], false)?;
    expect(src, "output.weight", &[vocab, h], true)?;
    expect(src, "rope_freqs.weight", &[cfg.rope_dim / 2], true)?;
    for i in 0..cfg.num_layers {
        let t = |part: &str, kind: &str| format!("blk.{i}.{part}.{kind}");
        expect(src, &t("attn_norm", "weight"), &[h], false)?;
        expect(src, &t("ffn_norm", "weight"), &[h], false)?;
        expect(src, &t("attn_q", "weight"), &[q, h], false)?;
        expect(src, &t("attn_k", "weight"), &[kv, h], false)?;
        expect(src, &t("attn_v", "weight"), &[kv, h], false)?;
        expect(src, &t("attn_output", "weight"), &[h, q], false)?;
        expect(src, &t("ffn_gate", "weight"), &[cfg.ffn, h], false)?;
        expect(src, &t("ffn_up", "weight"), &[cfg.ffn, h], false)?;
        expect(src, &t("ffn_down", "weight"), &[h, cfg.ffn], false)?;
        expect(src, &t("attn_q", "bias"), &[q], true)?;
        expect(src, &t("attn_k", "bias"), &[kv], true)?;
        expect(src, &t("attn_v", "bias"), &[kv], true)?;
        expect(src, &t("attn_output", "bias"), &[h], true)?;
    }
    Ok(())
}

/// Values no model has, which would otherwise divide by zero or size nothing.
pub fn check_config(cfg: &LlamaConfig) -> Result<(), ModelError> {
    let sizes = [
        ("layer count", cfg.num_layers),
        ("hidden size", cfg.hidden),
        ("feed-forward size", cfg.ffn),
        ("head dim", cfg.head_dim),
        ("context length", cfg.max_context),
    ];
    if let Some((what, _)) = sizes.iter().find(|(_, n)| *n == 0) {
        return Err(ModelError::Format(format!("{what} is 0")));
    }
    let positive = |x: f32| x.is_finite() && x > 0.0;
    if !positive(cfg.rope_base) || !positive(cfg.rms_eps) {
        return Err(ModelError::Format(format!(
            "rope base {} and RMS norm epsilon {} must be positive",
            cfg.rope_base, cfg.rms_eps
        )));
    }
    Ok(())
}

fn vocab_size(src: &dyn ModelSource, cfg: &LlamaConfig) -> Result<usize, ModelError> {
    match src.tensor_dims("token_embd.weight").as_deref() {
        Some(&[vocab, hidden]) if vocab > 0 && hidden == cfg.hidden => Ok(vocab),
        other => Err(ModelError::Format(format!(
            "token_embd.weight shape {other:?}, expected [vocab > 0, {}]",
            cfg.hidden
        ))),
    }
}

fn mul(a: usize, b: usize) -> Result<usize, ModelError> {
    a.checked_mul(b)
        .ok_or_else(|| ModelError::Format(format!("{a} heads x {b} head dim overflows")))
}

fn expect(
    src: &dyn ModelSource,
    name: &str,
    want: &[usize],
    optional: bool,
) -> Result<(), ModelError> {
    match src.tensor_dims(name) {
        Some(dims) if dims == want => Ok(()),
        None if optional => Ok(()),
        None => Err(ModelError::Format(format!("missing tensor {name}"))),
        Some(dims) => Err(ModelError::Format(format!(
            "tensor {name} has shape {dims:?}, the config needs {want:?}"
        ))),
    }
}
