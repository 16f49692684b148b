//! The safetensors files of a HF checkpoint, memory-mapped: `model.safetensors`, or the shards
//! listed in `model.safetensors.index.json`. Tensors are copied out of the maps one at a time
//! in their stored dtype (bf16 / f16 / f32), so loading never holds a second full copy.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device};

use crate::model::ModelError;

pub struct SafetensorsFiles {
    files: MmapedSafetensors,
    /// Tensor name -> (dtype, shape).
    index: HashMap<String, (Option<DType>, Vec<usize>)>,
    pub paths: Vec<PathBuf>,
}

/// `[out, in]` rows reordered: new row `r` is old row `map(r)`.
pub type RowMap<'a> = &'a dyn Fn(usize) -> usize;

impl SafetensorsFiles {
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let paths = weight_files(dir)?;
        // SAFETY: the maps are read-only, and the checkpoint files are not modified while the
        // shard loads them (the hub client writes new revisions to new blob files).
        let files = unsafe { MmapedSafetensors::multi(&paths) }
            .map_err(|e| ModelError::Format(format!("safetensors in {}: {e}", dir.display())))?;
        let index = files
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                let dtype = DType::try_from(view.dtype()).ok();
                (name, (dtype, view.shape().to_vec()))
            })
            .collect();
        Ok(Self {
            files,
            index,
            paths,
        })
    }

    pub fn dims(&self, name: &str) -> Option<Vec<usize>> {
        self.index.get(name).map(|(_, shape)| shape.clone())
    }

    /// Stored dtype; `None` for types candle does not know.
    pub fn dtype(&self, name: &str) -> Option<DType> {
        self.index.get(name).and_then(|(dtype, _)| *dtype)
    }

    /// Bytes of all tensors.
    pub fn total_bytes(&self) -> usize {
        self.index
            .values()
            .map(|(d, s)| d.map_or(0, |d| d.size_in_bytes()) * s.iter().product::<usize>())
            .sum()
    }

    /// The tensor in its stored float type, rows (first dim) reordered by `rows` if given.
    pub fn tensor(&self, name: &str, rows: Option<RowMap<'_>>) -> Result<QTensor, ModelError> {
        let view = self
            .files
            .get(name)
            .map_err(|_| ModelError::Format(format!("missing tensor {name}")))?;
        let ggml = match DType::try_from(view.dtype()) {
            Ok(DType::BF16) => GgmlDType::BF16,
            Ok(DType::F16) => GgmlDType::F16,
            Ok(DType::F32) => GgmlDType::F32,
            _ => {
                let other = view.dtype();
                return Err(ModelError::Format(format!(
                    "tensor {name} is {other:?} (supported: BF16, F16, F32)"
                )));
            }
        };
        let shape = view.shape().to_vec();
        let data = view.data();
        let bytes = match (rows, shape.first()) {
            (Some(map), Some(&n)) if n > 0 => permute_rows(data, n, map),
            _ => data.to_vec(),
        };
        let storage = QStorage::from_data(std::borrow::Cow::Owned(bytes), &Device::Cpu, ggml)
            .map_err(|e| ModelError::Format(format!("tensor {name}: {e}")))?;
        QTensor::new(storage, shape).map_err(|e| ModelError::Format(format!("tensor {name}: {e}")))
    }
}

/// Whole rows moved as bytes: works for every dtype and for 1-D tensors (biases).
fn permute_rows(data: &[u8], rows: usize, map: RowMap<'_>) -> Vec<u8> {
    let width = data.len() / rows;
    let mut out = Vec::with_capacity(data.len());
    for r in 0..rows {
        let src = map(r);
        out.extend_from_slice(&data[src * width..(src + 1) * width]);
    }
    out
}

/// `model.safetensors`, else every file named by `model.safetensors.index.json`.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index_path = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index_path).map_err(|e| {
        ModelError::Format(format!(
            "{} has neither model.safetensors nor a readable model.safetensors.index.json ({e})",
            dir.display()
        ))
    })?;
    let index: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Format(format!("{}: {e}", index_path.display())))?;
    let map = index
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Format(format!("{}: no weight_map", index_path.display())))?;
    // A value that is not a file name is a broken index, said as such (skipping it made its
    // tensor fail later as "missing").
    let mut names = BTreeSet::new();
    for (tensor, file) in map {
        let name = file.as_str().ok_or_else(|| {
            ModelError::Format(format!(
                "{}: weight_map entry {tensor:?} is {file}, not a file name",
                index_path.display()
            ))
        })?;
        names.insert(name);
    }
    // Every name is checked before any file is looked at, so a crafted index is refused as
    // such rather than reported as a missing shard.
    if let Some(bad) = names.iter().find(|name| !is_plain_file_name(name)) {
        return Err(ModelError::UnsafeShardPath {
            index: index_path,
            entry: (*bad).to_string(),
        });
    }
    let mut paths = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(name);
        if !path.is_file() {
            return Err(ModelError::Format(format!(
                "{} lists {name}, which is missing",
                index_path.display()
            )));
        }
        paths.push(path);
    }
    if paths.is_empty() {
        return Err(ModelError::Format(format!(
            "{}: empty weight_map",
            index_path.display()
        )));
    }
    Ok(paths)
}

/// One normal path component with no separator of any platform: `dir.join(name)` then
/// stays in `dir`. Rejects `..`, `.`, empty, absolute (`/x`, `C:\x`) and nested (`a/b`,
/// `a\b`) names. A shard that is a symlink inside the directory is still followed, as the
/// HF hub cache's snapshot directories are made of such links.
fn is_plain_file_name(name: &str) -> bool {
    let mut components = Path::new(name).components();
    matches!(
        (components.next(), components.next()),
        (Some(std::path::Component::Normal(_)), None)
    ) && !name.contains(['/', '\\'])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    #[test]
    fn rows_move_as_whole_rows() {
        let data: Vec<u8> = (0..12).collect();
        let out = permute_rows(&data, 3, &|r| 2 - r);
        assert_eq!(out, vec![8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3]);
    }

    #[test]
    fn missing_shard_is_named() {
        let dir = std::env::temp_dir().join(format!("pagedserve-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let index = r#"{"weight_map": {"a": "model-00001-of-00002.safetensors"}}"#;
        std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
        let err = SafetensorsFiles::open(&dir).err().unwrap().to_string();
        assert!(err.contains("model-00001-of-00002.safetensors"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
        let err = SafetensorsFiles::open(&dir).err().unwrap().to_string();
        assert!(err.contains("model.safetensors"), "{err}");
    }

    #[test]
    fn a_weight_map_value_that_is_not_a_file_name_is_an_error() {
        let dir = std::env::temp_dir().join(format!("pagedserve-st-notstr-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let index = r#"{"weight_map": {"lm_head.weight": 3}}"#;
        std::fs::write(dir.join("model.safetensors.index.json"), index).unwrap();
        let err = SafetensorsFiles::open(&dir).err().unwrap().to_string();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            err.contains("\"lm_head.weight\" is 3, not a file name"),
            "{err}"
        );
    }

    /// A crafted index must not make the loader open files outside the model directory: each
    /// such entry is refused with an error naming it, even when the target exists.
    #[test]
    fn index_entries_outside_the_model_dir_are_refused() {
        let root =
            std::env::temp_dir().join(format!("pagedserve-st-escape-{}", std::process::id()));
        let dir = root.join("model");
        std::fs::create_dir_all(&dir).unwrap();
        // A real file next to the model directory, reachable by `../`.
        std::fs::write(root.join("outside.safetensors"), b"not a checkpoint").unwrap();
        let outside = root.join("outside.safetensors").display().to_string();
        for entry in [
            "../../etc/passwd",
            "../outside.safetensors",
            outside.as_str(),
            "/etc/passwd",
            "..",
            ".",
            "",
            "sub/model.safetensors",
            "sub\\model.safetensors",
        ] {
            let index = serde_json::json!({
                "weight_map": {"a": "model-00001-of-00002.safetensors", "b": entry}
            });
            std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
            let err = SafetensorsFiles::open(&dir).err().unwrap();
            assert!(
                matches!(&err, ModelError::UnsafeShardPath { entry: e, .. } if e == entry),
                "{entry:?}: {err}"
            );
            let message = err.to_string();
            assert!(message.contains(&format!("`{entry}`")), "{message}");
            assert!(
                message.contains("model.safetensors.index.json"),
                "{message}"
            );
        }
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn plain_shard_names_are_accepted() {
        for name in [
            "model-00001-of-00002.safetensors",
            "model..safetensors",
            "..hidden",
            ".safetensors",
        ] {
            assert!(is_plain_file_name(name), "{name}");
        }
    }
}
