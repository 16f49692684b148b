//! Child processes: spawn with prefixed output, forward signals, notice exits, stop them all.
//!
//! Each child is owned by one watcher task that both reaps it and delivers signals to it, so a
//! signal can never hit a recycled pid. Children also get PR_SET_PDEATHSIG: if the launcher is
//! killed outright (SIGKILL), the kernel still stops them. That signal fires when the *thread*
//! that spawned the child exits, so the launcher must spawn from its main thread (it runs a
//! current-thread runtime).

use std::ffi::OsString;
use std::future::Future;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::error::{LaunchError, Result};

/// After SIGKILL, how long to wait for the kernel to report the exit before giving up.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What to run: program, arguments, extra environment. Output lines get `[name] ` prefixes.
#[derive(Debug, Clone)]
pub struct ChildSpec {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub env: Vec<(String, String)>,
    pub env_remove: Vec<String>,
}

/// A child's exit, as reported by its watcher task.
#[derive(Debug)]
pub struct Exit {
    pub index: usize,
    pub status: std::result::Result<ExitStatus, String>,
}

impl Exit {
    pub fn describe(&self) -> String {
        match &self.status {
            Ok(status) => status.to_string(),
            Err(err) => format!("wait failed: {err}"),
        }
    }
}

struct Handle {
    name: String,
    signals: mpsc::UnboundedSender<i32>,
    exited: bool,
}

/// The launcher's children.
pub struct Supervisor {
    children: Vec<Handle>,
    exits_tx: mpsc::UnboundedSender<Exit>,
    exits_rx: mpsc::UnboundedReceiver<Exit>,
}

impl Default for Supervisor {
    fn default() -> Self {
        let (exits_tx, exits_rx) = mpsc::unbounded_channel();
        Self {
            children: Vec::new(),
            exits_tx,
            exits_rx,
        }
    }
}

impl Supervisor {
    /// Starts a child; returns its index.
    pub fn spawn(&mut self, spec: ChildSpec) -> Result<usize> {
        let mut child = command(&spec)
            .spawn()
            .map_err(|source| LaunchError::Spawn {
                name: spec.name.clone(),
                source,
            })?;
        let prefix = format!("[{}] ", spec.name);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(pump(out, prefix.clone(), false));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(pump(err, prefix, true));
        }
        let index = self.children.len();
        let (signals, signal_rx) = mpsc::unbounded_channel();
        tokio::spawn(watch(child, index, signal_rx, self.exits_tx.clone()));
        self.children.push(Handle {
            name: spec.name,
            signals,
            exited: false,
        });
        Ok(index)
    }

    pub fn name(&self, index: usize) -> &str {
        self.children.get(index).map_or("?", |c| c.name.as_str())
    }

    /// A child exit that already happened, if any (does not wait).
    pub fn poll_exit(&mut self) -> Option<Exit> {
        let exit = self.exits_rx.try_recv().ok()?;
        self.record(&exit);
        Some(exit)
    }

    /// Waits for the next child to exit.
    pub async fn next_exit(&mut self) -> Option<Exit> {
        let exit = self.exits_rx.recv().await?;
        self.record(&exit);
        Some(exit)
    }

    /// Sends `signal` to every running child, waits up to `grace` for all to exit, then
    /// kills the rest. When `again` yields a signal first (a second Ctrl-C, or Kubernetes
    /// insisting), the drain is cut short: that signal is forwarded (the shards read a second
    /// signal as "exit now") and whatever still runs `KILL_WAIT` later is killed.
    pub async fn shutdown(
        &mut self,
        signal: i32,
        grace: Duration,
        again: impl Future<Output = i32>,
    ) {
        self.signal_running(signal);
        let second = tokio::select! {
            drained = self.wait_all(Instant::now() + grace) => match drained {
                true => return,
                false => None,
            },
            second = again => Some(second),
        };
        match second {
            Some(second) => {
                tracing::warn!("signal {second} during shutdown: stopping children now");
                self.signal_running(second);
                if self.wait_all(Instant::now() + KILL_WAIT).await {
                    return;
                }
                tracing::warn!("children still running {KILL_WAIT:?} later; killing them");
            }
            None => tracing::warn!("children still running after {grace:?}; killing them"),
        }
        self.signal_running(libc::SIGKILL);
        self.wait_all(Instant::now() + KILL_WAIT).await;
    }

    fn signal_running(&self, signal: i32) {
        for child in self.children.iter().filter(|c| !c.exited) {
            // A closed channel means the watcher already reaped it: nothing to signal.
            let _ = child.signals.send(signal);
        }
    }

    /// True when every child has exited before `deadline`.
    async fn wait_all(&mut self, deadline: Instant) -> bool {
        while self.children.iter().any(|c| !c.exited) {
            match tokio::time::timeout_at(deadline, self.next_exit()).await {
                Ok(Some(exit)) => {
                    tracing::info!("{} exited ({})", self.name(exit.index), exit.describe())
                }
                Ok(None) | Err(_) => return false,
            }
        }
        true
    }

    fn record(&mut self, exit: &Exit) {
        if let Some(child) = self.children.get_mut(exit.index) {
            child.exited = true;
        }
    }
}

fn command(spec: &ChildSpec) -> Command {
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: a terminal's Ctrl-C reaches only the launcher, which forwards it
        // once (shards treat a second signal as "exit now, skip the drain").
        .process_group(0)
        .kill_on_drop(true);
    for key in &spec.env_remove {
        cmd.env_remove(key);
    }
    die_with_parent(&mut cmd);
    cmd
}

#[cfg(target_os = "linux")]
fn die_with_parent(cmd: &mut Command) {
    let parent = std::process::id();
    // SAFETY: the closure runs in the forked child before exec and only makes
    // async-signal-safe calls (prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before prctl took effect.
            if u32::try_from(libc::getppid()).ok() != Some(parent) {
                return Err(std::io::Error::other("launcher exited during spawn"));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn die_with_parent(_cmd: &mut Command) {}

/// Reaps `child` and delivers the signals it is sent; reports its exit.
async fn watch(
    mut child: Child,
    index: usize,
    mut signals: mpsc::UnboundedReceiver<i32>,
    exits: mpsc::UnboundedSender<Exit>,
) {
    let status = loop {
        tokio::select! {
            status = child.wait() => break status.map_err(|e| e.to_string()),
            Some(signal) = signals.recv() => send_signal(&child, signal),
        }
    };
    let _ = exits.send(Exit { index, status });
}

fn send_signal(child: &Child, signal: i32) {
    // id() is None once reaped, and only this task reaps: the pid is still ours.
    let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) else {
        return;
    };
    // SAFETY: kill(2) with a pid we own; no memory is involved.
    if unsafe { libc::kill(pid, signal) } != 0 {
        tracing::debug!("kill({pid}, {signal}): {}", std::io::Error::last_os_error());
    }
}

/// Copies a child's output line by line with a prefix, so N shards' logs stay readable.
/// Lines are queued, never written here: a stuck reader of our output must not stall this
/// (runtime) thread nor, through a full pipe, the child (see output.rs).
async fn pump(stream: impl AsyncRead + Unpin, prefix: String, to_stderr: bool) {
    let sink = if to_stderr {
        crate::output::stderr()
    } else {
        crate::output::stdout()
    };
    let mut reader = BufReader::new(stream);
    loop {
        // One queued line, prefix included, keeps lines from different children whole.
        let mut line = Vec::with_capacity(prefix.len() + 256);
        line.extend_from_slice(prefix.as_bytes());
        match reader.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        if !line.ends_with(b"\n") {
            line.push(b'\n');
        }
        sink.send(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(name: &str, script: &str) -> ChildSpec {
        ChildSpec {
            name: name.into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![],
            env_remove: vec![],
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reports_which_child_exited_and_how() {
        let mut sup = Supervisor::default();
        sup.spawn(sh("sleeper", "sleep 30")).expect("spawn");
        let quick = sup.spawn(sh("quick", "exit 3")).expect("spawn");
        let exit = sup.next_exit().await.expect("an exit");
        assert_eq!(exit.index, quick);
        assert_eq!(sup.name(exit.index), "quick");
        assert_eq!(exit.status.expect("status").code(), Some(3));
        let started = Instant::now();
        sup.shutdown(
            libc::SIGTERM,
            Duration::from_secs(5),
            std::future::pending(),
        )
        .await;
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "SIGTERM stops sleep at once"
        );
        assert!(
            sup.poll_exit().is_none(),
            "every exit was consumed by shutdown"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn kills_children_that_ignore_the_signal() {
        let mut sup = Supervisor::default();
        sup.spawn(sh("stubborn", "trap '' TERM INT; exec sleep 30"))
            .expect("spawn");
        tokio::time::sleep(Duration::from_millis(200)).await; // let the trap be installed
        let started = Instant::now();
        sup.shutdown(
            libc::SIGTERM,
            Duration::from_millis(300),
            std::future::pending(),
        )
        .await;
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(300),
            "waited for the grace period: {took:?}"
        );
        assert!(took < Duration::from_secs(5), "then killed it: {took:?}");
        assert!(sup.children.iter().all(|c| c.exited));
    }

    /// A second signal cuts the drain short: without it, a stubborn child held the launcher
    /// for the whole grace period (shutdown_timeout_secs + 5, 35 s by default).
    #[tokio::test(flavor = "current_thread")]
    async fn a_second_signal_stops_the_drain() {
        let mut sup = Supervisor::default();
        sup.spawn(sh("stubborn", "trap '' TERM INT; exec sleep 120"))
            .expect("spawn");
        tokio::time::sleep(Duration::from_millis(200)).await; // let the trap be installed
        let started = Instant::now();
        let again = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            libc::SIGINT
        };
        sup.shutdown(libc::SIGTERM, Duration::from_secs(100), again)
            .await;
        let took = started.elapsed();
        // The forwarded signal is ignored too, so the kill comes KILL_WAIT after it.
        assert!(
            took < KILL_WAIT + Duration::from_secs(20),
            "the second signal did not cut the 100 s grace short: {took:?}"
        );
        assert!(
            sup.children.iter().all(|c| c.exited),
            "the child was killed"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn environment_is_passed_and_removed() {
        let mut sup = Supervisor::default();
        let mut spec = sh("env", r#"[ "$A" = 1 ] && [ -z "${HOME+set}" ]"#);
        spec.env.push(("A".into(), "1".into()));
        spec.env_remove.push("HOME".into());
        sup.spawn(spec).expect("spawn");
        let exit = sup.next_exit().await.expect("an exit");
        assert!(exit.status.expect("status").success());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn missing_program_is_a_spawn_error() {
        let mut sup = Supervisor::default();
        let mut spec = sh("ghost", "");
        spec.program = "/nonexistent/pagedserve-shard".into();
        assert!(matches!(sup.spawn(spec), Err(LaunchError::Spawn { .. })));
    }
}
