//! GGUF tensor names (what the model asks for) -> HF checkpoint names, and which rows
//! llama.cpp's `convert_hf_to_gguf.py` permutes on the way.

/// How a tensor's rows are reordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rows {
    AsStored,
    /// Q/K projections (and their biases): HF rotates halves (`rotate_half`), GGUF's llama
    /// layout rotates interleaved pairs. Per head of `head_dim` rows, new row `2i + j` is old
    /// row `j * head_dim / 2 + i` — llama.cpp's `permute(w, n_head)`.
    RopeHeads {
        heads: usize,
    },
}

impl Rows {
    /// Old row index of new row `r` for tensors with `rows` rows.
    pub fn source_row(self, r: usize, rows: usize) -> usize {
        match self {
            Rows::AsStored => r,
            Rows::RopeHeads { heads } => {
                let head_dim = rows / heads;
                let (head, within) = (r / head_dim, r % head_dim);
                let (i, j) = (within / 2, within % 2);
                head * head_dim + j * (head_dim / 2) + i
            }
        }
    }
}

/// The HF name of a GGUF tensor name and its row order; `None` for names HF has no tensor for.
pub fn hf_name(gguf: &str, num_heads: usize, num_kv_heads: usize) -> Option<(String, Rows)> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some((name.to_string(), Rows::AsStored));
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (part, kind) = rest.rsplit_once('.')?;
    if kind != "weight" && kind != "bias" {
        return None;
    }
    let (hf, rows) = match part {
        "attn_norm" => ("input_layernorm", Rows::AsStored),
        "ffn_norm" => ("post_attention_layernorm", Rows::AsStored),
        "attn_q" => ("self_attn.q_proj", Rows::RopeHeads { heads: num_heads }),
        "attn_k" => (
            "self_attn.k_proj",
            Rows::RopeHeads {
                heads: num_kv_heads,
            },
        ),
        "attn_v" => ("self_attn.v_proj", Rows::AsStored),
        "attn_output" => ("self_attn.o_proj", Rows::AsStored),
        "ffn_gate" => ("mlp.gate_proj", Rows::AsStored),
        "ffn_up" => ("mlp.up_proj", Rows::AsStored),
        "ffn_down" => ("mlp.down_proj", Rows::AsStored),
        _ => return None,
    };
    Some((format!("model.layers.{layer}.{hf}.{kind}"), rows))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    #[test]
    fn maps_layer_and_global_names() {
        assert_eq!(
            hf_name("blk.3.attn_k.bias", 32, 8),
            Some((
                "model.layers.3.self_attn.k_proj.bias".into(),
                Rows::RopeHeads { heads: 8 }
            ))
        );
        assert_eq!(
            hf_name("blk.0.ffn_down.weight", 32, 8).unwrap().0,
            "model.layers.0.mlp.down_proj.weight"
        );
        assert_eq!(
            hf_name("token_embd.weight", 1, 1).unwrap().0,
            "model.embed_tokens.weight"
        );
        assert_eq!(hf_name("rope_freqs.weight", 1, 1), None);
        assert_eq!(hf_name("blk.x.attn_q.weight", 1, 1), None);
    }

    /// The same reshape/swapaxes llama.cpp does, written out for one head of 8 rows.
    #[test]
    fn rope_permutation_interleaves_halves() {
        let rows = Rows::RopeHeads { heads: 2 };
        let order: Vec<usize> = (0..16).map(|r| rows.source_row(r, 16)).collect();
        assert_eq!(
            order,
            vec![0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
        );
    }
}
