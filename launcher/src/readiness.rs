//! Start-up probes: a shard is ready when its gRPC Health says SERVING, the router when
//! `GET /health` answers 200. Both give up early if the child being waited for dies.

use std::future::Future;
use std::time::Duration;

use pagedserve_proto::ShardClient;
use pagedserve_proto::v1::HealthRequest;
use pagedserve_proto::v1::health_response::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::{LaunchError, Result};
use crate::supervise::Supervisor;

const POLL_EVERY: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// One deadline for the whole start-up (every shard, then the router), as
/// `--startup-timeout-secs` promises: each wait used to get the full timeout afresh, so the
/// launcher could wait about twice as long as asked before giving up.
#[derive(Debug, Clone, Copy)]
pub struct StartupDeadline {
    at: Instant,
    secs: u64,
}

impl StartupDeadline {
    pub fn after(timeout: Duration) -> Self {
        Self {
            at: Instant::now() + timeout,
            secs: timeout.as_secs(),
        }
    }
}

/// Polls `probe` until it returns true; fails when any child exits or `deadline` passes.
pub async fn wait_until<F, Fut>(
    sup: &mut Supervisor,
    what: &str,
    deadline: StartupDeadline,
    mut probe: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    loop {
        if let Some(exit) = sup.poll_exit() {
            return Err(LaunchError::DiedDuringStartup {
                name: sup.name(exit.index).to_owned(),
                status: exit.describe(),
            });
        }
        if tokio::time::timeout(PROBE_TIMEOUT, probe()).await == Ok(true) {
            return Ok(());
        }
        if Instant::now() >= deadline.at {
            return Err(LaunchError::StartupTimeout {
                name: what.to_owned(),
                secs: deadline.secs,
            });
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// True when the shard at `127.0.0.1:port` reports SERVING.
pub async fn shard_serving(port: u16) -> bool {
    let Ok(mut client) = ShardClient::connect(format!("http://127.0.0.1:{port}")).await else {
        return false;
    };
    match client.health(HealthRequest {}).await {
        Ok(resp) => resp.into_inner().status() == Status::Serving,
        Err(_) => false,
    }
}

/// True when `GET /health` on `host:port` answers with status 200.
pub async fn http_healthy(host: &str, port: u16) -> bool {
    http_status(host, port, "/health").await == Some(200)
}

/// Status code of a plain HTTP/1.1 GET; no HTTP client crate needed for one probe.
async fn http_status(host: &str, port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect((host, port)).await.ok()?;
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut head = [0u8; 64];
    let mut len = 0;
    while len < 12 {
        let n = stream.read(&mut head[len..]).await.ok()?;
        if n == 0 {
            break;
        }
        len += n;
    }
    parse_status_line(&head[..len])
}

fn parse_status_line(head: &[u8]) -> Option<u16> {
    // "HTTP/1.1 200 OK"
    let text = std::str::from_utf8(head.get(..12)?).ok()?;
    let code = text.strip_prefix("HTTP/1.")?.get(2..5)?;
    code.parse().ok()
}

/// The address to probe for a listener bound to `host` (a wildcard is reached via loopback).
pub fn probe_host(host: &str) -> &str {
    match host {
        "0.0.0.0" | "" => "127.0.0.1",
        "::" | "[::]" => "::1",
        other => other.trim_start_matches('[').trim_end_matches(']'),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn parses_status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(
            parse_status_line(b"HTTP/1.0 503 Service Unavailable"),
            Some(503)
        );
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1"), None);
    }

    #[test]
    fn wildcard_hosts_are_probed_on_loopback() {
        assert_eq!(probe_host("0.0.0.0"), "127.0.0.1");
        assert_eq!(probe_host("[::]"), "::1");
        assert_eq!(probe_host("10.1.2.3"), "10.1.2.3");
    }

    async fn one_shot_server(reply: &'static str) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            if let Ok((mut sock, _)) = listener.accept().await {
                let mut buf = [0u8; 512];
                let _ = sock.read(&mut buf).await;
                let _ = sock.write_all(reply.as_bytes()).await;
            }
        });
        port
    }

    #[tokio::test]
    async fn http_probe_reads_the_status() {
        let ok = one_shot_server("HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await;
        assert!(http_healthy("127.0.0.1", ok).await);
        let busy = one_shot_server("HTTP/1.1 503 Service Unavailable\r\n\r\n").await;
        assert!(!http_healthy("127.0.0.1", busy).await);
    }

    #[tokio::test]
    async fn nothing_listening_is_not_ready() {
        let port = crate::ports::shard_ports(None, 1, 0).expect("port")[0];
        assert!(!http_healthy("127.0.0.1", port).await);
        assert!(!shard_serving(port).await);
    }
}
