//! The HF hub cache layout, as `huggingface_hub` and `hf-hub` write it:
//! `<cache>/models--org--name/refs/<revision>` holds a commit hash,
//! `snapshots/<commit>/<file>` are symlinks into `blobs/<etag>`.

use std::path::{Path, PathBuf};

/// One repo's directory in the cache.
#[derive(Debug, Clone)]
pub struct RepoCache {
    pub dir: PathBuf,
}

impl RepoCache {
    pub fn new(cache_dir: &Path, repo: &str) -> Self {
        Self {
            dir: cache_dir.join(format!("models--{}", repo.replace('/', "--"))),
        }
    }

    /// The commit `revision` names: itself when it is a commit hash with a snapshot, else the
    /// content of `refs/<revision>` (branches and tags).
    pub fn commit(&self, revision: &str) -> Option<String> {
        if is_commit_hash(revision) && self.dir.join("snapshots").join(revision).is_dir() {
            return Some(revision.to_string());
        }
        let text = std::fs::read_to_string(self.dir.join("refs").join(revision)).ok()?;
        Some(text.trim().to_string()).filter(|c| !c.is_empty())
    }

    /// `snapshots/<commit>` of `revision`, when it exists.
    pub fn snapshot(&self, revision: &str) -> Option<PathBuf> {
        let dir = self.dir.join("snapshots").join(self.commit(revision)?);
        dir.is_dir().then_some(dir)
    }
}

fn is_commit_hash(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a model directory lacks to be served: `config.json`, `tokenizer.json`, and the
/// weights (`model.safetensors`, or the index and every shard it names). Dangling symlinks
/// (a blob deleted from the cache) count as missing.
#[cfg(test)]
pub fn missing_files(dir: &Path) -> Vec<String> {
    missing_serving_files(dir, true)
}

/// [`missing_files`], with `weights: false` checking only the config and the tokenizer (for
/// `--load-format dummy`, which draws random weights).
pub fn missing_serving_files(dir: &Path, weights: bool) -> Vec<String> {
    let mut missing: Vec<String> = ["config.json", "tokenizer.json"]
        .into_iter()
        .filter(|f| !dir.join(f).is_file())
        .map(str::to_string)
        .collect();
    if !weights || dir.join("model.safetensors").is_file() {
        return missing;
    }
    match shard_names(&dir.join("model.safetensors.index.json")) {
        Some(shards) => missing.extend(shards.into_iter().filter(|s| !dir.join(s).is_file())),
        None => missing.push("model.safetensors (or model.safetensors.index.json)".into()),
    }
    missing
}

/// The distinct files of a `model.safetensors.index.json` weight map, in order.
pub fn shard_names(index: &Path) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(index).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let mut names: Vec<String> = json
        .get("weight_map")?
        .as_object()?
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAIN: &str = "1111111111111111111111111111111111111111";
    const OLD: &str = "2222222222222222222222222222222222222222";

    /// A cache laid out like the hub client leaves it: blobs, symlinked snapshots, refs.
    fn fake_cache(name: &str) -> (PathBuf, RepoCache) {
        let root =
            std::env::temp_dir().join(format!("pagedserve-hubcache-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let repo = RepoCache::new(&root, "org/tiny");
        let blobs = repo.dir.join("blobs");
        std::fs::create_dir_all(&blobs).expect("blobs");
        std::fs::create_dir_all(repo.dir.join("refs")).expect("refs");
        for (commit, files) in [
            (
                MAIN,
                vec!["config.json", "tokenizer.json", "model.safetensors"],
            ),
            (OLD, vec!["config.json", "model.safetensors"]),
        ] {
            let snap = repo.dir.join("snapshots").join(commit);
            std::fs::create_dir_all(&snap).expect("snapshot");
            for f in files {
                let blob = blobs.join(format!("{commit}-{f}"));
                std::fs::write(&blob, f).expect("blob");
                std::os::unix::fs::symlink(format!("../../blobs/{commit}-{f}"), snap.join(f))
                    .expect("symlink");
            }
        }
        std::fs::write(repo.dir.join("refs/main"), MAIN).expect("ref");
        std::fs::write(repo.dir.join("refs/v1"), format!("{OLD}\n")).expect("ref");
        (root, repo)
    }

    #[test]
    fn revisions_resolve_through_refs_and_hashes() {
        let (root, repo) = fake_cache("refs");
        assert_eq!(repo.dir, root.join("models--org--tiny"));
        assert_eq!(
            repo.snapshot("main"),
            Some(repo.dir.join("snapshots").join(MAIN))
        );
        assert_eq!(
            repo.snapshot("v1"),
            Some(repo.dir.join("snapshots").join(OLD))
        );
        assert_eq!(
            repo.snapshot(OLD),
            Some(repo.dir.join("snapshots").join(OLD))
        );
        assert_eq!(repo.snapshot("nope"), None);
        assert_eq!(repo.snapshot(&"3".repeat(40)), None);
        let main = repo.snapshot("main").expect("main");
        assert!(missing_files(&main).is_empty());
        let old = repo.snapshot("v1").expect("v1");
        assert_eq!(missing_files(&old), vec!["tokenizer.json"]);
        // A blob removed behind the symlink is a missing file.
        std::fs::remove_file(repo.dir.join(format!("blobs/{MAIN}-model.safetensors"))).expect("rm");
        assert_eq!(missing_files(&main).len(), 1);
        std::fs::remove_dir_all(root).expect("cleanup");
    }

    #[test]
    fn sharded_weights_need_every_shard() {
        let dir = std::env::temp_dir().join(format!("pagedserve-hubshards-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        for f in ["config.json", "tokenizer.json", "a.safetensors"] {
            std::fs::write(dir.join(f), "x").expect("write");
        }
        let index =
            r#"{"weight_map": {"x": "a.safetensors", "y": "b.safetensors", "z": "a.safetensors"}}"#;
        std::fs::write(dir.join("model.safetensors.index.json"), index).expect("write");
        assert_eq!(missing_files(&dir), vec!["b.safetensors"]);
        std::fs::write(dir.join("b.safetensors"), "x").expect("write");
        assert!(missing_files(&dir).is_empty());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
