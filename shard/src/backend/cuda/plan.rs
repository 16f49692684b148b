//! One step's metadata, laid out for the GPU: every per-step array lives at a fixed offset of
//! one device buffer, so a CUDA graph captured once reads each step's values from the same
//! addresses, and the host sends the step with a single copy.
//!
//! Layout (u32 elements): tokens, positions, slots (`t_max` each), decode query rows, decode
//! context lengths (`s_max` each), prefill `(row_start, num_rows, start_pos)` (`3 * s_max`),
//! prefill tiles `(seq, first row)` (`2 * tiles_max`), block tables (`s_max * bt_stride`,
//! decode sequences first, then prefill sequences). i32 fields are stored as their bits.

use crate::backend::{AttnSeq, StepPlan};

/// Slot value of a padding row: the KV write skips it.
pub const PAD_SLOT: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetaLayout {
    pub t_max: usize,
    pub s_max: usize,
    pub tiles_max: usize,
    pub bt_stride: usize,
}

impl MetaLayout {
    pub fn tokens(&self) -> usize {
        0
    }
    pub fn positions(&self) -> usize {
        self.t_max
    }
    pub fn slots(&self) -> usize {
        2 * self.t_max
    }
    pub fn dq_rows(&self) -> usize {
        3 * self.t_max
    }
    pub fn dctx(&self) -> usize {
        self.dq_rows() + self.s_max
    }
    pub fn seq_info(&self) -> usize {
        self.dctx() + self.s_max
    }
    pub fn tiles(&self) -> usize {
        self.seq_info() + 3 * self.s_max
    }
    pub fn block_tables(&self) -> usize {
        self.tiles() + 2 * self.tiles_max
    }
    pub fn len(&self) -> usize {
        self.block_tables() + self.s_max * self.bt_stride
    }
}

/// A step staged on the host, ready for one copy to the device.
#[derive(Debug, Clone, Default)]
pub struct StagedStep {
    /// Activation rows the kernels run over (the step's rows, or a graph bucket's padded size).
    pub rows: usize,
    pub decode_seqs: usize,
    pub prefill_seqs: usize,
    pub num_tiles: usize,
    /// Query rows a prefill tile, as `tiles` cut them (0 without prefill): the launch runs the
    /// kernel of this size.
    pub tile_rows: usize,
    /// Rows whose logits are returned, in output order.
    pub logit_rows: Vec<usize>,
    /// Words of the meta buffer's prefix the step uses: the host copies `0..len` to the device.
    pub len: usize,
}

/// What a staging buffer that lives across steps holds beyond zeros: the counts each region
/// was last written to, and every block-table row's last length. [`stage_into`] writes a step
/// and zeroes only what the last one left past it, so the prefix it copies is the same as
/// staging into a freshly zeroed buffer, without clearing the whole of it each step (up to
/// `s_max * bt_stride` words: 0.9 MB for 384 sequences of an 8k context).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StagedMarks {
    rows: usize,
    decode: usize,
    prefill: usize,
    tiles: usize,
    /// Per block-table row (grown on demand): words written past the row's start.
    table_lens: Vec<usize>,
}

/// Why a step does not fit the preallocated buffers.
#[derive(Debug, thiserror::Error)]
#[error("step does not fit the CUDA buffers: {0}")]
pub struct StageError(pub String);

/// Lays `plan` out in `layout`, padding the rows (and decode sequences) to `pad_rows` when
/// given (a decode-only graph bucket). `tiles` cuts prefill sequences into query tiles and says
/// their size in rows. Refused where a row of a prefill step is in no sequence.
///
/// `host` is a buffer of `layout.len()` words that holds what the steps staged into it before
/// (zeros where `marks` says nothing was written): the step's prefix `0..len` comes out as
/// staging into a zeroed buffer lays it out, and `marks` follows what the buffer now holds.
pub fn stage_into(
    plan: &StepPlan,
    layout: &MetaLayout,
    pad_rows: Option<usize>,
    tiles: impl Fn(&[[i32; 3]]) -> (usize, Vec<[i32; 2]>),
    host: &mut [u32],
    marks: &mut StagedMarks,
) -> Result<StagedStep, StageError> {
    if host.len() < layout.len() {
        return Err(StageError(format!(
            "a staging buffer of {} words < {}",
            host.len(),
            layout.len()
        )));
    }
    let real_rows = plan.tokens.len();
    let rows = pad_rows.unwrap_or(real_rows).max(real_rows);
    let (decode, prefill): (Vec<&AttnSeq>, Vec<&AttnSeq>) =
        plan.seqs.iter().partition(|s| s.num_rows == 1);
    let padded_decode = match pad_rows {
        Some(_) if !prefill.is_empty() => {
            return Err(StageError("a padded step must be decode-only".into()));
        }
        Some(p) => p.max(decode.len()),
        None => decode.len(),
    };
    let too_big = |what: &str, n: usize, max: usize| {
        (n > max).then(|| StageError(format!("{n} {what} > {max}")))
    };
    if let Some(e) = too_big("rows", rows, layout.t_max)
        .or_else(|| too_big("sequences", padded_decode + prefill.len(), layout.s_max))
    {
        return Err(e);
    }
    let prefill_rows: usize = prefill.iter().map(|s| s.num_rows).sum();
    if !prefill.is_empty() && prefill_rows + padded_decode != rows {
        return Err(StageError(format!(
            "{prefill_rows} prefill rows and {padded_decode} decode rows, in a step of {rows}"
        )));
    }
    let seq_info: Vec<[i32; 3]> = prefill
        .iter()
        .map(|s| [s.row_start as i32, s.num_rows as i32, s.start_pos as i32])
        .collect();
    let (tile_rows, tile_list) = match prefill.is_empty() {
        true => (0, Vec::new()),
        false => tiles(&seq_info),
    };
    if let Some(e) = too_big("prefill tiles", tile_list.len(), layout.tiles_max) {
        return Err(e);
    }
    // Every check before the first write: a refused step leaves the buffer as `marks` says.
    if let Some(s) = prefill
        .iter()
        .chain(&decode)
        .find(|s| s.table_len > layout.bt_stride)
    {
        return Err(StageError(format!(
            "{} blocks > {} per sequence",
            s.table_len, layout.bt_stride
        )));
    }
    let n_seqs = padded_decode + prefill.len();
    for r in 0..rows {
        let (tok, pos, slot) = match r < real_rows {
            true => (plan.tokens[r], plan.positions[r], plan.slots[r]),
            false => (0, 0, PAD_SLOT),
        };
        host[layout.tokens() + r] = tok;
        host[layout.positions() + r] = pos;
        host[layout.slots() + r] = slot;
    }
    if marks.table_lens.len() < n_seqs {
        marks.table_lens.resize(n_seqs, 0);
    }
    // Row `idx` gets `s`'s table (or none), and loses what an earlier step left past it.
    let mut put_table = |host: &mut [u32], idx: usize, s: Option<&AttnSeq>| {
        let table = s.map_or(&[][..], |s| {
            &plan.block_tables[s.table_start..s.table_start + s.table_len]
        });
        let at = layout.block_tables() + idx * layout.bt_stride;
        host[at..at + table.len()].copy_from_slice(table);
        let old = std::mem::replace(&mut marks.table_lens[idx], table.len());
        zero_past(host, at, table.len(), old);
    };
    for i in 0..padded_decode {
        // Padding sequences attend to nothing (context 0) from a padding row.
        let s = decode.get(i).copied();
        put_table(host, i, s);
        let (row, ctx) = match s {
            Some(s) => (s.row_start, s.start_pos + 1),
            None => (real_rows + i - decode.len(), 0),
        };
        host[layout.dq_rows() + i] = row as u32;
        host[layout.dctx() + i] = ctx as u32;
    }
    for (j, s) in prefill.iter().enumerate() {
        put_table(host, padded_decode + j, Some(s));
        let at = layout.seq_info() + 3 * j;
        for (k, v) in seq_info[j].iter().enumerate() {
            host[at + k] = *v as u32;
        }
    }
    for (j, t) in tile_list.iter().enumerate() {
        host[layout.tiles() + 2 * j] = t[0] as u32;
        host[layout.tiles() + 2 * j + 1] = t[1] as u32;
    }
    // What the last step wrote past this one's counts goes back to zero.
    for at in [layout.tokens(), layout.positions(), layout.slots()] {
        zero_past(host, at, rows, marks.rows);
    }
    for at in [layout.dq_rows(), layout.dctx()] {
        zero_past(host, at, padded_decode, marks.decode);
    }
    zero_past(
        host,
        layout.seq_info(),
        3 * prefill.len(),
        3 * marks.prefill,
    );
    zero_past(host, layout.tiles(), 2 * tile_list.len(), 2 * marks.tiles);
    (marks.rows, marks.decode) = (rows, padded_decode);
    (marks.prefill, marks.tiles) = (prefill.len(), tile_list.len());
    Ok(StagedStep {
        rows,
        decode_seqs: padded_decode,
        prefill_seqs: prefill.len(),
        num_tiles: tile_list.len(),
        tile_rows,
        logit_rows: plan.logit_rows.clone(),
        len: layout.block_tables() + n_seqs * layout.bt_stride,
    })
}

/// Zeroes `host[at + new..at + old]`: what an earlier step wrote past this one's `new` words
/// of the region at `at` (nothing when it wrote no more).
pub(super) fn zero_past(host: &mut [u32], at: usize, new: usize, old: usize) {
    if old > new {
        host[at + new..at + old].fill(0);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // unwrap is the assertion in tests
mod tests {
    use super::*;

    /// Stages into a fresh zeroed buffer: the reference the in-place staging is held to.
    fn stage(
        plan: &StepPlan,
        layout: &MetaLayout,
        pad_rows: Option<usize>,
        tiles: impl Fn(&[[i32; 3]]) -> (usize, Vec<[i32; 2]>),
    ) -> Result<(StagedStep, Vec<u32>), StageError> {
        let mut host = vec![0u32; layout.len()];
        let staged = stage_into(
            plan,
            layout,
            pad_rows,
            tiles,
            &mut host,
            &mut StagedMarks::default(),
        )?;
        host.truncate(staged.len);
        Ok((staged, host))
    }

    const L: MetaLayout = MetaLayout {
        t_max: 8,
        s_max: 4,
        tiles_max: 4,
        bt_stride: 3,
    };

    fn one_tile_each(info: &[[i32; 3]]) -> (usize, Vec<[i32; 2]>) {
        (128, (0..info.len()).map(|i| [i as i32, 0]).collect())
    }

    fn plan() -> StepPlan {
        // A decode at position 5 (blocks 7, 2) and a 3-token prefill chunk from position 0.
        StepPlan {
            tokens: vec![11, 20, 21, 22],
            positions: vec![5, 0, 1, 2],
            slots: vec![9, 0, 1, 2],
            seqs: vec![
                AttnSeq {
                    row_start: 0,
                    num_rows: 1,
                    start_pos: 5,
                    table_start: 0,
                    table_len: 2,
                },
                AttnSeq {
                    row_start: 1,
                    num_rows: 3,
                    start_pos: 0,
                    table_start: 2,
                    table_len: 1,
                },
            ],
            block_tables: vec![7, 2, 4],
            logit_rows: vec![0, 3],
        }
    }

    #[test]
    fn lays_out_decode_then_prefill() {
        let (s, h) = stage(&plan(), &L, None, one_tile_each).unwrap();
        assert_eq!(
            (s.rows, s.decode_seqs, s.prefill_seqs, s.num_tiles),
            (4, 1, 1, 1)
        );
        assert_eq!(s.tile_rows, 128, "the size `tiles` cut the tiles to");
        assert_eq!(&h[0..4], &[11, 20, 21, 22]);
        assert_eq!(&h[L.positions()..L.positions() + 4], &[5, 0, 1, 2]);
        assert_eq!(h[L.dq_rows()], 0);
        assert_eq!(h[L.dctx()], 6);
        assert_eq!(&h[L.seq_info()..L.seq_info() + 3], &[1, 3, 0]);
        let bt = L.block_tables();
        assert_eq!(&h[bt..bt + 6], &[7, 2, 0, 4, 0, 0]);
        assert_eq!(h.len(), bt + 2 * L.bt_stride);
    }

    #[test]
    fn pads_decode_steps_to_the_bucket() {
        let mut p = plan();
        p.seqs.truncate(1);
        p.tokens.truncate(1);
        p.positions.truncate(1);
        p.slots.truncate(1);
        p.logit_rows = vec![0];
        let (s, h) = stage(&p, &L, Some(3), one_tile_each).unwrap();
        assert_eq!((s.rows, s.decode_seqs), (3, 3));
        // No prefill: no tiles and no tile size, so every step of a bucket has one shape.
        assert_eq!((s.num_tiles, s.tile_rows), (0, 0));
        assert_eq!(&h[..3], &[11, 0, 0]);
        assert_eq!(&h[L.slots()..L.slots() + 3], &[9, PAD_SLOT, PAD_SLOT]);
        assert_eq!(&h[L.dctx()..L.dctx() + 3], &[6, 0, 0]);
        assert_eq!(&h[L.dq_rows()..L.dq_rows() + 3], &[0, 1, 2]);
        assert_eq!(s.len, h.len());
        // Padding a step with a prefill chunk is refused.
        assert!(stage(&plan(), &L, Some(4), one_tile_each).is_err());
    }

    #[test]
    fn refuses_prefill_steps_with_rows_of_no_sequence() {
        // The launch takes the prefill rows as rows less decode rows (the tile size follows).
        let mut p = plan();
        p.tokens.push(5);
        p.positions.push(0);
        p.slots.push(3);
        assert!(stage(&p, &L, None, one_tile_each).is_err());
    }

    #[test]
    fn refuses_steps_larger_than_the_buffers() {
        let mut p = plan();
        p.tokens = vec![1; 9];
        assert!(stage(&p, &L, None, one_tile_each).is_err());
        let mut p = plan();
        p.seqs[0].table_len = 4;
        p.block_tables = vec![1, 2, 3, 4, 5];
        assert!(stage(&p, &L, None, one_tile_each).is_err());
    }

    /// A random step: `decodes` one-row sequences then `prefills` chunks, tables of up to
    /// `max_table` blocks (more than `bt_stride` makes a step `stage` refuses).
    fn random_plan(rng: &mut u64, decodes: usize, prefills: usize, max_table: usize) -> StepPlan {
        let mut next = |n: usize| {
            *rng ^= *rng << 13;
            *rng ^= *rng >> 7;
            *rng ^= *rng << 17;
            (*rng % n.max(1) as u64) as usize
        };
        let mut p = StepPlan::default();
        for i in 0..decodes + prefills {
            let rows = if i < decodes { 1 } else { 1 + next(3) };
            let table_len = next(max_table + 1);
            p.seqs.push(AttnSeq {
                row_start: p.tokens.len(),
                num_rows: rows,
                start_pos: next(50),
                table_start: p.block_tables.len(),
                table_len,
            });
            for _ in 0..table_len {
                let b = 1 + next(1000) as u32;
                p.block_tables.push(b);
            }
            for _ in 0..rows {
                let (t, pos, slot) = (1 + next(500) as u32, next(60) as u32, next(900) as u32);
                p.tokens.push(t);
                p.positions.push(pos);
                p.slots.push(slot);
            }
            p.logit_rows.push(p.tokens.len() - 1);
        }
        p
    }

    #[test]
    fn staging_in_place_gives_what_a_zeroed_buffer_gives() {
        // Steps of every kind into one buffer, refused ones among them: after each accepted
        // step its prefix is exactly what staging into a fresh zeroed buffer gives.
        const B: MetaLayout = MetaLayout {
            t_max: 16,
            s_max: 6,
            tiles_max: 8,
            bt_stride: 5,
        };
        let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
        let mut host = vec![0u32; B.len()];
        let mut marks = StagedMarks::default();
        let (mut accepted, mut refused) = (0, 0);
        for step in 0..3000 {
            let prefills = if step % 3 == 0 { 0 } else { (step / 3) % 3 };
            let decodes = (step * 7) % 6;
            // Every 11th step may have a table past bt_stride (refused).
            let max_table = if step % 11 == 0 { 7 } else { 5 };
            let p = random_plan(&mut rng, decodes, prefills, max_table);
            let pad = (prefills == 0 && step % 2 == 0).then_some(decodes + step % 3);
            let fresh = stage(&p, &B, pad, one_tile_each);
            let before = host.clone();
            let in_place = stage_into(&p, &B, pad, one_tile_each, &mut host, &mut marks);
            match (fresh, in_place) {
                (Ok((want, want_host)), Ok(got)) => {
                    assert_eq!(got.len, want.len, "step {step}");
                    assert_eq!(&host[..got.len], &want_host[..], "step {step}");
                    assert_eq!((got.rows, got.decode_seqs), (want.rows, want.decode_seqs));
                    accepted += 1;
                }
                (Err(_), Err(_)) => {
                    assert_eq!(host, before, "a refused step {step} wrote to the buffer");
                    refused += 1;
                }
                (want, got) => panic!(
                    "step {step}: fresh {:?} in place {:?}",
                    want.is_ok(),
                    got.is_ok()
                ),
            }
        }
        assert!(
            accepted > 2000 && refused > 50,
            "{accepted} accepted, {refused} refused"
        );
    }
}
