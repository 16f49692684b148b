//! Named model shapes for `--load-format dummy` (random weights of a real model's shape, like
//! vLLM's dummy load format), for benchmarks without a checkpoint.

use crate::model::LlamaConfig;

/// A shape `--model-shape` can name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelShape {
    Llama3_8b,
    Mistral7b,
    Smollm2_135m,
}

/// Facts of a shape beyond [`LlamaConfig`].
#[derive(Debug, Clone)]
pub struct ShapeSpec {
    pub config: LlamaConfig,
    pub vocab_size: usize,
    pub tied_embeddings: bool,
    pub eos_token_ids: Vec<u32>,
    pub bos_token_id: Option<u32>,
}

impl ModelShape {
    pub const NAMES: [&'static str; 3] = ["llama3-8b", "mistral-7b", "smollm2-135m"];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "llama3-8b" => Some(Self::Llama3_8b),
            "mistral-7b" => Some(Self::Mistral7b),
            "smollm2-135m" => Some(Self::Smollm2_135m),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Llama3_8b => "llama3-8b",
            Self::Mistral7b => "mistral-7b",
            Self::Smollm2_135m => "smollm2-135m",
        }
    }

    pub fn spec(self) -> ShapeSpec {
        let cfg = |layers, hidden, ffn, heads, kv, rope_base, ctx| LlamaConfig {
            num_layers: layers,
            hidden,
            ffn,
            num_heads: heads,
            num_kv_heads: kv,
            head_dim: hidden / heads,
            rope_dim: hidden / heads,
            rope_base,
            rms_eps: 1e-5,
            max_context: ctx,
        };
        match self {
            // Meta-Llama-3-8B config.json.
            Self::Llama3_8b => ShapeSpec {
                config: cfg(32, 4096, 14336, 32, 8, 500000.0, 8192),
                vocab_size: 128256,
                tied_embeddings: false,
                eos_token_ids: vec![128001, 128009],
                bos_token_id: Some(128000),
            },
            // Mistral-7B-Instruct-v0.2 config.json.
            Self::Mistral7b => ShapeSpec {
                config: cfg(32, 4096, 14336, 32, 8, 1_000_000.0, 32768),
                vocab_size: 32000,
                tied_embeddings: false,
                eos_token_ids: vec![2],
                bos_token_id: Some(1),
            },
            Self::Smollm2_135m => ShapeSpec {
                config: cfg(30, 576, 1536, 9, 3, 100000.0, 8192),
                vocab_size: 49152,
                tied_embeddings: true,
                eos_token_ids: vec![2],
                bos_token_id: Some(1),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for name in ModelShape::NAMES {
            let shape = ModelShape::parse(name).map(ModelShape::name);
            assert_eq!(shape, Some(name));
        }
        assert_eq!(ModelShape::parse("gpt2"), None);
    }

    #[test]
    fn llama3_8b_has_its_parameter_count() {
        let s = ModelShape::Llama3_8b.spec();
        let c = &s.config;
        let attn = c.hidden * (c.num_heads + 2 * c.num_kv_heads) * c.head_dim
            + c.num_heads * c.head_dim * c.hidden;
        let mlp = 3 * c.hidden * c.ffn;
        let total = c.num_layers * (attn + mlp) + 2 * s.vocab_size * c.hidden;
        // 8.03 B parameters.
        assert_eq!(total / 10_000_000, 802);
    }
}
