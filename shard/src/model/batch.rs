//! Validates one step's batch and flattens it into a [`StepPlan`]: every chunk's tokens become
//! consecutive activation rows, so each matmul runs once per layer for the whole step.

use crate::backend::{AttnSeq, StepPlan};
use crate::model::{ModelError, SeqChunk};

/// Limits a batch is checked against.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub vocab_size: usize,
    pub block_size: usize,
    pub num_blocks: usize,
    pub max_context: usize,
}

pub fn build_plan(batch: &[SeqChunk<'_>], lim: &BatchLimits) -> Result<StepPlan, ModelError> {
    let rows: usize = batch.iter().map(|c| c.tokens.len()).sum();
    let mut plan = StepPlan {
        tokens: Vec::with_capacity(rows),
        positions: Vec::with_capacity(rows),
        slots: Vec::with_capacity(rows),
        seqs: Vec::with_capacity(batch.len()),
        block_tables: Vec::new(),
        logit_rows: Vec::new(),
    };
    for (i, chunk) in batch.iter().enumerate() {
        let invalid = |why: String| ModelError::InvalidBatch(format!("chunk {i}: {why}"));
        let n = chunk.tokens.len();
        if n == 0 {
            return Err(invalid("no tokens".into()));
        }
        let end = chunk.start_pos + n;
        if end > lim.max_context {
            return Err(invalid(format!(
                "{end} tokens exceed the context of {}",
                lim.max_context
            )));
        }
        if let Some(t) = chunk.tokens.iter().find(|&&t| t as usize >= lim.vocab_size) {
            return Err(invalid(format!(
                "token {t} >= vocab size {}",
                lim.vocab_size
            )));
        }
        let needed = end.div_ceil(lim.block_size);
        let table = chunk.block_table.get(..needed).ok_or_else(|| {
            invalid(format!(
                "{} blocks cover fewer than {end} tokens",
                chunk.block_table.len()
            ))
        })?;
        if let Some(b) = table.iter().find(|&&b| b as usize >= lim.num_blocks) {
            return Err(invalid(format!("block {b} >= {} blocks", lim.num_blocks)));
        }
        let row_start = plan.tokens.len();
        plan.seqs.push(AttnSeq {
            row_start,
            num_rows: n,
            start_pos: chunk.start_pos,
            table_start: plan.block_tables.len(),
            table_len: needed,
        });
        plan.block_tables.extend_from_slice(table);
        for (j, &tok) in chunk.tokens.iter().enumerate() {
            let pos = chunk.start_pos + j;
            let slot = table[pos / lim.block_size] as usize * lim.block_size + pos % lim.block_size;
            plan.tokens.push(tok);
            plan.positions.push(to_u32(pos, &invalid)?);
            plan.slots.push(to_u32(slot, &invalid)?);
        }
        if chunk.need_logits {
            plan.logit_rows.push(row_start + n - 1);
        }
    }
    Ok(plan)
}

fn to_u32(v: usize, invalid: &impl Fn(String) -> ModelError) -> Result<u32, ModelError> {
    u32::try_from(v).map_err(|_| invalid(format!("{v} does not fit in u32")))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    const LIM: BatchLimits = BatchLimits {
        vocab_size: 100,
        block_size: 4,
        num_blocks: 8,
        max_context: 32,
    };

    fn chunk<'a>(
        tokens: &'a [u32],
        start_pos: usize,
        table: &'a [u32],
        need: bool,
    ) -> SeqChunk<'a> {
        SeqChunk {
            tokens,
            start_pos,
            block_table: table,
            need_logits: need,
        }
    }

    #[test]
    fn flattens_chunks_into_rows_slots_and_tables() {
        let batch = [
            chunk(&[5, 6, 7], 3, &[2, 6], false),
            chunk(&[9], 0, &[1, 7], true),
        ];
        let plan = build_plan(&batch, &LIM).unwrap();
        assert_eq!(plan.tokens, vec![5, 6, 7, 9]);
        assert_eq!(plan.positions, vec![3, 4, 5, 0]);
        // pos 3 -> block 2 offset 3; pos 4, 5 -> block 6 offsets 0, 1; pos 0 -> block 1.
        assert_eq!(plan.slots, vec![11, 24, 25, 4]);
        // The second sequence only needs its first block.
        assert_eq!(plan.block_tables, vec![2, 6, 1]);
        assert_eq!(
            plan.seqs[1],
            AttnSeq {
                row_start: 3,
                num_rows: 1,
                start_pos: 0,
                table_start: 2,
                table_len: 1
            }
        );
        assert_eq!(plan.logit_rows, vec![3]);
    }

    #[test]
    fn rejects_invalid_batches() {
        let cases = [
            chunk(&[], 0, &[0], true),
            chunk(&[100], 0, &[0], true),
            chunk(&[1, 2], 3, &[0], true),
            chunk(&[1], 0, &[8], true),
            chunk(&[1], 32, &[0; 9], true),
        ];
        for c in cases {
            let err = build_plan(&[c], &LIM).unwrap_err();
            assert!(matches!(err, ModelError::InvalidBatch(_)), "{c:?}: {err}");
        }
    }
}
