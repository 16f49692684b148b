//! Start-up failures of the launcher, with real processes over fake child binaries.

mod common;

use std::net::TcpListener;

use common::{FakeDeployment, PATIENCE, stubborn_shard};

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
