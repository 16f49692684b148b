//! CUDA graphs of decode-only steps, one per batch-size bucket: a step of B sequences is padded
//! to the next bucket and replays that bucket's graph, so a decode step costs one launch on
//! the host instead of ~10 per layer.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
use cudarc::driver::{CudaGraph, CudaStream};

use super::device::cuda_err;
use super::model::StepShape;
use crate::backend::{BackendError, BackendResult};

/// Decode batch sizes that get a graph (vLLM's are similar: 1, 2, 4, then steps of 8).
pub fn buckets(max_seqs: usize) -> Vec<usize> {
    let mut b = vec![1, 2, 4];
    b.extend((1..).map(|i| 8 * i).take_while(|&n| n < 64));
    b.extend((2..).map(|i| 32 * i).take_while(|&n| n < 256));
    b.extend((4..).map(|i| 64 * i).take_while(|&n| n <= 1024));
    b.retain(|&n| n < max_seqs);
    b.push(max_seqs);
    b.sort_unstable();
    b.dedup();
    b
}

/// A captured graph that may move to another thread with its owner.
struct OwnedGraph(CudaGraph);

// SAFETY: CUDA graph handles may be used from any thread as long as calls on one graph are
// not concurrent; `Graphs` is owned by one model, which one thread drives at a time (the
// model is `Send`, not `Sync`).
unsafe impl Send for OwnedGraph {}

pub struct Graphs {
    enabled: bool,
    buckets: Vec<usize>,
    graphs: HashMap<StepShape, OwnedGraph>,
}

impl Graphs {
    pub fn new(enabled: bool, max_seqs: usize) -> Self {
        Self {
            enabled,
            buckets: buckets(max_seqs),
            graphs: HashMap::new(),
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    pub fn buckets(&self) -> &[usize] {
        &self.buckets
    }

    /// The bucket a decode step of `n` sequences is padded to, when graphs are on.
    pub fn bucket_for(&self, n: usize) -> Option<usize> {
        if !self.enabled {
            return None;
        }
        self.buckets.iter().copied().find(|&b| b >= n)
    }

    pub fn has(&self, shape: StepShape) -> bool {
        self.graphs.contains_key(&shape)
    }

    pub fn len(&self) -> usize {
        self.graphs.len()
    }

    pub fn begin(&self, stream: &Arc<CudaStream>) -> BackendResult<()> {
        stream
            .begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(cuda_err("begin graph capture"))
    }

    pub fn end(&self, stream: &Arc<CudaStream>) -> BackendResult<CudaGraph> {
        let graph = stream
            .end_capture(CUgraphInstantiate_flags(0))
            .map_err(cuda_err("end graph capture"))?
            .ok_or_else(|| BackendError::Cuda("graph capture recorded nothing".into()))?;
        graph.upload().map_err(cuda_err("upload graph"))?;
        Ok(graph)
    }

    pub fn insert(&mut self, shape: StepShape, graph: CudaGraph) {
        self.graphs.insert(shape, OwnedGraph(graph));
    }

    pub fn launch(&self, shape: StepShape) -> BackendResult<()> {
        let graph = self
            .graphs
            .get(&shape)
            .ok_or_else(|| BackendError::Cuda(format!("no graph for {shape:?}")))?;
        graph.0.launch().map_err(cuda_err("launch graph"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_batch_size() {
        let b = buckets(256);
        assert_eq!(&b[..6], &[1, 2, 4, 8, 16, 24]);
        assert_eq!(*b.last().unwrap_or(&0), 256);
        let g = Graphs::new(true, 256);
        for n in 1..=256 {
            let bucket = g.bucket_for(n).unwrap_or(0);
            assert!(bucket >= n && bucket <= n + 32, "{n} -> {bucket}");
        }
        assert_eq!(g.bucket_for(257), None);
        assert_eq!(buckets(3), vec![1, 2, 3]);
        assert_eq!(Graphs::new(false, 8).bucket_for(1), None);
    }
}
