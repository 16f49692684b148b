//! A tiny deterministic `CausalLm` for engine tests that really uses its paged KV storage.
//!
//! Each step it writes `(token, position)` into the slots named by the block table, then
//! derives the next token from a hash of everything it reads back through the block table.
//! A wrong block table, a block shared by two sequences or a missed write changes the
//! tokens (or fails the step), so batched runs only match solo runs if paging is right.

use crate::model::{CausalLm, DeviceSampling, ModelError, ModelInfo, SeqChunk};
use pagedserve_proto::v1 as pb;
use std::collections::VecDeque;
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
    /// Launches overlapped steps (`CausalLm::launch`), drawing the tokens `forward`'s
    /// logits pick.
    pub overlap: bool,
    /// Draws of launched steps not yet collected, oldest first.
    launched: VecDeque<Vec<u32>>,
    /// Draws of the step launched last: what feeds the next one's placeholders.
    last_draws: Vec<u32>,
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
            overlap: false,
            launched: VecDeque::new(),
            last_draws: Vec::new(),
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
        let draws = self.run(batch, &[])?;
        Ok(draws
            .into_iter()
            .map(|token| {
                let mut logits = vec![0.0; FAKE_VOCAB];
                logits[token as usize] = 10.0;
                logits
            })
            .collect())
    }

    fn can_launch(&self) -> bool {
        self.overlap
    }

    fn launch(
        &mut self,
        batch: &[SeqChunk<'_>],
        params: &[DeviceSampling],
        feeds: &[(usize, u32)],
    ) -> Result<(), ModelError> {
        if self.launched.len() >= 2 {
            return Err(ModelError::Backend("a third step in flight".into()));
        }
        let draws = self.run(batch, feeds)?;
        if params.len() != draws.len() {
            return Err(ModelError::InvalidBatch(format!(
                "{} sampling parameters for {} draws",
                params.len(),
                draws.len()
            )));
        }
        self.last_draws = draws.clone();
        self.launched.push_back(draws);
        Ok(())
    }

    fn collect(&mut self) -> Result<Vec<u32>, ModelError> {
        self.launched
            .pop_front()
            .ok_or_else(|| ModelError::Backend("no launched step to collect".into()))
    }
}

impl FakeLm {
    /// One step: writes every chunk's tokens (a fed chunk's last one replaced by the last
    /// launch's draw, as the device does) and returns the draws of the chunks that need them.
    fn run(
        &mut self,
        batch: &[SeqChunk<'_>],
        feeds: &[(usize, u32)],
    ) -> Result<Vec<u32>, ModelError> {
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
        for (c, chunk) in batch.iter().enumerate() {
            let fed = match feeds.iter().find(|f| f.0 == c) {
                Some(&(_, k)) => Some(*self.last_draws.get(k as usize).ok_or_else(|| {
                    ModelError::InvalidBatch(format!("chunk {c} fed by missing draw {k}"))
                })?),
                None => None,
            };
            let last = chunk.tokens.len().saturating_sub(1);
            for (i, &token) in chunk.tokens.iter().enumerate() {
                let token = match fed {
                    Some(t) if i == last => t,
                    _ => token,
                };
                let pos = chunk.start_pos + i;
                let slot = self.slot(chunk.block_table, pos)?;
                self.slots[slot] = Some((token, pos));
            }
        }
        batch
            .iter()
            .filter(|c| c.need_logits)
            .map(|c| self.next_token(c))
            .collect()
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
