//! Shard port assignment: a fixed range from `--shard-base-port`, or free ports from the OS.

use std::net::{Ipv4Addr, TcpListener};

use crate::error::{LaunchError, Result};

/// Ports for `count` shards, none equal to `avoid` (the router's port).
///
/// Free ports are found by binding port 0 and releasing it; another process could take one
/// in between, in which case that shard fails to bind and the launcher reports it.
pub fn shard_ports(base: Option<u16>, count: u16, avoid: u16) -> Result<Vec<u16>> {
    match base {
        Some(base) => fixed_ports(base, count, avoid),
        None => free_ports(count, avoid),
    }
}

/// Fails when the router could not bind `host:port`: something already listens there, or
/// the address cannot be bound at all (a port below 1024 without the privilege, as under
/// Kubernetes' runAsNonRoot; an address not on this machine; a host that does not resolve).
/// Checked before the model is fetched and the shards load (minutes for a large model),
/// which is when the router would otherwise find out; and a foreign server on the port
/// could even answer the start-up probe. The router binds the same way (SO_REUSEADDR).
pub fn check_router_port(host: &str, port: u16) -> Result<()> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match TcpListener::bind((bare, port)) {
        Ok(_) => Ok(()),
        Err(source) if source.kind() == std::io::ErrorKind::AddrInUse => {
            Err(LaunchError::RouterPortBusy {
                host: host.to_owned(),
                port,
                source,
            })
        }
        Err(source) => Err(LaunchError::RouterBind {
            host: host.to_owned(),
            port,
            source,
        }),
    }
}

fn fixed_ports(base: u16, count: u16, avoid: u16) -> Result<Vec<u16>> {
    let last = base
        .checked_add(count.saturating_sub(1))
        .ok_or(LaunchError::PortRange { base, count })?;
    let ports: Vec<u16> = (base..=last).collect();
    if let Some(i) = ports.iter().position(|&p| p == avoid) {
        let source = std::io::Error::other("it is the router's --port");
        let what = format!("shard {i}");
        return Err(LaunchError::PortBusy {
            port: avoid,
            what,
            source,
        });
    }
    for (i, &port) in ports.iter().enumerate() {
        let what = format!("shard {i}");
        // Fail fast with a clear message rather than letting a shard die on bind.
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).map_err(|source| LaunchError::PortBusy {
            port,
            what,
            source,
        })?;
    }
    Ok(ports)
}

fn free_ports(count: u16, avoid: u16) -> Result<Vec<u16>> {
    free_ports_avoiding(count, &[avoid])
}

/// Rendezvous ports of `groups` tensor-parallel groups (rank 0 listens, the other ranks
/// connect), free now and none of `avoid` (the router's and the shards' ports).
pub fn tp_ports(groups: u16, avoid: &[u16]) -> Result<Vec<u16>> {
    free_ports_avoiding(groups, avoid)
}

fn free_ports_avoiding(count: u16, avoid: &[u16]) -> Result<Vec<u16>> {
    // Hold every listener until all are picked so the OS hands out distinct ports.
    let mut held = Vec::with_capacity(usize::from(count));
    while held.len() < usize::from(count) {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(LaunchError::NoFreePort)?;
        let port = listener
            .local_addr()
            .map_err(LaunchError::NoFreePort)?
            .port();
        if !avoid.contains(&port) {
            held.push((port, listener));
        }
    }
    Ok(held.into_iter().map(|(port, _)| port).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_and_avoid_the_router() {
        let ports = shard_ports(None, 8, 0).expect("free ports");
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 8);
        assert!(ports.iter().all(|&p| p != 0));
    }

    #[test]
    fn tp_ports_avoid_the_given_ports() {
        let taken = shard_ports(None, 4, 0).expect("free ports");
        let tp = tp_ports(4, &taken).expect("free ports");
        assert_eq!(tp.len(), 4);
        assert!(tp.iter().all(|p| !taken.contains(p)), "{tp:?} vs {taken:?}");
    }

    #[test]
    fn fixed_ports_are_consecutive() {
        // Find a free pair by asking for one port and hoping its neighbour is free too.
        let base = (0..20)
            .filter_map(|_| free_ports(1, 0).ok())
            .map(|p| p[0])
            .find(|&p| p < 65000 && shard_ports(Some(p), 2, 0).is_ok())
            .expect("some free consecutive pair");
        assert_eq!(
            shard_ports(Some(base), 2, 0).expect("free"),
            vec![base, base + 1]
        );
    }

    #[test]
    fn busy_port_is_reported() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let err = shard_ports(Some(port), 1, 0).expect_err("port is in use");
        assert!(matches!(err, LaunchError::PortBusy { port: p, .. } if p == port));
    }

    #[test]
    fn router_port_clash_is_reported() {
        let err = shard_ports(Some(9000), 3, 9001).expect_err("router port inside range");
        assert!(matches!(err, LaunchError::PortBusy { port: 9001, .. }));
    }

    #[test]
    fn a_busy_router_port_is_reported() {
        let taken = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = taken.local_addr().expect("addr").port();
        let err = check_router_port("127.0.0.1", port).expect_err("port is in use");
        assert!(matches!(err, LaunchError::RouterPortBusy { port: p, .. } if p == port));
        drop(taken);
        assert!(check_router_port("127.0.0.1", port).is_ok(), "free again");
        assert!(
            check_router_port("[::1]", 0).is_ok(),
            "brackets are stripped"
        );
    }

    #[test]
    fn an_address_the_router_cannot_bind_is_reported() {
        // TEST-NET-3 (RFC 5737): never an address of this machine.
        let err = check_router_port("203.0.113.7", 0).expect_err("not a local address");
        assert!(matches!(err, LaunchError::RouterBind { .. }), "{err}");
        assert!(err.to_string().contains("203.0.113.7"), "{err}");
    }

    #[test]
    fn range_past_65535_is_rejected() {
        let err = shard_ports(Some(65535), 2, 0).expect_err("overflow");
        assert!(matches!(err, LaunchError::PortRange { .. }));
    }
}
