//! Which rows of the last hidden state the vocabulary projection needs, as runs of
//! consecutive rows, so an eager step gathers them with one copy a run instead of one a row.
//!
//! An eager step with prefill chunks needs the logits of every decode row (rows
//! `0..decodes`, consecutive) and of the last row of each chunk that reaches its prompt's
//! end. Copying them row by row cost one `cuMemcpyDtoDAsync` a row: ~300 copies of 8 KB in a
//! ShareGPT step of 300 decodes, each a separate operation on the stream.

/// `len` rows from `src` (in the step's rows) to `dst` (in the gathered rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RowRun {
    pub dst: usize,
    pub src: usize,
    pub len: usize,
}

/// `rows[i]` is the step row whose logits go to row `i`; consecutive step rows that land on
/// consecutive gathered rows become one run.
pub(super) fn row_runs(rows: &[usize]) -> Vec<RowRun> {
    let mut runs: Vec<RowRun> = Vec::new();
    for (dst, &src) in rows.iter().enumerate() {
        match runs.last_mut() {
            Some(run) if run.src + run.len == src && run.dst + run.len == dst => run.len += 1,
            _ => runs.push(RowRun { dst, src, len: 1 }),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rows_and_chunk_ends_make_one_run_each() {
        // 4 decodes, then chunks of 3 and 5 tokens, both reaching their prompts' ends.
        let runs = row_runs(&[0, 1, 2, 3, 6, 11]);
        assert_eq!(
            runs,
            vec![
                RowRun {
                    dst: 0,
                    src: 0,
                    len: 4
                },
                RowRun {
                    dst: 4,
                    src: 6,
                    len: 1
                },
                RowRun {
                    dst: 5,
                    src: 11,
                    len: 1
                },
            ]
        );
    }

    #[test]
    fn every_row_is_copied_exactly_once() {
        let rows = [2, 3, 4, 9, 10, 40];
        let mut out = vec![usize::MAX; rows.len()];
        for r in row_runs(&rows) {
            for j in 0..r.len {
                assert_eq!(
                    out[r.dst + j],
                    usize::MAX,
                    "row {} written twice",
                    r.dst + j
                );
                out[r.dst + j] = r.src + j;
            }
        }
        assert_eq!(out, rows);
        assert!(row_runs(&[]).is_empty());
    }
}
