//! A running `pagedserve` (launcher + router + shards) owned by a test.
//!
//! The launcher is started in its own process group and the whole group is stopped when the
//! [`Server`] is dropped or, for the per-file shared server (a static, never dropped), at
//! process exit via `atexit`. As a last resort the launcher gets PR_SET_PDEATHSIG from a
//! keeper thread that lives until the test process dies, so even a killed test binary leaves
//! no servers behind.

use std::fs::File;
use std::hash::{BuildHasher, Hasher};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use crate::http;

/// Debug builds on 2 cores load the model in seconds, but a cold page cache is slower.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(300);
const STOP_GRACE: Duration = Duration::from_secs(20);

/// How to start the server; the defaults are the integration-test setup from the brief.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Names the log file under `target/integration-logs/`.
    pub name: String,
    pub num_shards: u16,
    pub extra_args: Vec<String>,
}

impl ServerOptions {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            num_shards: 2,
            extra_args: Vec::new(),
        }
    }
}

pub struct Server {
    child: Mutex<Child>,
    pgid: i32,
    pub port: u16,
    pub shard_ports: Vec<u16>,
    pub api_key: String,
    pub model: String,
    pub log_path: PathBuf,
}

impl Server {
    /// Starts `target/<profile>/pagedserve` with the default model and waits for /health.
    pub fn start(opts: &ServerOptions) -> Server {
        let bin = profile_dir().join("pagedserve");
        assert!(
            bin.is_file(),
            "{} is missing: build the workspace first (cargo test --workspace builds it)",
            bin.display()
        );
        let port = free_port();
        let shard_base = free_port_range(opts.num_shards);
        let api_key = format!("test-{:016x}{:016x}", random_u64(), random_u64());
        let log_path = log_dir().join(format!("{}.log", opts.name));
        let log = File::create(&log_path)
            .unwrap_or_else(|e| panic!("create {}: {e}", log_path.display()));
        let mut cmd = Command::new(&bin);
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--num-shards", &opts.num_shards.to_string()])
            .args(["--shard-base-port", &shard_base.to_string()])
            .args(&opts.extra_args)
            .env("API_KEY", &api_key)
            .env_remove("MODEL_NAME")
            .env_remove("PAGEDSERVE_MODEL")
            .env_remove("PORT")
            // Env fallbacks of flags a test may rely on the default of.
            .env_remove("KV_CACHE_DTYPE")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap_or_else(|e| panic!("dup log: {e}")))
            .stderr(log)
            .process_group(0);
        let child = spawn_kept(cmd);
        let pid = i32::try_from(child.id()).unwrap_or_else(|_| panic!("pid out of range"));
        let server = Server {
            child: Mutex::new(child),
            pgid: pid,
            port,
            shard_ports: (0..opts.num_shards).map(|i| shard_base + i).collect(),
            api_key,
            model: "SmolLM2-135M-Instruct.Q4_1".to_owned(),
            log_path,
        };
        server.wait_healthy();
        eprintln!(
            "[{}] pagedserve ready on 127.0.0.1:{port}, shards {:?}",
            opts.name, server.shard_ports
        );
        server
    }

    /// The per-file shared server, started on first use and stopped at process exit. A
    /// failed start is remembered, so the other tests fail at once instead of retrying.
    pub fn shared(opts: impl FnOnce() -> ServerOptions) -> &'static Server {
        static SHARED: OnceLock<Result<Server, String>> = OnceLock::new();
        extern "C" fn stop_shared() {
            if let Some(Ok(server)) = SHARED.get() {
                server.stop();
            }
        }
        let shared = SHARED.get_or_init(|| {
            let options = opts();
            let started = std::panic::catch_unwind(|| Server::start(&options));
            // SAFETY: registering a plain extern "C" fn that only reads the static above.
            unsafe { libc::atexit(stop_shared) };
            started.map_err(|payload| panic_message(payload.as_ref()))
        });
        match shared {
            Ok(server) => server,
            Err(msg) => panic!("the shared server failed to start: {msg}"),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn shard_url(&self, index: usize) -> String {
        format!("http://127.0.0.1:{}", self.shard_ports[index])
    }

    /// The last `lines` lines of the server's combined log, for failure messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn wait_healthy(&self) {
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Some(status)) = self.lock_child().try_wait() {
                panic!(
                    "pagedserve exited during start-up ({status}); log:\n{}",
                    self.log_tail(60)
                );
            }
            if http::get(self.port, "/health", None).is_ok_and(|r| r.status == 200) {
                return;
            }
            if Instant::now() > deadline {
                self.stop();
                panic!(
                    "pagedserve not healthy after {STARTUP_TIMEOUT:?}; log:\n{}",
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn lock_child(&self) -> std::sync::MutexGuard<'_, Child> {
        self.child
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// SIGTERM to the whole process group, wait for the launcher, then SIGKILL leftovers.
    pub fn stop(&self) {
        let mut child = self.lock_child();
        if matches!(child.try_wait(), Ok(Some(_))) {
            kill_group(self.pgid, libc::SIGKILL); // stragglers, if any
            return;
        }
        kill_group(self.pgid, libc::SIGTERM);
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if matches!(child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill_group(self.pgid, libc::SIGKILL);
        let _ = child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else {
        "unknown panic".to_owned()
    }
}

fn kill_group(pgid: i32, signal: i32) {
    // SAFETY: kill(2) on a process group this test created; ESRCH (already gone) is fine.
    unsafe { libc::kill(-pgid, signal) };
}

/// Spawns `cmd` from a thread that never exits, so PR_SET_PDEATHSIG (which fires when the
/// spawning *thread* ends) only fires when the whole test process dies.
fn spawn_kept(mut cmd: Command) -> Child {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // SAFETY: only async-signal-safe prctl between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let _ = tx.send(cmd.spawn());
        loop {
            std::thread::park();
        }
    });
    match rx.recv() {
        Ok(Ok(child)) => child,
        Ok(Err(e)) => panic!("could not start pagedserve: {e}"),
        Err(_) => panic!("keeper thread died"),
    }
}

/// `target/<profile>`, found from this test executable (`target/<profile>/deps/<test>`).
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| panic!("unexpected test executable path {}", exe.display()))
}

/// `target/`, where the test venv and logs live.
pub fn target_dir() -> PathBuf {
    let profile = profile_dir();
    profile.parent().map_or(profile.clone(), Path::to_path_buf)
}

fn log_dir() -> PathBuf {
    let dir = target_dir().join("integration-logs");
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

pub fn random_u64() -> u64 {
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

pub fn free_port() -> u16 {
    let listener =
        TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap_or_else(|e| panic!("bind: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("local_addr: {e}"))
        .port()
}

/// First of `count` consecutive free ports (for --shard-base-port).
fn free_port_range(count: u16) -> u16 {
    for _ in 0..200 {
        let base = free_port();
        if base.checked_add(count).is_none() {
            continue;
        }
        let all_free =
            (base..base + count).all(|p| TcpListener::bind((Ipv4Addr::LOCALHOST, p)).is_ok());
        if all_free {
            return base;
        }
    }
    panic!("no {count} consecutive free ports");
}
