//! A local stand-in for the hub's file endpoints (what `HF_ENDPOINT` points at in tests):
//! `GET /api/models/{repo}/revision/{rev}` (file list) and `GET /{repo}/resolve/{rev}/{file}`
//! with `Range` support, `ETag`, `X-Repo-Commit` and `Content-Range` as the hub sends them;
//! 401 for a gated repo without the right token; a one-shot dropped connection to test
//! resumption. Every request is logged for assertions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug, Clone, Default)]
pub struct MockRepo {
    pub commit: String,
    pub files: Vec<(String, Vec<u8>)>,
    /// Requests need `Authorization: Bearer <token>`.
    pub token: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Logged {
    pub path: String,
    pub range: Option<String>,
    pub authorization: Option<String>,
}

struct State {
    repos: HashMap<String, MockRepo>,
    log: Mutex<Vec<Logged>>,
    /// Drop the connection halfway through the first ranged body starting at or after this.
    drop_from: Mutex<Option<usize>>,
    dropped: AtomicBool,
}

pub struct MockHub {
    pub endpoint: String,
    state: Arc<State>,
}

impl MockHub {
    pub async fn start(repos: HashMap<String, MockRepo>, drop_from: Option<usize>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let state = Arc::new(State {
            repos,
            log: Mutex::new(Vec::new()),
            drop_from: Mutex::new(drop_from),
            dropped: AtomicBool::new(false),
        });
        let serving = Arc::clone(&state);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(handle(stream, Arc::clone(&serving)));
            }
        });
        Self { endpoint, state }
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    pub fn dropped_a_connection(&self) -> bool {
        self.state.dropped.load(Ordering::SeqCst)
    }
}

async fn handle(mut stream: TcpStream, state: Arc<State>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let text = String::from_utf8_lossy(&buf).to_string();
    let mut lines = text.lines();
    let path = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap_or("/")
        .to_string();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let logged = Logged {
        path: path.clone(),
        range: headers.get("range").cloned(),
        authorization: headers.get("authorization").cloned(),
    };
    if let Ok(mut log) = state.log.lock() {
        log.push(logged.clone());
    }
    respond(&mut stream, &state, &logged).await;
    let _ = stream.shutdown().await;
}

async fn respond(stream: &mut TcpStream, state: &State, req: &Logged) {
    let Some((repo, rest)) = route(state, &req.path) else {
        return reply(
            stream,
            "404 Not Found",
            &[],
            b"{\"error\":\"Repository not found\"}",
        )
        .await;
    };
    if let Some(token) = &repo.token
        && req.authorization.as_deref() != Some(&format!("Bearer {token}"))
    {
        return reply(stream, "401 Unauthorized", &[], b"{\"error\":\"gated\"}").await;
    }
    match rest {
        Route::Info => {
            let siblings: Vec<_> = repo
                .files
                .iter()
                .map(|(name, _)| serde_json::json!({ "rfilename": name }))
                .collect();
            let body = serde_json::json!({ "sha": repo.commit, "siblings": siblings }).to_string();
            reply(stream, "200 OK", &[], body.as_bytes()).await
        }
        Route::File(name) => match repo.files.iter().find(|(n, _)| *n == name) {
            Some((_, data)) => send_file(stream, state, repo, data, req.range.as_deref()).await,
            None => {
                reply(
                    stream,
                    "404 Not Found",
                    &[],
                    b"{\"error\":\"Entry not found\"}",
                )
                .await
            }
        },
    }
}

enum Route {
    Info,
    File(String),
}

fn route<'a>(state: &'a State, path: &str) -> Option<(&'a MockRepo, Route)> {
    if let Some(rest) = path.strip_prefix("/api/models/") {
        let (repo, _) = rest.split_once("/revision/")?;
        return Some((state.repos.get(repo)?, Route::Info));
    }
    let (repo, rest) = path.trim_start_matches('/').split_once("/resolve/")?;
    let (_revision, file) = rest.split_once('/')?;
    Some((state.repos.get(repo)?, Route::File(file.to_string())))
}

async fn send_file(
    stream: &mut TcpStream,
    state: &State,
    repo: &MockRepo,
    data: &[u8],
    range: Option<&str>,
) {
    let etag = format!("\"{:016x}{:08x}\"", fnv(data), data.len());
    let size = data.len();
    let (start, end) = range
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.split_once('-'))
        .and_then(|(a, b)| Some((a.parse::<usize>().ok()?, b.parse::<usize>().ok()?)))
        .map_or((0, size.saturating_sub(1)), |(a, b)| (a, b.min(size - 1)));
    let body = &data[start.min(size)..=end.min(size - 1)];
    let headers = [
        ("ETag", etag),
        ("X-Repo-Commit", repo.commit.clone()),
        ("Content-Range", format!("bytes {start}-{end}/{size}")),
    ];
    let drop_now = {
        let mut drop_from = state.drop_from.lock().map(|g| *g).ok().flatten();
        let hit = range.is_some() && drop_from.is_some_and(|d| start >= d && end > start);
        if hit {
            drop_from = None;
            if let Ok(mut g) = state.drop_from.lock() {
                *g = drop_from;
            }
        }
        hit
    };
    if drop_now {
        // Promise the whole range, send half, hang up: a connection lost mid-download.
        state.dropped.store(true, Ordering::SeqCst);
        let head = head("206 Partial Content", &headers, body.len());
        let _ = stream.write_all(head.as_bytes()).await;
        let _ = stream.write_all(&body[..body.len() / 2]).await;
        return;
    }
    let status = if range.is_some() {
        "206 Partial Content"
    } else {
        "200 OK"
    };
    reply(stream, status, &headers, body).await
}

fn head(status: &str, headers: &[(&str, String)], len: usize) -> String {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {len}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    head
}

async fn reply(stream: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let _ = stream
        .write_all(head(status, headers, body.len()).as_bytes())
        .await;
    let _ = stream.write_all(body).await;
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
    })
}
