//! The `openai` Python client for the tests: a venv created once under `target/test-venv`
//! (`pip install openai`, by package name), and a runner for `integration-tests/python/*.py`.
//!
//! Where `python3 -m venv` is unavailable (Debian without python3-venv), the package is
//! installed with `pip install --target target/test-pydeps` and found through PYTHONPATH.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::server::{Server, target_dir};

const PACKAGES: &[&str] = &["openai"];
const READY_MARKER: &str = ".pagedserve-ready";

#[derive(Debug, Clone)]
pub struct PyEnv {
    pub python: PathBuf,
    pub pythonpath: Option<PathBuf>,
}

/// The Python environment with `openai` installed, created on first use.
pub fn env() -> &'static PyEnv {
    static ENV: OnceLock<Result<PyEnv, String>> = OnceLock::new();
    match ENV.get_or_init(create) {
        Ok(env) => env,
        Err(msg) => panic!("python test environment: {msg}"),
    }
}

fn create() -> Result<PyEnv, String> {
    let target = target_dir();
    // Test binaries may run concurrently (nextest, two `cargo test`s): one creator at a time.
    let lock_path = target.join("test-venv.lock");
    let lock = File::create(&lock_path).map_err(|e| format!("{}: {e}", lock_path.display()))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "flock {}: {}",
            lock_path.display(),
            std::io::Error::last_os_error()
        ));
    }
    let venv = target.join("test-venv");
    let venv_env = PyEnv {
        python: venv.join("bin/python"),
        pythonpath: None,
    };
    if venv.join(READY_MARKER).is_file() {
        return Ok(venv_env);
    }
    let deps = target.join("test-pydeps");
    let target_env = PyEnv {
        python: "python3".into(),
        pythonpath: Some(deps.clone()),
    };
    if deps.join(READY_MARKER).is_file() {
        return Ok(target_env);
    }
    eprintln!(
        "creating {} and installing {PACKAGES:?} (once)",
        venv.display()
    );
    let venv_made = run(Command::new("python3")
        .args(["-m", "venv", "--clear"])
        .arg(&venv));
    if venv_made.is_ok() {
        pip_install(&venv_env.python, &[])?;
        mark_ready(&venv)?;
        return Ok(venv_env);
    }
    eprintln!(
        "python3 -m venv failed ({}); installing into {} instead",
        venv_made.err().unwrap_or_default(),
        deps.display()
    );
    let deps_arg = deps.to_string_lossy().into_owned();
    pip_install(Path::new("python3"), &["--target", &deps_arg, "--upgrade"])?;
    mark_ready(&deps)?;
    Ok(target_env)
}

fn pip_install(python: &Path, extra: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new(python);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
    ])
    .args(extra)
    .args(PACKAGES);
    run(&mut cmd).map_err(|e| format!("pip install {PACKAGES:?} failed: {e}"))
}

fn mark_ready(dir: &Path) -> Result<(), String> {
    std::fs::write(dir.join(READY_MARKER), b"").map_err(|e| format!("{}: {e}", dir.display()))
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} exited with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// Runs `integration-tests/python/<script>` against `server`; panics (with the script's
/// output and the server log) when it exits non-zero. Returns its stdout.
pub fn run_script(server: &Server, script: &str, args: &[&str]) -> String {
    let env = env();
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join(script);
    let mut cmd = Command::new(&env.python);
    cmd.arg(&path)
        .args(args)
        .env("PAGEDSERVE_BASE_URL", format!("{}/v1", server.base_url()))
        .env("PAGEDSERVE_API_KEY", &server.api_key)
        .env("PAGEDSERVE_MODEL", &server.model)
        .env("PYTHONUNBUFFERED", "1")
        .env_remove("OPENAI_BASE_URL")
        .env_remove("OPENAI_API_KEY");
    if let Some(pp) = &env.pythonpath {
        cmd.env("PYTHONPATH", pp);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", path.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- server log (tail)\n{}",
        out.status,
        server.log_tail(40)
    );
    stdout
}
