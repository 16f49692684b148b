//! The step budget of `--scheduling-policy lof-paced`.
//!
//! A batch queued all at once runs at least as many steps as its longest answer has tokens
//! (one token a step), and on a GPU every step costs at least one read of the weights however
//! few rows it has. Front-loading the work into full-budget steps leaves those last steps nearly
//! empty (the longest answers decoding alone); spreading it evenly over them costs less, because
//! a step's cost grows faster than its rows once its GEMMs pass the point where the weight
//! reads stop hiding the arithmetic (~256 rows for Llama-3-8B on an H100). Measured on one H100,
//! 1,000 ShareGPT prompts whose longest answer is 1,856 tokens: 10,725 output tok/s with a
//! fixed budget of 256 against 10,124 with 512; but a draw whose longest answer is 1,045 tokens
//! needs ~400 rows a step, and there a fixed 256 made 11,767 against 13,324-13,430 at 512 (other
//! H100s; docs/perf.md, "Afternoon, 2026-11-27"). So the budget follows the queue: the rows
//! still to compute over the steps the longest answer still needs, with some slack.

/// The smallest paced budget: below the GEMMs' ridge a step costs about the same whatever its
/// rows, so a smaller budget would save nothing and only delay the queue (and an answer that
/// stops long before its `max_tokens` would otherwise slow every step down to a trickle).
pub const MIN_PACED_BUDGET: usize = 256;

/// Slack over the even spread, in eighths (1/8: 12.5%): a budget of exactly rows / steps
/// lets the run overrun the longest answer (the last admitted prompts still need their own
/// steps after their prefill); measured, 256 beat 240 and 224 on a draw whose even spread is
/// 229 rows. `PAGEDSERVE_PACING_SLACK` (eighths, 0-64; for measurements) overrides it.
const SLACK_EIGHTHS: usize = 1;

fn slack_eighths() -> usize {
    static SLACK: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SLACK.get_or_init(|| {
        std::env::var("PAGEDSERVE_PACING_SLACK")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .filter(|&e| e <= 64)
            .unwrap_or(SLACK_EIGHTHS)
    })
}

/// Paced budgets are whole multiples of this many rows: cuBLAS's Hopper GEMMs tile the token
/// dimension by 64-128, so a step of 385 rows costs what one of 512 does (H100, 2026-11-27: a
/// draw paced at ~400 rows a step ran 5% slower than fixed 512-row steps in the same number of
/// steps, and a fixed budget of 288 11% slower than 256).
pub const PACED_QUANTUM: usize = 128;

/// What the queue still holds: rows to compute, steps its longest answer needs, and running
/// sequences that decode in the next step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Backlog {
    pub rows: usize,
    pub steps: usize,
    pub decodes: usize,
}

impl Backlog {
    /// Adds a sequence with `uncomputed` tokens still to run through the model (its prompt,
    /// or its last token when it decodes) and `tokens_left` tokens still to generate: it needs
    /// `uncomputed + tokens_left - 1` more rows (the last token is never fed back) over at
    /// least `tokens_left` steps.
    pub fn add(&mut self, uncomputed: usize, tokens_left: usize) {
        self.rows += (uncomputed + tokens_left).saturating_sub(1);
        self.steps = self.steps.max(tokens_left);
    }
}

/// The next step's token budget: `backlog.rows` spread over `backlog.steps` steps plus the
/// slack ([`SLACK_EIGHTHS`]), rounded to the nearest multiple of [`PACED_QUANTUM`] that still
/// covers the even spread; at least every running decode and [`MIN_PACED_BUDGET`], at most
/// `max_batch_tokens`.
pub fn paced_budget(backlog: Backlog, max_batch_tokens: usize) -> usize {
    let steps = backlog.steps.max(1);
    let even = backlog.rows.div_ceil(steps);
    let spread = (backlog.rows * (8 + slack_eighths())).div_ceil(8 * steps);
    let mut paced = (spread + PACED_QUANTUM / 2) / PACED_QUANTUM * PACED_QUANTUM;
    if paced < even {
        paced += PACED_QUANTUM;
    }
    paced
        .max(backlog.decodes)
        .max(MIN_PACED_BUDGET)
        .min(max_batch_tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_the_rows_over_the_longest_answers_steps() {
        // The first-4,000 ShareGPT draw: 424,371 rows, longest answer 1,856 tokens.
        let b = Backlog {
            rows: 424_371,
            steps: 1_856,
            decodes: 0,
        };
        // Even spread 229, with slack 258: 256.
        assert_eq!(paced_budget(b, 8192), 256);
        // Longest answer 1,045: even 407, with slack 457: 512 (384 would not cover 407).
        assert_eq!(paced_budget(Backlog { steps: 1_045, ..b }, 8192), 512);
        assert_eq!(paced_budget(Backlog { steps: 1_045, ..b }, 400), 400);
        // Even 300, with slack 338: 384, the nearest multiple of 128.
        let b = Backlog {
            rows: 300_000,
            steps: 1_000,
            decodes: 0,
        };
        assert_eq!(paced_budget(b, 8192), 384);
    }

    #[test]
    fn never_below_the_floor_or_the_running_decodes() {
        let few = Backlog {
            rows: 1_000,
            steps: 4_000,
            decodes: 0,
        };
        assert_eq!(paced_budget(few, 8192), MIN_PACED_BUDGET);
        assert_eq!(paced_budget(few, 100), 100);
        assert_eq!(
            paced_budget(
                Backlog {
                    decodes: 700,
                    ..few
                },
                8192
            ),
            700
        );
        assert_eq!(paced_budget(Backlog::default(), 8192), MIN_PACED_BUDGET);
    }

    #[test]
    fn a_sequence_needs_its_prompt_and_all_but_its_last_token() {
        let mut b = Backlog::default();
        b.add(200, 50); // waiting: 200 prompt rows, then 49 decode rows
        b.add(1, 10); // decoding: 10 more rows
        b.add(1, 0); // finished
        assert_eq!(
            b,
            Backlog {
                rows: 249 + 10,
                steps: 50,
                decodes: 0
            }
        );
    }
}
