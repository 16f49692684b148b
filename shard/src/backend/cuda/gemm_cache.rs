//! The GEMM tuning cache on disk: one small JSON file per (device, cuBLASLt version, shape
//! list) in the kernel cache directory, beside the NVRTC PTX, so a later start with the same
//! model on the same kind of GPU skips the timing. It stores, per (shape, row bucket), the
//! chosen algorithm's index in the heuristic's list for that bucket: the heuristic is
//! deterministic for one library on one device, and its algorithms are opaque (no stable
//! serialized form), so the index is what can be stored. The loader re-checks each algorithm
//! with `cublasLtMatmulAlgoCheck` and falls back to the first pick where it fails.
//!
//! The file carries its whole key; a file whose key differs (another device or library, a
//! hash collision of the name) or that does not parse or is incomplete is ignored with a
//! warning and overwritten by the next tuning, never an error.

use std::collections::HashSet;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::gemm::{GemmShape, OutType};

/// Bumped whenever the file's meaning changes (the key, the picks, the bucket semantics).
pub(super) const FORMAT: u32 = 1;

/// What the stored picks are valid for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(super) struct CacheKey {
    pub format: u32,
    /// The device's name (`NVIDIA H100 80GB HBM3`) and compute capability (`9.0`).
    pub device: String,
    pub compute_capability: String,
    /// `cublasLtGetVersion`.
    pub cublaslt: u64,
    /// The workspace limit and the candidates asked of the heuristic: both change its list.
    pub workspace_bytes: u64,
    pub candidates: u32,
    /// Every tuned shape with its row buckets (the upper bound of each), sorted.
    pub shapes: Vec<ShapeKey>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub(super) struct ShapeKey {
    pub out: OutType,
    pub n: usize,
    pub k: usize,
    pub buckets: Vec<usize>,
}

/// The algorithm chosen for one (shape, bucket): its index in the heuristic's list for the
/// bucket's largest row count (0: the first pick).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Pick {
    pub out: OutType,
    pub n: usize,
    pub k: usize,
    pub bucket: usize,
    pub index: usize,
}

impl Pick {
    pub fn new(shape: GemmShape, bucket: usize, index: usize) -> Self {
        Pick {
            out: shape.out,
            n: shape.n,
            k: shape.k,
            bucket,
            index,
        }
    }

    pub fn shape(&self) -> GemmShape {
        GemmShape {
            out: self.out,
            n: self.n,
            k: self.k,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    key: CacheKey,
    picks: Vec<Pick>,
}

/// The file's name: a hash of the key (only to keep names apart; the key inside decides).
pub(super) fn file_name(key: &CacheKey) -> String {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    format!("gemm-tune-{:016x}.json", h.finish())
}

pub(super) fn encode(key: &CacheKey, picks: &[Pick]) -> serde_json::Result<String> {
    let file = CacheFile {
        key: key.clone(),
        picks: picks.to_vec(),
    };
    serde_json::to_string_pretty(&file)
}

/// The picks `text` stores for `key`, or why it can't be used: it does not parse, its key is
/// another, or its picks are not exactly one valid index for each (shape, bucket) of the key.
pub(super) fn decode(text: &str, key: &CacheKey) -> Result<Vec<Pick>, String> {
    let file: CacheFile = serde_json::from_str(text).map_err(|e| format!("unreadable: {e}"))?;
    if file.key != *key {
        return Err(format!(
            "made for another device, library or model (device {:?} {}, cuBLASLt {}, {} shapes)",
            file.key.device,
            file.key.compute_capability,
            file.key.cublaslt,
            file.key.shapes.len()
        ));
    }
    let mut expected: HashSet<(OutType, usize, usize, usize)> = key
        .shapes
        .iter()
        .flat_map(|s| s.buckets.iter().map(|&b| (s.out, s.n, s.k, b)))
        .collect();
    for p in &file.picks {
        if p.index >= key.candidates as usize {
            return Err(format!(
                "pick {} for {}x{} at {} rows is beyond the {} candidates",
                p.index, p.n, p.k, p.bucket, key.candidates
            ));
        }
        if !expected.remove(&(p.out, p.n, p.k, p.bucket)) {
            return Err(format!(
                "unexpected or repeated pick for {}x{} ({:?} out) at {} rows",
                p.n, p.k, p.out, p.bucket
            ));
        }
    }
    if !expected.is_empty() {
        return Err(format!("{} (shape, bucket) picks missing", expected.len()));
    }
    Ok(file.picks)
}

/// The picks cached in `dir` for `key`: `None` when there is no file (a first start), or,
/// with a warning, when there is one that can't be used.
pub(super) fn load(dir: &Path, key: &CacheKey) -> Option<Vec<Pick>> {
    let path = dir.join(file_name(key));
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "GEMM tuning cache unreadable; tuning again");
            return None;
        }
    };
    match decode(&text, key) {
        Ok(picks) => Some(picks),
        Err(why) => {
            tracing::warn!(path = %path.display(), %why, "GEMM tuning cache ignored; tuning again");
            None
        }
    }
}

/// Writes the picks for `key` into `dir`: to a temporary name, then renamed, so that shards
/// starting together never read a half-written file (as the PTX cache does).
pub(super) fn store(dir: &Path, key: &CacheKey, picks: &[Pick]) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join(file_name(key));
    let tmp = PathBuf::from(format!("{}.{}.tmp", path.display(), std::process::id()));
    std::fs::write(&tmp, encode(key, picks).map_err(std::io::Error::other)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        CacheKey {
            format: FORMAT,
            device: "NVIDIA H100 80GB HBM3".into(),
            compute_capability: "9.0".into(),
            cublaslt: 130100,
            workspace_bytes: 32 << 20,
            candidates: 16,
            shapes: vec![
                ShapeKey {
                    out: OutType::Bf16,
                    n: 6144,
                    k: 4096,
                    buckets: vec![48, 64, 96],
                },
                ShapeKey {
                    out: OutType::F32,
                    n: 128256,
                    k: 4096,
                    buckets: vec![48],
                },
            ],
        }
    }

    fn picks() -> Vec<Pick> {
        let p = |out, n, bucket, index| Pick {
            out,
            n,
            k: 4096,
            bucket,
            index,
        };
        vec![
            p(OutType::Bf16, 6144, 48, 0),
            p(OutType::Bf16, 6144, 64, 3),
            p(OutType::Bf16, 6144, 96, 15),
            p(OutType::F32, 128256, 48, 1),
        ]
    }

    #[test]
    fn picks_round_trip() {
        let text = encode(&key(), &picks()).expect("encode");
        assert_eq!(decode(&text, &key()), Ok(picks()));
        // The output type is stored by name.
        assert!(
            text.contains("\"f32\"") && text.contains("\"bf16\""),
            "{text}"
        );
    }

    #[test]
    fn a_foreign_file_is_refused() {
        let text = encode(&key(), &picks()).expect("encode");
        let mut other = key();
        other.device = "NVIDIA A100-SXM4-80GB".into();
        assert!(decode(&text, &other).is_err(), "another device");
        let mut other = key();
        other.cublaslt = 120900;
        assert!(decode(&text, &other).is_err(), "another cuBLASLt");
        let mut other = key();
        other.shapes[0].buckets.push(128);
        assert!(decode(&text, &other).is_err(), "another shape list");
        // Keys that differ get different file names too.
        assert_ne!(file_name(&key()), file_name(&other));
        assert_eq!(file_name(&key()), file_name(&key()));
    }

    #[test]
    fn a_corrupt_or_incomplete_file_is_refused() {
        let text = encode(&key(), &picks()).expect("encode");
        assert!(
            decode(&text[..text.len() / 2], &key()).is_err(),
            "truncated"
        );
        assert!(decode("", &key()).is_err(), "empty");
        assert!(decode("{\"key\": 1}", &key()).is_err(), "wrong types");
        let mut short = picks();
        short.pop();
        assert!(
            decode(&encode(&key(), &short).expect("encode"), &key()).is_err(),
            "a pick missing"
        );
        let mut twice = picks();
        twice[1] = twice[0];
        assert!(
            decode(&encode(&key(), &twice).expect("encode"), &key()).is_err(),
            "a pick repeated"
        );
        let mut wide = picks();
        wide[0].index = 16;
        assert!(
            decode(&encode(&key(), &wide).expect("encode"), &key()).is_err(),
            "an index past the list"
        );
        let mut stray = picks();
        stray[0].bucket = 50;
        assert!(
            decode(&encode(&key(), &stray).expect("encode"), &key()).is_err(),
            "not a bucket"
        );
    }

    #[test]
    fn the_file_round_trips_and_a_bad_one_is_ignored() {
        let dir = std::env::temp_dir().join(format!(
            "pagedserve-gemm-cache-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(load(&dir, &key()), None, "no file yet");
        let path = store(&dir, &key(), &picks()).expect("store the cache");
        assert_eq!(load(&dir, &key()), Some(picks()));
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("list the cache dir")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
        std::fs::write(&path, "not json").expect("overwrite");
        assert_eq!(load(&dir, &key()), None, "corrupt: ignored");
        // A file of another key under this key's name (a hash collision) is ignored too.
        let mut other = key();
        other.compute_capability = "8.0".into();
        std::fs::write(&path, encode(&other, &picks()).expect("encode")).expect("overwrite");
        assert_eq!(load(&dir, &key()), None, "foreign: ignored");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
