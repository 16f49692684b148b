//! Tensor parallelism over GPUs of one host: a group of `size` shard processes, one GPU each,
//! holding a Megatron split of the weights (`crate::model::tp`). Rank 0 (the leader) serves
//! gRPC and runs the engine; before each step it sends the step's metadata to the followers
//! over TCP, then every rank uploads the same metadata and runs the same forward, joined by
//! NCCL all-reduces after o_proj and down. Followers skip the logits.

mod comm;
mod link;
pub(super) mod wire;

use std::net::TcpStream;
use std::time::Duration;

pub use comm::Nccl;
pub use link::LeaderLink;

use crate::backend::{BackendError, BackendResult};
use crate::model::tp::TpShard;

/// This process's place in a tensor-parallel group (`--tp-size`, `--tp-rank`, `--tp-addr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TpConfig {
    pub size: usize,
    pub rank: usize,
    /// `HOST:PORT` the leader listens on and the followers connect to (needed when size > 1).
    pub addr: Option<String>,
    /// How long the leader waits for the followers, and a follower for the leader.
    pub join_timeout: Duration,
}

impl TpConfig {
    /// No tensor parallelism.
    pub fn single() -> Self {
        Self {
            size: 1,
            rank: 0,
            addr: None,
            join_timeout: Duration::from_secs(600),
        }
    }
}

pub(super) enum Role {
    Leader(LeaderLink),
    Follower(TcpStream),
}

/// A joined group: NCCL and the step channel (absent for a single rank).
pub(super) struct Group {
    pub comm: Nccl,
    pub role: Role,
}

/// Joins the group `cfg` describes: the leader makes the NCCL id and hands it out over the
/// link, then every rank joins the NCCL communicator on `stream`. `None` for size 1.
pub(super) fn join_group(
    cfg: &TpConfig,
    stream: &std::sync::Arc<cudarc::driver::CudaStream>,
) -> BackendResult<Option<Group>> {
    if cfg.size <= 1 {
        return Ok(None);
    }
    let addr = cfg.addr.as_deref().ok_or_else(|| {
        BackendError::Cuda("--tp-size > 1 needs --tp-addr HOST:PORT (the leader's)".into())
    })?;
    let link_err = |e: wire::LinkError| BackendError::Cuda(e.to_string());
    let (role, id) = match cfg.rank {
        0 => {
            let id = comm::unique_id()?;
            tracing::info!(
                addr,
                size = cfg.size,
                "waiting for tensor-parallel followers"
            );
            let link =
                LeaderLink::accept(addr, cfg.size, &id, cfg.join_timeout).map_err(link_err)?;
            (Role::Leader(link), id)
        }
        rank => {
            comm::check_nccl()?;
            let (stream, id) =
                link::join(addr, rank, cfg.size, cfg.join_timeout).map_err(link_err)?;
            (Role::Follower(stream), id)
        }
    };
    let comm = Nccl::join(stream, cfg.rank, cfg.size, &id)?;
    tracing::info!(rank = cfg.rank, size = cfg.size, "NCCL communicator ready");
    Ok(Some(Group { comm, role }))
}

/// The weight split for `cfg`'s model on this rank, or why the model cannot be split so.
pub(super) fn shard_for(
    tp: &TpConfig,
    cfg: &crate::model::LlamaConfig,
) -> Result<TpShard, crate::model::ModelError> {
    TpShard::new(cfg, tp.size, tp.rank).map_err(|e| crate::model::ModelError::Format(e.to_string()))
}
