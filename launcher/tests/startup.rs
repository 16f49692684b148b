//! Start-up failures of the launcher, with real processes over fake child binaries.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{FakeDeployment, PATIENCE, health, poll, stubborn_shard};

/// The router's port already taken: a clear error naming it before any shard starts. It
/// used to surface only once every shard had loaded the model and the router failed to bind
/// (here, with a shard that never gets ready: a start-up timeout naming the shard).
#[test]
fn a_busy_router_port_fails_before_any_shard_starts() {
    let fake = FakeDeployment::new("router-port", &stubborn_shard("shard"), "exit 1");
    let taken = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
    let port = taken
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port()
        .to_string();
    let model = fake.model();
    let mut launcher = fake.launch(
        &[
            "--model",
            &model,
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--startup-timeout-secs",
            "20",
        ],
        &[],
    );
    let status = launcher.wait_exit(PATIENCE);
    let output = launcher.output();
    assert!(
        status.is_some_and(|s| !s.success()),
        "{status:?}:\n{output}"
    );
    assert!(
        output.contains(&format!("port {port}")) && output.contains("already in use"),
        "{output}"
    );
    assert!(
        fake.pid("shard.pid").is_none(),
        "a shard was started:\n{output}"
    );
}

/// `--startup-timeout-secs` is one deadline for the whole start-up. Each wait used to get
/// the full timeout afresh: here shard-0 gets ready at 13 s and shard-1 only at 27 s of a
/// 20 s budget, and the launcher went on to start the router (and would have waited for it
/// another 20 s). Now shard-1 misses the deadline and the router is never started. (Margins
/// of about 7 s both ways: the launcher may start up to 7 s late before this passes by
/// luck of timing, and the old code would have had 6 s to spare.)
#[test]
fn the_startup_timeout_covers_the_whole_start_up() {
    let shard = "echo $$ > \"$FAKE_DIR/shard-$$.pid\"\nexec sleep 300";
    let router = "echo $$ > \"$FAKE_DIR/router.tmp\" && mv \"$FAKE_DIR/router.tmp\" \"$FAKE_DIR/router.pid\"\n\
                  exec sleep 300";
    let fake = FakeDeployment::new("startup-deadline", shard, router);
    let base = health::free_port_run(2);
    let model = fake.model();
    let started = Instant::now();
    let mut launcher = fake.launch(
        &[
            "--model",
            &model,
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--num-shards",
            "2",
            "--shard-base-port",
            &base.to_string(),
            "--startup-timeout-secs",
            "20",
        ],
        &[],
    );
    std::thread::sleep(Duration::from_secs(13).saturating_sub(started.elapsed()));
    health::serve(base);
    launcher.wait_for_output("shard-0 is serving");
    let early = launcher.wait_exit(Duration::from_secs(27).saturating_sub(started.elapsed()));
    if early.is_none() {
        health::serve(base + 1);
    }
    let status = early.or_else(|| launcher.wait_exit(PATIENCE));
    let output = launcher.output();
    assert!(
        status.is_some_and(|s| !s.success()),
        "{status:?}:\n{output}"
    );
    assert!(
        fake.pid("router.pid").is_none(),
        "the router was started after the start-up deadline:\n{output}"
    );
    assert!(
        output.contains("shard-1") && output.contains("not ready 20 s after start-up began"),
        "{output}"
    );
    // The shards were stopped, not left behind.
    let leftovers = || {
        std::fs::read_dir(&fake.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| t.trim().parse::<i32>().ok())
            .any(common::alive)
    };
    assert!(
        poll(PATIENCE, || !leftovers()),
        "a shard outlived the launcher"
    );
}
