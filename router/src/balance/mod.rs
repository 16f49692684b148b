//! Shard choice: the least outstanding load wins.

/// A shard's load as the router sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardLoad {
    /// Accepts work: connected, healthy, Serve stream open.
    pub ready: bool,
    /// Tokens held in the KV cache per the last `ShardStats` (blocks in use × block size).
    pub kv_tokens: u64,
    /// Prompt tokens sent since, whose sequences have not produced output yet.
    pub pending_tokens: u64,
    /// Sequences this router has in flight there.
    pub sequences: u64,
}

impl ShardLoad {
    fn key(&self) -> (u64, u64) {
        (self.kv_tokens + self.pending_tokens, self.sequences)
    }
}

/// Index of the ready shard with the least load (tokens, then sequences, then index).
pub fn pick(loads: &[ShardLoad]) -> Option<usize> {
    loads
        .iter()
        .enumerate()
        .filter(|(_, l)| l.ready)
        .min_by_key(|(i, l)| (l.key(), *i))
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(ready: bool, kv: u64, pending: u64, seqs: u64) -> ShardLoad {
        ShardLoad {
            ready,
            kv_tokens: kv,
            pending_tokens: pending,
            sequences: seqs,
        }
    }

    #[test]
    fn least_tokens_wins() {
        let loads = [
            load(true, 64, 10, 1),
            load(true, 16, 0, 3),
            load(true, 32, 0, 0),
        ];
        assert_eq!(pick(&loads), Some(1));
    }

    #[test]
    fn pending_tokens_count_like_kv() {
        let loads = [load(true, 0, 100, 1), load(true, 48, 0, 1)];
        assert_eq!(pick(&loads), Some(1));
    }

    #[test]
    fn down_shards_are_skipped() {
        let loads = [load(false, 0, 0, 0), load(true, 1000, 0, 9)];
        assert_eq!(pick(&loads), Some(1));
        assert_eq!(pick(&[load(false, 0, 0, 0)]), None);
        assert_eq!(pick(&[]), None);
    }

    #[test]
    fn ties_break_on_sequences_then_index() {
        let loads = [
            load(true, 0, 0, 2),
            load(true, 0, 0, 1),
            load(true, 0, 0, 1),
        ];
        assert_eq!(pick(&loads), Some(1));
    }
}
