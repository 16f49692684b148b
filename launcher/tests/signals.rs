//! Signals to the launcher, with real processes: fake shards that ignore SIGTERM stand in
//! for shards in a long drain.

mod common;

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
    assert!(
        poll(PATIENCE, || fake.pid("shard.pid").is_some()),
        "the fake shard never started:\n{}",
        launcher.output()
    );
    let shard = fake.pid("shard.pid").unwrap_or_default();
    launcher.signal(libc::SIGTERM);
    // The second signal must come after the first was handled (pending signals merge).
    launcher.wait_for_output("stopping children");
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
