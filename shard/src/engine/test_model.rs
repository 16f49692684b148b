//! A tiny deterministic `CausalLm` for engine tests that really uses its paged KV storage.
//!
//! Each step it writes `(token, position)` into the slots named by the block table, then
//! derives the next token from a hash of everything it reads back through the block table.
//! A wrong block table, a block shared by two sequences or a missed write changes the
//! tokens (or fails the step), so batched runs only match solo runs if paging is right.

use crate::model::{CausalLm, ModelError, ModelInfo, SeqChunk};
use pagedserve_proto::v1 as pb;
use std::sync::{Arc, Mutex};

/// `(start_pos, len, need_logits)` of every chunk, one entry per forward call.
pub(crate) type ForwardLog = Arc<Mutex<Vec<Vec<(usize, usize, bool)>>>>;

pub(crate) const FAKE_VOCAB: usize = 50;
pub(crate) const FAKE_EOS: u32 = 0;

pub(crate) struct FakeLm {
    info: ModelInfo,
    block_size: usize,
    num_blocks: usize,
    slots: Vec<Option<(u32, usize)>>,
    pub log: ForwardLog,
    /// Sequences that reach this many tokens produce EOS next.
    pub eos_at_len: Option<usize>,
    /// Makes the next forward fail.
    pub fail_next: Arc<Mutex<bool>>,
    /// Sleep per forward, so tests over a socket can act while sequences still run.
    pub step_delay: std::time::Duration,
}

impl FakeLm {
    pub fn new(block_size: usize, num_blocks: usize, max_context: usize) -> Self {
        Self {
            info: ModelInfo {
                name: "fake".into(),
                dtype: "f32".into(),
                device: "cpu".into(),
                vocab_size: FAKE_VOCAB,
                max_context,
                num_layers: 1,
                num_kv_heads: 1,
                head_dim: 1,
                eos_token_ids: vec![FAKE_EOS],
                bos_token_id: None,
            },
            block_size,
            num_blocks,
            slots: vec![None; block_size * num_blocks],
            log: ForwardLog::default(),
            eos_at_len: None,
            fail_next: Arc::default(),
            step_delay: std::time::Duration::ZERO,
        }
    }

    fn slot(&self, table: &[u32], pos: usize) -> Result<usize, ModelError> {
        let block = table
            .get(pos / self.block_size)
            .ok_or_else(|| ModelError::InvalidBatch(format!("no block for position {pos}")))?;
        let slot = *block as usize * self.block_size + pos % self.block_size;
        if slot >= self.slots.len() {
            return Err(ModelError::InvalidBatch(format!(
                "block {block} out of range"
            )));
        }
        Ok(slot)
    }

    fn next_token(&self, chunk: &SeqChunk<'_>) -> Result<u32, ModelError> {
        let len = chunk.start_pos + chunk.tokens.len();
        if self.eos_at_len.is_some_and(|n| len >= n) {
            return Ok(FAKE_EOS);
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for pos in 0..len {
            let stored = self.slots[self.slot(chunk.block_table, pos)?];
            let Some((token, p)) = stored.filter(|&(_, p)| p == pos) else {
                return Err(ModelError::InvalidBatch(format!("stale KV at {pos}")));
            };
            h = (h ^ u64::from(token) ^ ((p as u64) << 20)).wrapping_mul(0x1000_0000_01b3);
        }
        // Never 0, so EOS only comes from `eos_at_len`.
        Ok(1 + (h % (FAKE_VOCAB as u64 - 1)) as u32)
    }
}

impl CausalLm for FakeLm {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn block_size(&self) -> usize {
        self.block_size
    }

    fn num_kv_blocks(&self) -> usize {
        self.num_blocks
    }

    fn forward(&mut self, batch: &[SeqChunk<'_>]) -> Result<Vec<Vec<f32>>, ModelError> {
        std::thread::sleep(self.step_delay);
        if let Ok(mut log) = self.log.lock() {
            log.push(
                batch
                    .iter()
                    .map(|c| (c.start_pos, c.tokens.len(), c.need_logits))
                    .collect(),
            );
        }
        if let Ok(mut fail) = self.fail_next.lock()
            && std::mem::take(&mut *fail)
        {
            return Err(ModelError::Backend("injected failure".into()));
        }
        for chunk in batch {
            for (i, &token) in chunk.tokens.iter().enumerate() {
                let pos = chunk.start_pos + i;
                let slot = self.slot(chunk.block_table, pos)?;
                self.slots[slot] = Some((token, pos));
            }
        }
        let mut rows = Vec::new();
        for chunk in batch.iter().filter(|c| c.need_logits) {
            let mut logits = vec![0.0; FAKE_VOCAB];
            logits[self.next_token(chunk)? as usize] = 10.0;
            rows.push(logits);
        }
        Ok(rows)
    }
}

/// A greedy request for `max_tokens` tokens after `prompt`.
pub(crate) fn request(id: u64, prompt: Vec<u32>, max_tokens: u32) -> pb::Request {
    pb::Request {
        id,
        prompt_ids: prompt,
        stopping: Some(pb::StoppingCriteria {
            max_tokens,
            ..Default::default()
        }),
        ..Default::default()
    }
}
