//! Stop strings that may span token boundaries.

/// Result of feeding text to a [`StopMatcher`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// No stop string yet; `emit` is safe to send (it cannot begin a stop string).
    Continue { emit: String },
    /// A stop string matched; `emit` is the text before it. Nothing more is ever emitted.
    Stopped { emit: String },
}

/// Finds the first stop string in a stream of text pieces, holding back any tail that
/// could still grow into one.
#[derive(Debug, Clone)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet emitted: always a possible start of some stop string.
    pending: String,
    stopped: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored (they would match before any text).
    pub fn new(stops: Vec<String>) -> Self {
        Self {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
            stopped: false,
        }
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stopped {
            return StopOutcome::Stopped {
                emit: String::new(),
            };
        }
        self.pending.push_str(text);
        if let Some(start) = self.first_match() {
            self.pending.truncate(start);
            self.stopped = true;
            return StopOutcome::Stopped {
                emit: std::mem::take(&mut self.pending),
            };
        }
        let keep = self.partial_match_len();
        let rest = self.pending.split_off(self.pending.len() - keep);
        StopOutcome::Continue {
            emit: std::mem::replace(&mut self.pending, rest),
        }
    }

    /// The held-back tail at the end of generation (empty after a stop).
    pub fn flush(&mut self) -> String {
        if self.stopped {
            return String::new();
        }
        std::mem::take(&mut self.pending)
    }

    /// Byte offset of the earliest stop string in `pending`.
    fn first_match(&self) -> Option<usize> {
        self.stops
            .iter()
            .filter_map(|stop| self.pending.find(stop.as_str()))
            .min()
    }

    /// Length of the longest suffix of `pending` that is a proper prefix of a stop string.
    fn partial_match_len(&self) -> usize {
        let text = self.pending.as_str();
        let longest_stop = self.stops.iter().map(String::len).max().unwrap_or(0);
        let mut best = 0;
        for (start, _) in text.char_indices().rev() {
            let suffix_len = text.len() - start;
            if suffix_len >= longest_stop {
                break;
            }
            let suffix = &text[start..];
            if self.stops.iter().any(|stop| stop.starts_with(suffix)) {
                best = suffix_len;
            }
        }
        best
    }
}
