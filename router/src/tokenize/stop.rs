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

#[cfg(test)]
mod tests {
    use super::*;

    fn cont(s: &str) -> StopOutcome {
        StopOutcome::Continue { emit: s.into() }
    }

    fn stopped(s: &str) -> StopOutcome {
        StopOutcome::Stopped { emit: s.into() }
    }

    #[test]
    fn stop_inside_one_piece() {
        let mut m = StopMatcher::new(vec!["STOP".into()]);
        assert_eq!(m.push("abc STOP def"), stopped("abc "));
        assert_eq!(m.push("more"), stopped(""));
        assert_eq!(m.flush(), "");
        assert!(m.is_stopped());
    }

    #[test]
    fn stop_spanning_pieces_is_held_then_cut() {
        let mut m = StopMatcher::new(vec!["\n\nUser:".into()]);
        assert_eq!(m.push("Hello"), cont("Hello"));
        assert_eq!(m.push(" there\n"), cont(" there"));
        assert_eq!(m.push("\nUs"), cont(""));
        assert_eq!(m.push("er: hi"), stopped(""));
    }

    #[test]
    fn held_prefix_is_released_when_it_stops_matching() {
        let mut m = StopMatcher::new(vec!["<end>".into()]);
        assert_eq!(m.push("a <en"), cont("a "));
        assert_eq!(m.push("joy"), cont("<enjoy"));
        assert_eq!(m.push("<"), cont(""));
        assert_eq!(m.flush(), "<");
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        let mut m = StopMatcher::new(vec!["world".into(), "lo w".into(), String::new()]);
        assert_eq!(m.push("hello world"), stopped("hel"));
        let mut m = StopMatcher::new(vec!["bc".into(), "abcd".into()]);
        assert_eq!(m.push("xa"), cont("x"));
        // "abcd" starts before "bc", so it is the match.
        assert_eq!(m.push("bcd"), stopped(""));
        let mut m = StopMatcher::new(vec!["bc".into(), "abcd".into()]);
        assert_eq!(m.push("xabce"), stopped("xa"));
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        let mut m = StopMatcher::new(vec!["語の".into()]);
        assert_eq!(m.push("日本語"), cont("日本"));
        assert_eq!(m.push("で"), cont("語で"));
        assert_eq!(m.push("語の"), stopped(""));
        let mut m = StopMatcher::new(vec!["😀!".into()]);
        assert_eq!(m.push("hi 😀"), cont("hi "));
        assert_eq!(m.flush(), "😀");
    }

    #[test]
    fn no_stops_passes_everything_through() {
        let mut m = StopMatcher::new(Vec::new());
        assert_eq!(m.push("anything"), cont("anything"));
        assert_eq!(m.flush(), "");
    }

    #[test]
    fn concatenation_is_the_text_before_the_stop() {
        // Feed a text char by char and check the output is exactly its prefix before the stop.
        let text = "The answer is 42.\n###\nignored";
        let mut m = StopMatcher::new(vec!["\n###".into(), "zzz".into()]);
        let mut out = String::new();
        for c in text.chars() {
            match m.push(&c.to_string()) {
                StopOutcome::Continue { emit } => out.push_str(&emit),
                StopOutcome::Stopped { emit } => {
                    out.push_str(&emit);
                    break;
                }
            }
        }
        assert_eq!(out, "The answer is 42.");
    }
}
