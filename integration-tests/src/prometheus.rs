//! A real Prometheus server for the metrics test: started on a free localhost port with a
//! temporary config and data dir that scrapes one target every second; killed on drop.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::http;
use crate::server::{free_port, random_u64, target_dir};

/// Set to 1 to skip the Prometheus parts locally when the Debian package can't be installed.
pub const SKIP_ENV: &str = "PAGEDSERVE_SKIP_PROMETHEUS";

/// `promtool` and `prometheus` from PATH; None (after a loud message) when they are missing
/// and the skip variable is set; otherwise a panic that says how to get them.
pub fn binaries() -> Option<(PathBuf, PathBuf)> {
    let found = (which("promtool"), which("prometheus"));
    if let (Some(promtool), Some(prometheus)) = found {
        return Some((promtool, prometheus));
    }
    if std::env::var(SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!(
            "\n!!! SKIPPING the Prometheus checks: promtool/prometheus not installed and \
             {SKIP_ENV}=1 !!!\n"
        );
        return None;
    }
    panic!(
        "promtool and prometheus are not on PATH. Install the Debian package `prometheus` \
         (scripts/test does it as root: apt-get install prometheus), or set {SKIP_ENV}=1 to \
         skip these checks locally."
    );
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// `promtool check metrics` on an exposition: Ok, or promtool's complaints.
pub fn check_metrics(promtool: &Path, exposition: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("run promtool: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(exposition.as_bytes())
            .map_err(|e| format!("write to promtool: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("promtool: {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.success() && text.trim().is_empty() {
        true => Ok(()),
        false => Err(format!("promtool check metrics ({}): {text}", out.status)),
    }
}

/// `promtool check config` on a Prometheus config file: Ok, or promtool's output.
pub fn check_config(promtool: &Path, config: &Path) -> Result<(), String> {
    let out = Command::new(promtool)
        .args(["check", "config"])
        .arg(config)
        .output()
        .map_err(|e| format!("run promtool: {e}"))?;
    match out.status.success() {
        true => Ok(()),
        false => Err(format!(
            "promtool check config {}: {}{}",
            config.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )),
    }
}

pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts `prometheus` scraping `target` (host:port) every second and waits until ready.
    pub fn start(binary: &Path, target: &str) -> Prometheus {
        let dir = target_dir().join(format!("prometheus-{:016x}", random_u64()));
        std::fs::create_dir_all(dir.join("data"))
            .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  \
             - job_name: pagedserve\n    static_configs:\n      - targets: [\"{target}\"]\n"
        );
        let config_path = dir.join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("write config: {e}"));
        let port = free_port();
        let log = File::create(dir.join("prometheus.log"))
            .unwrap_or_else(|e| panic!("create prometheus.log: {e}"));
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("dup log: {e}")))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let prometheus = Prometheus { child, port, dir };
        let ready = prometheus.wait_for(Duration::from_secs(60), |p| {
            http::get(p.port, "/-/ready", None).is_ok_and(|r| r.status == 200)
        });
        assert!(ready, "prometheus not ready: {}", prometheus.log());
        prometheus
    }

    /// Polls `check` every 250 ms until it holds or `timeout` passes.
    pub fn wait_for(&self, timeout: Duration, mut check: impl FnMut(&Self) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if check(self) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }

    /// GET an API path; the JSON body (Prometheus answers errors in JSON too).
    pub fn api(&self, path_and_query: &str) -> Value {
        let response = http::get(self.port, path_and_query, None)
            .unwrap_or_else(|e| panic!("GET {path_and_query}: {e}"));
        serde_json::from_slice(&response.body)
            .unwrap_or_else(|e| panic!("{path_and_query}: {} is not JSON: {e}", response.text()))
    }

    /// An instant PromQL query: the whole `{"status": ..., "data": ...}` answer.
    pub fn query(&self, promql: &str) -> Value {
        self.api(&format!("/api/v1/query?query={}", percent_encode(promql)))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// RFC 3986 unreserved characters pass; everything else is %XX.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_promql() {
        assert_eq!(
            percent_encode("sum(rate(a_total{x=~\".*\"}[1m]))"),
            "sum%28rate%28a_total%7Bx%3D~%22.%2A%22%7D%5B1m%5D%29%29"
        );
    }
}
