//! A GGUF file: metadata, tensors on demand, and the model facts derived from them.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::Device;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value};
use candle_core::quantized::{GgmlDType, QTensor};

use crate::model::config::opt_usize;
use crate::model::source::ModelSource;
use crate::model::{LlamaConfig, ModelError};

/// Chat-template end-of-turn tokens that also end generation when the template uses them.
const END_OF_TURN_TOKENS: &[&str] = &["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"];

pub struct GgufFile {
    path: PathBuf,
    content: Content,
    reader: BufReader<File>,
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        let io = |source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let file_len = file.metadata().map_err(io)?.len();
        let mut reader = BufReader::new(file);
        let content = read_content(&mut reader)
            .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        for (name, info) in &content.tensor_infos {
            check_tensor_extent(name, info, content.tensor_data_offset, file_len)
                .map_err(|e| ModelError::Format(format!("{}: {e}", path.display())))?;
        }
        Ok(Self {
            path: path.to_path_buf(),
            content,
            reader,
        })
    }

    pub fn metadata(&self) -> &HashMap<String, Value> {
        &self.content.metadata
    }

    pub fn has_tensor(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// Shape of a tensor as candle reports it (`[out, in]` for matrices).
    pub fn tensor_dims(&self, name: &str) -> Option<Vec<usize>> {
        self.content
            .tensor_infos
            .get(name)
            .map(|t| t.shape.dims().to_vec())
    }

    pub fn tensor(&mut self, name: &str) -> Result<QTensor, ModelError> {
        if !self.has_tensor(name) {
            return Err(ModelError::Format(format!(
                "{}: missing tensor {name}",
                self.path.display()
            )));
        }
        self.content
            .tensor(&mut self.reader, name, &Device::Cpu)
            .map_err(|e| ModelError::Format(format!("tensor {name}: {e}")))
    }

    /// Elements of all tensors together.
    pub fn total_elems(&self) -> usize {
        self.content
            .tensor_infos
            .values()
            .map(|t| t.shape.elem_count())
            .fold(0usize, usize::saturating_add)
    }

    /// The weight type holding most elements among the matrices, e.g. "q4_1".
    pub fn dominant_dtype(&self) -> String {
        let mut by_type: HashMap<GgmlDType, usize> = HashMap::new();
        for info in self
            .content
            .tensor_infos
            .values()
            .filter(|t| t.shape.rank() >= 2)
        {
            let n = by_type.entry(info.ggml_dtype).or_default();
            *n = n.saturating_add(info.shape.elem_count());
        }
        by_type
            .into_iter()
            .max_by_key(|(_, n)| *n)
            .map_or_else(|| "unknown".to_string(), |(t, _)| dtype_name(t))
    }

    pub fn bos_token_id(&self) -> Result<Option<u32>, ModelError> {
        token_id(self.metadata(), "tokenizer.ggml.bos_token_id")
    }

    /// The EOS token plus the template's end-of-turn token, deduplicated.
    pub fn eos_token_ids(&self) -> Result<Vec<u32>, ModelError> {
        let md = self.metadata();
        let mut ids: Vec<u32> = token_id(md, "tokenizer.ggml.eos_token_id")?
            .into_iter()
            .collect();
        let template = md
            .get("tokenizer.chat_template")
            .and_then(|v| v.to_string().ok());
        let tokens = md
            .get("tokenizer.ggml.tokens")
            .and_then(|v| v.to_vec().ok());
        if let (Some(template), Some(tokens)) = (template, tokens) {
            for marker in END_OF_TURN_TOKENS.iter().filter(|m| template.contains(**m)) {
                let found = tokens
                    .iter()
                    .position(|t| t.to_string().is_ok_and(|s| s == marker));
                if let Some(id) = found.and_then(|i| u32::try_from(i).ok())
                    && !ids.contains(&id)
                {
                    ids.push(id);
                }
            }
        }
        Ok(ids)
    }
}

/// candle's header reader, with its panics turned into errors. It divides by
/// `general.alignment` unchecked, so a file with alignment 0 panicked the shard ("attempt to
/// divide by zero", found by tests/malformed_models.rs); it is the only panic we know of, but a
/// parser of untrusted bytes in a dependency gets the net anyway. The panic hook still logs it.
fn read_content(reader: &mut BufReader<File>) -> Result<Content, String> {
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Content::read(reader)));
    match read {
        Ok(content) => content.map_err(|e| e.to_string()),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let hint = match msg.contains("divide by zero") {
                true => " (is general.alignment 0?)",
                false => "",
            };
            Err(format!(
                "malformed GGUF header: the reader failed with `{msg}`{hint}"
            ))
        }
    }
}

/// Checks that a tensor's element count and byte size fit in `usize` and that its bytes lie
/// inside the file. candle computes both with unchecked products when the tensor is read, so
/// a crafted or corrupt dimension (say 2^40 x 2^40) overflowed there: a panic in debug
/// builds, and in release a wrapped size that passed candle's bounds check and reached an
/// out-of-bounds `slice::from_raw_parts`. Checking at open also turns a truncated download
/// into one error up front instead of one after the layers before the cut were loaded.
fn check_tensor_extent(
    name: &str,
    info: &TensorInfo,
    data_offset: u64,
    file_len: u64,
) -> Result<(), String> {
    let dims = info.shape.dims();
    let elems = dims
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| format!("tensor {name}: shape {dims:?} overflows"))?;
    let block = info.ggml_dtype.block_size();
    if !elems.is_multiple_of(block) {
        return Err(format!(
            "tensor {name}: {elems} elements are not whole {} blocks of {block}",
            dtype_name(info.ggml_dtype)
        ));
    }
    let bytes = (elems / block)
        .checked_mul(info.ggml_dtype.type_size())
        .and_then(|b| u64::try_from(b).ok())
        .ok_or_else(|| format!("tensor {name}: shape {dims:?} overflows"))?;
    let end = data_offset
        .checked_add(info.offset)
        .and_then(|start| start.checked_add(bytes));
    match end {
        Some(end) if end <= file_len => Ok(()),
        _ => Err(format!(
            "tensor {name} ({bytes} bytes at data offset {}) runs past the end of the file \
             ({file_len} bytes): truncated or corrupt",
            info.offset
        )),
    }
}

fn token_id(md: &HashMap<String, Value>, key: &str) -> Result<Option<u32>, ModelError> {
    opt_usize(md, key)?
        .map(|id| u32::try_from(id).map_err(|_| ModelError::Format(format!("{key} = {id}"))))
        .transpose()
}

pub fn dtype_name(t: GgmlDType) -> String {
    match t {
        GgmlDType::Q2K => "q2_k".into(),
        GgmlDType::Q3K => "q3_k".into(),
        GgmlDType::Q4K => "q4_k".into(),
        GgmlDType::Q5K => "q5_k".into(),
        GgmlDType::Q6K => "q6_k".into(),
        GgmlDType::Q8K => "q8_k".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl ModelSource for GgufFile {
    fn config(&self) -> Result<LlamaConfig, ModelError> {
        LlamaConfig::from_metadata(self.metadata())
    }

    fn tensor_dims(&self, name: &str) -> Option<Vec<usize>> {
        GgufFile::tensor_dims(self, name)
    }

    fn tensor(&mut self, name: &str) -> Result<QTensor, ModelError> {
        GgufFile::tensor(self, name)
    }

    fn dtype_name(&self) -> String {
        self.dominant_dtype()
    }

    fn eos_token_ids(&self) -> Result<Vec<u32>, ModelError> {
        GgufFile::eos_token_ids(self)
    }

    fn bos_token_id(&self) -> Result<Option<u32>, ModelError> {
        GgufFile::bos_token_id(self)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    #[test]
    fn dtype_names_are_lowercase_ggml_names() {
        assert_eq!(dtype_name(GgmlDType::Q4_1), "q4_1");
        assert_eq!(dtype_name(GgmlDType::Q4K), "q4_k");
        assert_eq!(dtype_name(GgmlDType::BF16), "bf16");
    }

    fn info(dims: &[usize], offset: u64) -> TensorInfo {
        TensorInfo {
            ggml_dtype: GgmlDType::F32,
            shape: dims.to_vec().into(),
            offset,
        }
    }

    #[test]
    fn tensor_extent_must_fit_usize_and_the_file() {
        assert_eq!(
            check_tensor_extent("t", &info(&[4, 8], 0), 64, 64 + 128),
            Ok(())
        );
        let overflow = check_tensor_extent("t", &info(&[1 << 40, 1 << 40], 0), 64, 1 << 20);
        assert!(overflow.unwrap_err().contains("overflows"));
        // Fits usize as elements, not as bytes (4 bytes each).
        let bytes = check_tensor_extent("t", &info(&[1 << 62], 0), 64, 1 << 20);
        assert!(bytes.unwrap_err().contains("overflows"));
        let past = check_tensor_extent("t", &info(&[4, 8], 1), 64, 64 + 128);
        assert!(past.unwrap_err().contains("past the end"), "one byte short");
        let wrap = check_tensor_extent("t", &info(&[4], u64::MAX - 8), 64, 1 << 20);
        assert!(wrap.unwrap_err().contains("past the end"));
        let q = TensorInfo {
            ggml_dtype: GgmlDType::Q4_1,
            ..info(&[33], 0)
        };
        let partial = check_tensor_extent("t", &q, 64, 1 << 20);
        assert!(partial.unwrap_err().contains("blocks of 32"));
    }

    #[test]
    fn open_reports_missing_and_garbage_files() {
        let missing = GgufFile::open(Path::new("/nonexistent/model.gguf"));
        assert!(matches!(missing, Err(ModelError::Io { .. })));
        let dir = std::env::temp_dir().join(format!("pagedserve-gguf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad.gguf");
        std::fs::write(&bad, b"not a gguf file at all").unwrap();
        assert!(matches!(GgufFile::open(&bad), Err(ModelError::Format(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
