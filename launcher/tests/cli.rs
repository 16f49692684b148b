//! The `pagedserve` binary's own failure modes, without starting any model.

use std::process::{Command, Output};

fn pagedserve(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pagedserve"))
        .args(args)
        .env_remove("PAGEDSERVE_MODEL")
        .env_remove("PAGEDSERVE_BIN_DIR")
        .output()
        .unwrap_or_else(|e| panic!("run pagedserve: {e}"))
}

fn combined(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn empty_dir(tag: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("pagedserve-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    dir
}

#[test]
fn help_lists_the_serve_flags() {
    let out = pagedserve(&["--help"]);
    assert!(out.status.success());
    let text = combined(&out);
    for flag in [
        "--model",
        "--served-model-name",
        "--port",
        "--api-key",
        "--num-shards",
        "--shard-base-port",
        "--threads-per-shard",
        "--enable-prefix-caching",
        "--no-enable-prefix-caching",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

/// `pagedserve` with fake child binaries, a private HF home (holding `token_file` as the
/// login token, if given) and cache, and `extra_env`.
fn with_fake_children(
    args: &[&str],
    tag: &str,
    extra_env: &[(&str, &str)],
    token_file: Option<&str>,
) -> Output {
    let bins = empty_dir(tag);
    if let Some(token) = token_file {
        std::fs::write(bins.join("token"), format!("{token}\n")).unwrap_or_else(|e| panic!("{e}"));
    }
    for name in ["pagedserve-shard", "pagedserve-router"] {
        std::fs::write(bins.join(name), b"").unwrap_or_else(|e| panic!("{e}"));
    }
    let bin_dir = bins.to_string_lossy().into_owned();
    let cache = bins.join("hf-cache");
    let mut command = Command::new(env!("CARGO_BIN_EXE_pagedserve"));
    command
        .args(args)
        .env("PAGEDSERVE_BIN_DIR", &bin_dir)
        .env_remove("PAGEDSERVE_MODEL")
        .env_remove("MODEL_NAME")
        .env_remove("HF_TOKEN")
        .env_remove("HUGGING_FACE_HUB_TOKEN")
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_HOME", &bins)
        .env("HF_HUB_CACHE", &cache)
        // Any free port: the router's port is checked first, and 8000 may be in use here.
        .env("PORT", "0");
    for (k, v) in extra_env {
        command.env(k, v);
    }
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("run pagedserve: {e}"));
    let _ = std::fs::remove_dir_all(&bins);
    out
}

#[test]
fn an_uncached_hub_model_offline_names_the_cache() {
    let out = with_fake_children(
        &["--model", "mistralai/Mistral-7B-Instruct-v0.2"],
        "offline",
        &[("HF_HUB_OFFLINE", "1")],
        None,
    );
    assert!(!out.status.success());
    let text = combined(&out);
    assert!(
        text.contains("mistralai/Mistral-7B-Instruct-v0.2")
            && text.contains("HF_HUB_OFFLINE")
            && text.contains("models--mistralai--Mistral-7B-Instruct-v0.2"),
        "{text}"
    );
}

#[test]
fn a_model_that_is_no_file_dir_or_hub_id_is_refused() {
    let out = with_fake_children(&["--model", "./no/such/model.gguf"], "badspec", &[], None);
    assert!(!out.status.success());
    let text = combined(&out);
    assert!(
        text.contains("./no/such/model.gguf") && text.contains(".gguf"),
        "{text}"
    );
}

/// A hub endpoint that answers one request with 401 (a gated repo); returns its URL and a
/// handle giving the request line and Authorization header it saw.
fn gated_endpoint() -> (String, std::thread::JoinHandle<Vec<String>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let endpoint = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        if let Ok((mut stream, _)) = listener.accept() {
            use std::io::{Read, Write};
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap_or(0);
            let request = String::from_utf8_lossy(&buf[..n]).to_string();
            seen.push(request.lines().next().unwrap_or_default().to_string());
            seen.extend(
                request
                    .lines()
                    .filter(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                    .map(|l| l.to_string()),
            );
            let body = r#"{"error":"Access to model org/gated is restricted."}"#;
            let reply = format!(
                "HTTP/1.1 401 Unauthorized\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes());
        }
        seen
    });
    (endpoint, server)
}

/// `pagedserve download` goes to `HF_ENDPOINT`; a gated answer without a token says to set
/// HF_TOKEN.
#[test]
fn download_uses_hf_endpoint_and_reports_a_gated_repo() {
    let (endpoint, server) = gated_endpoint();
    let out = with_fake_children(
        &["download", "org/gated"],
        "gated",
        &[("HF_ENDPOINT", endpoint.as_str())],
        None,
    );
    let seen = server.join().unwrap_or_default();
    assert!(!out.status.success());
    let text = combined(&out);
    assert!(
        text.contains("org/gated") && text.contains("HF_TOKEN"),
        "{text}"
    );
    assert!(text.contains("without a token"), "{text}");
    assert_eq!(
        seen,
        vec!["GET /api/models/org/gated/revision/main HTTP/1.1"]
    );
}

/// Without HF_TOKEN, the token `huggingface-cli login` saved in `$HF_HOME/token` is sent.
#[test]
fn download_sends_the_login_token_of_hf_home() {
    let (endpoint, server) = gated_endpoint();
    let out = with_fake_children(
        &["download", "org/gated", "--revision", "v2"],
        "token",
        &[("HF_ENDPOINT", endpoint.as_str())],
        Some("hf_from_file"),
    );
    let seen = server.join().unwrap_or_default();
    assert!(!out.status.success());
    assert!(
        combined(&out).contains("with the token given"),
        "{}",
        combined(&out)
    );
    assert_eq!(
        seen.first().map(String::as_str),
        Some("GET /api/models/org/gated/revision/v2 HTTP/1.1")
    );
    assert!(
        seen.iter().any(|l| l.ends_with("Bearer hf_from_file")),
        "{seen:?}"
    );
}
#[test]
fn missing_child_binaries_are_named() {
    let bins = empty_dir("bins");
    let bin_dir = bins.to_string_lossy().into_owned();
    let out = pagedserve(&["--bin-dir", &bin_dir]);
    let _ = std::fs::remove_dir_all(&bins);
    assert!(!out.status.success());
    assert!(
        combined(&out).contains("pagedserve-shard"),
        "{}",
        combined(&out)
    );
}

#[test]
fn serve_subcommand_takes_the_same_flags() {
    let out = pagedserve(&["serve", "--help"]);
    assert!(out.status.success());
    assert!(combined(&out).contains("--num-shards"));
}

/// A malformed or unreachable `--base-url` is named as such; both used to end in "could not
/// list models (...); pass --model", which pointed at the wrong flag.
#[test]
fn bench_blames_a_bad_base_url_not_the_model() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    let unreachable = format!("http://127.0.0.1:{closed}");
    for url in [
        "localhost:8000",
        "http//127.0.0.1:8000",
        unreachable.as_str(),
    ] {
        let out = pagedserve(&["bench", "--base-url", url, "--no-progress"]);
        let text = combined(&out);
        assert!(!out.status.success(), "{url}: {text}");
        assert!(text.contains("--base-url"), "{url}: {text}");
        assert!(!text.contains("pass --model"), "{url}: {text}");
    }
}
