//! A real `pagedserve` process over fake child binaries (shell scripts), for tests of what
//! the launcher itself does with signals, ports and dying children.

#![allow(dead_code)] // each test file uses its own part

pub mod health;

use std::io::{BufRead, BufReader, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Long enough for a loaded 2-core CI machine; every wait polls, so passing tests are fast.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A directory with `pagedserve-shard`/`pagedserve-router` scripts and an (empty) model
/// file. The scripts see `$FAKE_DIR`, where they may leave pid files.
pub struct FakeDeployment {
    pub dir: PathBuf,
}

impl FakeDeployment {
    pub fn new(tag: &str, shard_script: &str, router_script: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("pagedserve-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        for (name, body) in [
            ("pagedserve-shard", shard_script),
            ("pagedserve-router", router_script),
        ] {
            let path = dir.join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap_or_else(|e| panic!("{e}"));
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
                .unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(dir.join("m.gguf"), b"").unwrap_or_else(|e| panic!("{e}"));
        Self { dir }
    }

    pub fn model(&self) -> String {
        self.dir.join("m.gguf").to_string_lossy().into_owned()
    }

    /// The pid a script wrote to `$FAKE_DIR/<name>` (write-then-rename, so never partial).
    pub fn pid(&self, name: &str) -> Option<i32> {
        std::fs::read_to_string(self.dir.join(name))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Waits until a script wrote its pid to `$FAKE_DIR/<name>`; fails the test with the
    /// launcher's output if that takes longer than PATIENCE.
    pub fn wait_pid(&self, name: &str, launcher: &Launcher) -> i32 {
        assert!(
            poll(PATIENCE, || self.pid(name).is_some()),
            "{name} never appeared:\n{}",
            launcher.output()
        );
        self.pid(name).unwrap_or_default()
    }

    /// Starts `pagedserve <args>` with this directory's children.
    pub fn launch(&self, args: &[&str], env: &[(&str, &str)]) -> Launcher {
        self.launch_with(args, env, true)
    }

    /// Like `launch`, but nobody reads the launcher's stdout (a paused `pagedserve | less`):
    /// the pipe stays open and fills up. `output()` then has only stderr.
    pub fn launch_unread_stdout(&self, args: &[&str], env: &[(&str, &str)]) -> Launcher {
        self.launch_with(args, env, false)
    }

    fn launch_with(&self, args: &[&str], env: &[(&str, &str)], read_stdout: bool) -> Launcher {
        let mut command = Command::new(env!("CARGO_BIN_EXE_pagedserve"));
        command
            .args(args)
            .env("PAGEDSERVE_BIN_DIR", &self.dir)
            .env("FAKE_DIR", &self.dir)
            .env_remove("PAGEDSERVE_MODEL")
            .env_remove("MODEL_NAME")
            .env_remove("PORT")
            .env_remove("API_KEY")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("run pagedserve: {e}"));
        let output = Arc::new(Mutex::new(String::new()));
        let mut unread = None;
        if let Some(out) = child.stdout.take() {
            if read_stdout {
                collect(out, Arc::clone(&output));
            } else {
                unread = Some(out);
            }
        }
        if let Some(err) = child.stderr.take() {
            collect(err, Arc::clone(&output));
        }
        Launcher {
            child,
            output,
            unread,
            dir: self.dir.clone(),
        }
    }
}

impl Drop for FakeDeployment {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn collect(stream: impl Read + Send + 'static, into: Arc<Mutex<String>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { return };
            if let Ok(mut text) = into.lock() {
                text.push_str(&line);
                text.push('\n');
            }
        }
    });
}

/// A running launcher; killed (with whatever its fake children left) when dropped.
pub struct Launcher {
    child: Child,
    output: Arc<Mutex<String>>,
    /// The read end of a stdout pipe nobody reads (see `launch_unread_stdout`).
    unread: Option<ChildStdout>,
    dir: PathBuf,
}

impl Launcher {
    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, which is not reaped while `self` lives.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0, "kill");
    }

    /// True when the unread stdout pipe is full: whoever writes to it next blocks.
    pub fn stdout_pipe_full(&self) -> bool {
        let Some(fd) = self.unread.as_ref().map(AsRawFd::as_raw_fd) else {
            return false;
        };
        let mut queued: libc::c_int = 0;
        // SAFETY: fcntl and ioctl(FIONREAD) on a pipe fd we own, into a c_int we own.
        let (capacity, ok) = unsafe {
            (
                libc::fcntl(fd, libc::F_GETPIPE_SZ),
                libc::ioctl(fd, libc::FIONREAD, &mut queued) == 0,
            )
        };
        // Within a line or two of full: a write that does not fit waits.
        ok && capacity > 0 && queued >= capacity - 4096
    }

    /// Stdout and stderr so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|t| t.clone()).unwrap_or_default()
    }

    /// Waits until the output contains `text`; panics with the output after `PATIENCE`.
    pub fn wait_for_output(&self, text: &str) {
        let found = poll(PATIENCE, || self.output().contains(text));
        assert!(found, "no `{text}` in the output:\n{}", self.output());
    }

    /// The exit status, if the launcher exits within `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                // Let the reader threads drain the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_pids_in(&self.dir);
    }
}

/// SIGKILLs every pid recorded in `dir/*.pid` (cleanup after a failed test).
fn kill_pids_in(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "pid") {
            let pid = std::fs::read_to_string(&path)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok());
            if let Some(pid) = pid.filter(|&p| p > 1) {
                // SAFETY: kill(2); the pid was written by a fake child of this test.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// True once `cond` holds, checked every 50 ms for up to `limit`.
pub fn poll(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// True while a process with this pid exists (zombies included).
pub fn alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// A shard that records its pid in `$FAKE_DIR/<name>.pid`, ignores SIGTERM and SIGINT (as
/// a shard stuck in a long drain does) and never becomes ready.
pub fn stubborn_shard(name: &str) -> String {
    // The trap comes before the pid file: once a test sees the pid, signals are ignored.
    format!(
        "trap '' TERM INT\n\
         echo $$ > \"$FAKE_DIR/{name}.tmp\" && mv \"$FAKE_DIR/{name}.tmp\" \"$FAKE_DIR/{name}.pid\"\n\
         exec sleep 300"
    )
}
