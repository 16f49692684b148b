//! A HF model directory (`config.json` + safetensors, as `save_pretrained` and the hub
//! write it) as a [`ModelSource`]: tensors are served under GGUF's names with Q/K rows
//! permuted like llama.cpp's converter does, so every backend loads it like a GGUF.

mod config;
mod names;
mod safetensors;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::{DType, Device};

pub use config::{HfConfig, SUPPORTED_ARCHITECTURES};
use names::{Rows, hf_name};
use safetensors::SafetensorsFiles;

use crate::model::source::ModelSource;
use crate::model::{LlamaConfig, ModelError};

pub struct HfSource {
    dir: PathBuf,
    config: HfConfig,
    files: SafetensorsFiles,
    /// Extra end-of-generation ids from `generation_config.json`.
    generation_eos: Vec<u32>,
    generation_bos: Option<u32>,
    progress: Progress,
}

/// Logs loading progress every 10 % of the checkpoint's bytes (checkpoints of 256 MiB and
/// more: smaller ones load in a blink).
struct Progress {
    total: usize,
    loaded: usize,
    logged_tenths: usize,
}

impl HfSource {
    /// Whether `dir` looks like a HF model directory (has `config.json`).
    pub fn is_hf_dir(dir: &Path) -> bool {
        dir.is_dir() && dir.join("config.json").is_file()
    }

    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io {
            path: config_path.clone(),
            source,
        })?;
        let config = HfConfig::parse(&text)?;
        let files = SafetensorsFiles::open(dir)?;
        let (generation_eos, generation_bos) = generation_tokens(dir)?;
        let total = files.total_bytes();
        tracing::info!(
            dir = %dir.display(), architecture = %config.architecture, files = files.paths.len(),
            mb = total >> 20, "loading safetensors"
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            config,
            files,
            generation_eos,
            generation_bos,
            progress: Progress {
                total,
                loaded: 0,
                logged_tenths: 0,
            },
        })
    }

    pub fn hf_config(&self) -> &HfConfig {
        &self.config
    }

    fn resolve(&self, name: &str) -> Option<(String, Rows)> {
        let cfg = &self.config.llama;
        let (hf, rows) = hf_name(name, cfg.num_heads, cfg.num_kv_heads)?;
        // A tied checkpoint may still carry lm_head; the tie wins, as in transformers.
        (name != "output.weight" || !self.config.tied_embeddings).then_some((hf, rows))
    }

    fn rope_freqs(&self) -> Result<QTensor, ModelError> {
        let factors = self
            .config
            .rope_freq_factors
            .as_ref()
            .ok_or_else(|| ModelError::Format("no rope scaling".into()))?;
        let bytes: Vec<u8> = factors.iter().flat_map(|f| f.to_le_bytes()).collect();
        let storage = QStorage::from_data(bytes.into(), &Device::Cpu, GgmlDType::F32)?;
        Ok(QTensor::new(storage, factors.len())?)
    }
}

impl ModelSource for HfSource {
    fn config(&self) -> Result<LlamaConfig, ModelError> {
        Ok(self.config.llama.clone())
    }

    fn tensor_dims(&self, name: &str) -> Option<Vec<usize>> {
        if name == "rope_freqs.weight" {
            return self
                .config
                .rope_freq_factors
                .as_ref()
                .map(|f| vec![f.len()]);
        }
        self.files.dims(&self.resolve(name)?.0)
    }

    fn tensor(&mut self, name: &str) -> Result<QTensor, ModelError> {
        if name == "rope_freqs.weight" {
            return self.rope_freqs();
        }
        let (hf, rows) = self.resolve(name).ok_or_else(|| {
            ModelError::Format(format!("{}: no tensor for {name}", self.dir.display()))
        })?;
        let n = self.files.dims(&hf).and_then(|d| d.first().copied());
        let map = |r: usize| rows.source_row(r, n.unwrap_or(1));
        let permute: Option<&dyn Fn(usize) -> usize> = match rows {
            Rows::AsStored => None,
            Rows::RopeHeads { .. } => Some(&map),
        };
        let t = self
            .files
            .tensor(&hf, permute)
            .map_err(|e| ModelError::Format(format!("{}: {e}", self.dir.display())))?;
        self.progress.advance(t.storage_size_in_bytes());
        Ok(t)
    }

    fn dtype_name(&self) -> String {
        let mut bytes: HashMap<&'static str, usize> = HashMap::new();
        for name in [
            "token_embd.weight",
            "blk.0.attn_q.weight",
            "blk.0.ffn_up.weight",
        ] {
            if let Some((hf, _)) = self.resolve(name)
                && let (Some(dtype), Some(dims)) = (self.files.dtype(&hf), self.files.dims(&hf))
            {
                *bytes.entry(dtype_label(dtype)).or_default() += dims.iter().product::<usize>();
            }
        }
        bytes
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map_or_else(|| "unknown".into(), |(d, _)| d.to_string())
    }

    fn eos_token_ids(&self) -> Result<Vec<u32>, ModelError> {
        let mut ids = self.config.eos_token_ids.clone();
        for id in &self.generation_eos {
            if !ids.contains(id) {
                ids.push(*id);
            }
        }
        Ok(ids)
    }

    fn bos_token_id(&self) -> Result<Option<u32>, ModelError> {
        Ok(self.config.bos_token_id.or(self.generation_bos))
    }

    fn sliding_window(&self) -> Option<usize> {
        self.config.sliding_window
    }
}

impl Progress {
    fn advance(&mut self, bytes: usize) {
        self.loaded += bytes;
        if self.total < 256 << 20 {
            return;
        }
        let tenths = (self.loaded * 10)
            .checked_div(self.total)
            .unwrap_or(10)
            .min(10);
        if tenths > self.logged_tenths {
            self.logged_tenths = tenths;
            tracing::info!(
                "weights {}% loaded ({} of {} MiB)",
                tenths * 10,
                self.loaded >> 20,
                self.total >> 20
            );
        }
    }
}

fn dtype_label(d: DType) -> &'static str {
    match d {
        DType::BF16 => "bf16",
        DType::F16 => "f16",
        DType::F32 => "f32",
        _ => "other",
    }
}

/// `eos_token_id` and `bos_token_id` of `generation_config.json`, when the file exists.
fn generation_tokens(dir: &Path) -> Result<(Vec<u32>, Option<u32>), ModelError> {
    let path = dir.join("generation_config.json");
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), None)),
        Err(source) => return Err(ModelError::Io { path, source }),
    };
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
    let eos = config::token_ids(json.get("eos_token_id"))?;
    let bos = config::token_ids(json.get("bos_token_id"))?
        .first()
        .copied();
    Ok((eos, bos))
}
