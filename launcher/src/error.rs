//! The launcher's error type: every message says what went wrong and what to do about it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error(transparent)]
    Hub(#[from] crate::hub::HubError),

    #[error("could not fetch the default model: {0}")]
    DefaultModel(String),

    #[error(
        "`{name}` not found at {path}; build it with `cargo build` (it must sit next to pagedserve)"
    )]
    BinaryMissing { name: &'static str, path: PathBuf },

    #[error("could not find this executable's directory: {0}")]
    CurrentExe(#[source] std::io::Error),

    #[error("port {port} ({what}) is not available on 127.0.0.1: {source}")]
    PortBusy {
        port: u16,
        what: String,
        source: std::io::Error,
    },

    #[error(
        "port {port} on {host} (the HTTP API's --port) is already in use ({source}); stop \
         what listens there or pick another --port"
    )]
    RouterPortBusy {
        host: String,
        port: u16,
        source: std::io::Error,
    },

    #[error("the HTTP API cannot listen on {host} port {port} ({source}); check --host and --port")]
    RouterBind {
        host: String,
        port: u16,
        source: std::io::Error,
    },

    #[error("--shard-base-port {base} with {count} shards runs past port 65535")]
    PortRange { base: u16, count: u16 },

    #[error("{0}")]
    Config(String),

    #[error("could not pick a free port: {0}")]
    NoFreePort(#[source] std::io::Error),

    #[error("could not start {name}: {source}")]
    Spawn {
        name: String,
        source: std::io::Error,
    },

    #[error("{name} exited during start-up ({status}); see its log above")]
    DiedDuringStartup { name: String, status: String },

    #[error(
        "{name} was not ready {secs} s after start-up began (--startup-timeout-secs covers \
         every shard and the router)"
    )]
    StartupTimeout { name: String, secs: u64 },

    #[error("{name} exited unexpectedly ({status}); stopped the others")]
    ChildDied { name: String, status: String },

    #[error("interrupted by a signal during start-up")]
    Interrupted,

    #[error("could not install a signal handler: {0}")]
    Signal(#[source] std::io::Error),
}

pub type Result<T> = std::result::Result<T, LaunchError>;
