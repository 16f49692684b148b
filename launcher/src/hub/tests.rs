//! Resolution and downloads against [`MockHub`]: the HF cache layout the hub client writes,
//! tokens, a resumed download, offline mode and the errors users see.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::mock_hub::{MockHub, MockRepo};
use super::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// The tiny Llama checkpoint the shard tests use, as a hub repo would hold it.
fn tiny_llama_files() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shard/tests/data/hf/llama");
    let mut files: Vec<(String, Vec<u8>)> = [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    .iter()
    .map(|f| {
        (
            f.to_string(),
            std::fs::read(dir.join(f)).expect("fixture file"),
        )
    })
    .collect();
    // Hub repos carry more than a server needs; it must not be fetched.
    files.push(("pytorch_model.bin".into(), vec![0; 64]));
    files
}

fn repo(files: Vec<(String, Vec<u8>)>, token: Option<&str>) -> MockRepo {
    MockRepo {
        commit: COMMIT.into(),
        files,
        token: token.map(str::to_string),
    }
}

fn temp_cache(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("pagedserve-hub-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn settings(hub: &MockHub, cache: &Path, token: Option<&str>, offline: bool) -> HubSettings {
    HubSettings {
        cache_dir: cache.to_path_buf(),
        endpoint: hub.endpoint.clone(),
        token: token.map(str::to_string),
        offline,
        progress: false,
        skip_weights: false,
    }
}

async fn hub_with(repos: Vec<(&str, MockRepo)>, drop_from: Option<usize>) -> MockHub {
    let repos: HashMap<String, MockRepo> =
        repos.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    MockHub::start(repos, drop_from).await
}

#[tokio::test]
async fn downloads_into_the_hf_cache_layout_then_serves_from_it_offline() {
    let files = tiny_llama_files();
    let hub = hub_with(vec![("org/tiny-llama", repo(files.clone(), None))], None).await;
    let cache = temp_cache("layout");
    let got = resolve("org/tiny-llama", None, &settings(&hub, &cache, None, false))
        .await
        .expect("download");
    let repo_dir = cache.join("models--org--tiny-llama");
    assert_eq!(got.path, repo_dir.join("snapshots").join(COMMIT));
    assert_eq!(got.served_name, "org/tiny-llama");
    let main = std::fs::read_to_string(repo_dir.join("refs/main")).expect("refs/main");
    assert_eq!(main.trim(), COMMIT);
    for (name, data) in files.iter().filter(|(n, _)| n != "pytorch_model.bin") {
        let link = got.path.join(name);
        let target = std::fs::read_link(&link).expect("snapshot entries are symlinks");
        assert!(
            target.starts_with("../../blobs"),
            "{name} -> {}",
            target.display()
        );
        assert_eq!(&std::fs::read(&link).expect("read"), data, "{name}");
    }
    assert!(!got.path.join("pytorch_model.bin").exists());
    let requested = hub.log().len();
    assert!(
        !hub.log()
            .iter()
            .any(|r| r.path.ends_with("pytorch_model.bin"))
    );

    // Cached: neither an offline nor an online resolve touches the network.
    let offline = resolve(
        "org/tiny-llama",
        Some("main"),
        &settings(&hub, &cache, None, true),
    )
    .await
    .expect("offline");
    assert_eq!(offline, got);
    let again = resolve("org/tiny-llama", None, &settings(&hub, &cache, None, false))
        .await
        .expect("cached");
    assert_eq!(again, got);
    assert_eq!(hub.log().len(), requested, "no request once cached");
    let by_hash = resolve(
        "org/tiny-llama",
        Some(COMMIT),
        &settings(&hub, &cache, None, true),
    )
    .await
    .expect("by commit");
    assert_eq!(by_hash.path, got.path);
    let _ = std::fs::remove_dir_all(&cache);
}

#[tokio::test]
async fn gated_repo_needs_a_token() {
    let hub = hub_with(
        vec![("org/gated", repo(tiny_llama_files(), Some("hf_secret")))],
        None,
    )
    .await;
    let cache = temp_cache("gated");
    let err = resolve("org/gated", None, &settings(&hub, &cache, None, false))
        .await
        .expect_err("no token");
    assert!(
        matches!(err, HubError::Unauthorized { status: 401, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HF_TOKEN"), "{err}");
    let wrong = resolve(
        "org/gated",
        None,
        &settings(&hub, &cache, Some("nope"), false),
    )
    .await;
    assert!(matches!(wrong, Err(HubError::Unauthorized { .. })));
    let ok = resolve(
        "org/gated",
        None,
        &settings(&hub, &cache, Some("hf_secret"), false),
    )
    .await
    .expect("with the token");
    assert!(ok.path.join("model.safetensors").is_file());
    assert!(
        hub.log()
            .iter()
            .any(|r| r.authorization.as_deref() == Some("Bearer hf_secret"))
    );
    let _ = std::fs::remove_dir_all(&cache);
}

#[tokio::test]
async fn interrupted_download_resumes_where_it_stopped() {
    // Bigger than one of hf-hub's 10 MB ranges, so the first range completes and the
    // connection drops in the second.
    const SIZE: usize = 10_000_000 + 1_500_000;
    let weights: Vec<u8> = (0..SIZE).map(|i| (i * 31 % 251) as u8).collect();
    let mut files = tiny_llama_files();
    files.retain(|(n, _)| n != "model.safetensors");
    files.push(("model.safetensors".into(), weights.clone()));
    let hub = hub_with(vec![("org/big", repo(files, None))], Some(10_000_000)).await;
    let cache = temp_cache("resume");
    let s = settings(&hub, &cache, None, false);
    let err = resolve("org/big", None, &s)
        .await
        .expect_err("connection dropped");
    assert!(hub.dropped_a_connection());
    assert!(matches!(err, HubError::Download { .. }), "{err}");

    let got = resolve("org/big", None, &s).await.expect("resumed");
    let data = std::fs::read(got.path.join("model.safetensors")).expect("read");
    assert!(data == weights, "resumed file differs from the original");
    let ranges: Vec<String> = hub
        .log()
        .iter()
        .filter(|r| r.path.ends_with("/model.safetensors"))
        .filter_map(|r| r.range.clone())
        .filter(|r| r != "bytes=0-0")
        .collect();
    let first_range = ranges.iter().filter(|r| r.starts_with("bytes=0-")).count();
    assert_eq!(
        first_range, 1,
        "the first 10 MB are fetched once: {ranges:?}"
    );
    let second_range = ranges
        .iter()
        .filter(|r| r.starts_with("bytes=10000000-"))
        .count();
    assert_eq!(
        second_range, 2,
        "the broken range is fetched again: {ranges:?}"
    );
    let _ = std::fs::remove_dir_all(&cache);
}

#[tokio::test]
async fn offline_mode_never_touches_the_network() {
    let hub = hub_with(
        vec![("org/tiny-llama", repo(tiny_llama_files(), None))],
        None,
    )
    .await;
    let cache = temp_cache("offline");
    let err = resolve("org/tiny-llama", None, &settings(&hub, &cache, None, true))
        .await
        .expect_err("not cached");
    assert!(matches!(err, HubError::OfflineMissing { .. }), "{err}");
    assert!(err.to_string().contains("HF_HUB_OFFLINE"), "{err}");
    assert!(
        hub.log().is_empty(),
        "offline made requests: {:?}",
        hub.log()
    );
}

#[tokio::test]
async fn unsupported_missing_and_unknown_repos_are_clear() {
    let mut gemma = tiny_llama_files();
    gemma[0].1 = br#"{"architectures": ["GemmaForCausalLM"]}"#.to_vec();
    let mut no_weights = tiny_llama_files();
    no_weights.retain(|(n, _)| n != "model.safetensors");
    let hub = hub_with(
        vec![
            ("org/gemma", repo(gemma, None)),
            ("org/bin-only", repo(no_weights, None)),
        ],
        None,
    )
    .await;
    let cache = temp_cache("errors");
    let s = settings(&hub, &cache, None, false);
    let err = resolve("org/gemma", None, &s).await.expect_err("gemma");
    assert!(err.to_string().contains("GemmaForCausalLM"), "{err}");
    assert!(
        !hub.log()
            .iter()
            .any(|r| r.path.contains("org/gemma/resolve/main/model")),
        "no weights fetched for an unsupported architecture"
    );
    let err = resolve("org/bin-only", None, &s)
        .await
        .expect_err("no safetensors");
    assert!(matches!(err, HubError::MissingFiles { .. }), "{err}");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    let err = resolve("org/nope", None, &s).await.expect_err("unknown");
    assert!(matches!(err, HubError::NotFound { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}

#[tokio::test]
async fn local_files_and_directories() {
    let s = HubSettings {
        cache_dir: temp_cache("local"),
        endpoint: "http://127.0.0.1:9".into(),
        token: None,
        offline: true,
        progress: false,
        skip_weights: false,
    };
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shard/tests/data/hf/qwen2");
    let got = resolve(&fixture.to_string_lossy(), None, &s)
        .await
        .expect("dir");
    assert_eq!(
        (got.path.as_path(), got.served_name.as_str()),
        (fixture.as_path(), "qwen2")
    );
    let dir = temp_cache("local-files");
    std::fs::create_dir_all(&dir).expect("dir");
    let gguf = dir.join("Model.Q4.GGUF");
    std::fs::write(&gguf, b"GGUF").expect("write");
    let got = resolve(&gguf.to_string_lossy(), None, &s)
        .await
        .expect("gguf");
    assert_eq!(got.served_name, "Model.Q4");
    let other = dir.join("weights.bin");
    std::fs::write(&other, b"x").expect("write");
    assert!(matches!(
        resolve(&other.to_string_lossy(), None, &s).await,
        Err(HubError::Local { .. })
    ));
    let err = resolve(&dir.to_string_lossy(), None, &s)
        .await
        .expect_err("empty dir");
    assert!(err.to_string().contains("config.json"), "{err}");
    for bad in [
        "/no/such/model.gguf",
        "./relative/path",
        "a/b/c",
        "missing.gguf",
    ] {
        assert!(
            matches!(resolve(bad, None, &s).await, Err(HubError::BadSpec(_))),
            "{bad}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn dummy_weights_need_only_the_config_and_the_tokenizer() {
    let hub = hub_with(
        vec![("org/tiny-llama", repo(tiny_llama_files(), None))],
        None,
    )
    .await;
    let cache = temp_cache("skip-weights");
    let dummy = HubSettings {
        skip_weights: true,
        ..settings(&hub, &cache, None, false)
    };
    let got = resolve("org/tiny-llama", None, &dummy)
        .await
        .expect("config and tokenizer");
    assert!(got.path.join("config.json").is_file() && got.path.join("tokenizer.json").is_file());
    assert!(!got.path.join("model.safetensors").exists());
    assert!(
        !hub.log().iter().any(|r| r.path.ends_with(".safetensors")),
        "no weights requested"
    );
    // The same weightless snapshot serves offline for dummy weights, not for real ones.
    let offline = |skip_weights| HubSettings {
        skip_weights,
        ..settings(&hub, &cache, None, true)
    };
    assert_eq!(
        resolve("org/tiny-llama", None, &offline(true))
            .await
            .expect("cached"),
        got
    );
    assert!(matches!(
        resolve("org/tiny-llama", None, &offline(false)).await,
        Err(HubError::OfflineMissing { .. })
    ));
    // A local directory without weights: likewise.
    let local = got.path.to_string_lossy().into_owned();
    assert!(resolve(&local, None, &offline(true)).await.is_ok());
    let err = resolve(&local, None, &offline(false))
        .await
        .expect_err("no weights");
    assert!(err.to_string().contains("model.safetensors"), "{err}");
    let _ = std::fs::remove_dir_all(&cache);
}
