//! Signals to the launcher, with real processes: fake shards that ignore SIGTERM stand in
//! for shards in a long drain.

mod common;

use std::net::TcpListener;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::{FakeDeployment, PATIENCE, alive, poll, stubborn_shard};

/// A second SIGTERM/SIGINT stops the children at once instead of waiting out the drain
/// (`--shutdown-timeout-secs` + 5 s); the launcher used to ignore it.
#[test]
fn a_second_signal_cuts_the_drain_short() {
    let fake = FakeDeployment::new("second-signal", &stubborn_shard("shard"), "exit 1");
    let model = fake.model();
    let mut launcher = fake.launch(
        &[
            "--model",
            &model,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--shutdown-timeout-secs",
            "300",
        ],
        &[],
    );
    let shard = fake.wait_pid("shard.pid", &launcher);
    launcher.signal(libc::SIGTERM);
    // The second signal must come after the first was handled (pending signals merge).
    launcher.wait_for_output("stopping children");
    assert!(alive(shard), "the shard must still be draining here");
    let second = Instant::now();
    launcher.signal(libc::SIGTERM);
    let status = launcher.wait_exit(PATIENCE);
    let took = second.elapsed();
    assert!(
        status.is_some() && took < Duration::from_secs(30),
        "still draining {took:?} after the second signal (grace 305 s):\n{}",
        launcher.output()
    );
    assert!(
        poll(PATIENCE, || !alive(shard)),
        "the shard outlived the launcher"
    );
}

/// A hub endpoint that accepts connections and never answers; true once one was accepted.
fn silent_endpoint() -> (String, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let url = format!(
        "http://{}",
        listener.local_addr().unwrap_or_else(|e| panic!("{e}"))
    );
    let connected = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&connected);
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
            flag.store(true, Ordering::SeqCst);
        }
    });
    (url, connected)
}

/// SIGTERM while the model is being fetched: the launcher handles it (its own exit status
/// and message). It had no handler yet then, which as a container's PID 1 means the kernel
/// drops the signal and `docker stop` waits for SIGKILL; elsewhere it died mid-download.
#[test]
fn a_signal_during_the_model_download_is_handled() {
    let fake = FakeDeployment::new("signal-download", "exit 1", "exit 1");
    let (endpoint, connected) = silent_endpoint();
    let hf_home = fake.dir.to_string_lossy().into_owned();
    let cache = fake.dir.join("hub").to_string_lossy().into_owned();
    let mut launcher = fake.launch(
        &["--model", "org/slow-model", "--port", "0"],
        &[
            ("HF_ENDPOINT", endpoint.as_str()),
            ("HF_HOME", hf_home.as_str()),
            ("HF_HUB_CACHE", cache.as_str()),
            ("HF_HUB_OFFLINE", "0"),
            ("HF_TOKEN", ""),
            ("HUGGING_FACE_HUB_TOKEN", ""),
        ],
    );
    assert!(
        poll(PATIENCE, || connected.load(Ordering::SeqCst)),
        "the launcher never reached the hub:\n{}",
        launcher.output()
    );
    launcher.signal(libc::SIGTERM);
    let status = launcher.wait_exit(PATIENCE);
    let Some(status) = status else {
        panic!("no exit after SIGTERM:\n{}", launcher.output());
    };
    assert_eq!(
        (status.signal(), status.code()),
        (None, Some(1)),
        "killed by the signal instead of handling it:\n{}",
        launcher.output()
    );
    assert!(
        launcher.output().contains("interrupted"),
        "{}",
        launcher.output()
    );
}

/// Nobody reads the launcher's stdout (`pagedserve | less` paused, a stalled log sidecar)
/// while a shard logs without pause: SIGTERM still stops everything. Child output was copied
/// with blocking writes on the launcher's only runtime thread, so once the pipe was full the
/// signal was never handled and the launcher hung with its children.
#[test]
fn a_stuck_stdout_reader_does_not_stop_signal_handling() {
    let chatty = "echo $$ > \"$FAKE_DIR/shard.tmp\" && mv \"$FAKE_DIR/shard.tmp\" \"$FAKE_DIR/shard.pid\"\n\
                  exec yes 'loading weights... a long and chatty log line from a fake shard'";
    let fake = FakeDeployment::new("stuck-stdout", chatty, "exit 1");
    let model = fake.model();
    let mut launcher = fake.launch_unread_stdout(
        &["--model", &model, "--host", "127.0.0.1", "--port", "0"],
        &[],
    );
    let shard = fake.wait_pid("shard.pid", &launcher);
    assert!(
        poll(PATIENCE, || launcher.stdout_pipe_full()),
        "the launcher's stdout pipe never filled:\n{}",
        launcher.output()
    );
    launcher.signal(libc::SIGTERM);
    let status = launcher.wait_exit(PATIENCE);
    assert!(
        status.is_some(),
        "the launcher did not exit after SIGTERM with its stdout stuck:\n{}",
        launcher.output()
    );
    assert!(
        poll(PATIENCE, || !alive(shard)),
        "the shard outlived the launcher"
    );
}
