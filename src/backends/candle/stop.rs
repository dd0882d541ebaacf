//! Stop sequences over a stream of text pieces.
//!
//! A stop sequence can span several tokens ("\n\nUser:" may arrive as "\n", "\nUser", ":"), and
//! its text must not reach the client. So text is held back, but only the tail that could still
//! grow into a stop sequence: everything before that tail is safe to send at once, which keeps
//! streaming latency unchanged for the common case where no stop sequence is near.

/// What [`StopMatcher::push`] decided for one piece of text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// Text that is safe to send now (may be empty).
    Continue(String),
    /// A stop sequence was found: send this text (what preceded the stop sequence) and finish.
    Stop(String),
}

/// Finds stop sequences in streamed text.
#[derive(Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    /// Text received but not yet released.
    pending: String,
}

// === impl StopMatcher ===

impl StopMatcher {
    pub fn new(stops: Vec<String>) -> Self {
        StopMatcher {
            stops: stops.into_iter().filter(|s| !s.is_empty()).collect(),
            pending: String::new(),
        }
    }

    /// Adds generated text.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        if self.stops.is_empty() {
            return StopOutcome::Continue(text.to_owned());
        }
        self.pending.push_str(text);
        // The earliest match wins: the text before it is all the client may see.
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = found {
            let before = self.pending[..at].to_owned();
            self.pending.clear();
            return StopOutcome::Stop(before);
        }
        let keep_from = self.holdback_start();
        let out = self.pending[..keep_from].to_owned();
        self.pending.drain(..keep_from);
        StopOutcome::Continue(out)
    }

    /// The text still held back; sent when generation ends for another reason.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// The start of the longest suffix of `pending` that is a proper prefix of a stop sequence.
    fn holdback_start(&self) -> usize {
        for (i, _) in self.pending.char_indices() {
            let tail = &self.pending[i..];
            if self.stops.iter().any(|s| s.starts_with(tail)) {
                return i;
            }
        }
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (Vec<String>, bool) {
        let mut m = StopMatcher::new(stops.iter().map(|s| s.to_string()).collect());
        let mut sent = Vec::new();
        for p in pieces {
            match m.push(p) {
                StopOutcome::Continue(t) => sent.push(t),
                StopOutcome::Stop(t) => {
                    sent.push(t);
                    return (sent, true);
                }
            }
        }
        sent.push(m.finish());
        (sent, false)
    }

    #[test]
    fn stop_spanning_tokens_is_cut_and_not_sent() {
        let (sent, stopped) = run(&["\nUser:"], &["Hello", " there\n", "Us", "er:", " more"]);
        assert!(stopped);
        assert_eq!(sent.concat(), "Hello there");
        // "Hello" goes out at once; " there" is released before the "\n" is known to be a stop.
        assert_eq!(sent[0], "Hello");
        assert_eq!(sent[1], " there");
    }

    #[test]
    fn holds_back_only_a_possible_prefix() {
        let mut m = StopMatcher::new(vec!["END".into()]);
        assert_eq!(m.push("abcE"), StopOutcome::Continue("abc".into()));
        // "EN" could still become "END".
        assert_eq!(m.push("N"), StopOutcome::Continue(String::new()));
        // "ENx" cannot: all of it is released.
        assert_eq!(m.push("x"), StopOutcome::Continue("ENx".into()));
        assert_eq!(m.finish(), "");
    }

    #[test]
    fn false_start_is_released_at_the_end() {
        let (sent, stopped) = run(&["###"], &["a#", "#"]);
        assert!(!stopped);
        assert_eq!(sent.concat(), "a##");
    }

    #[test]
    fn earliest_of_several_stops_wins_and_multibyte_is_safe() {
        let (sent, stopped) = run(&["ü!", "b"], &["aé", "ü", "!b"]);
        assert!(stopped);
        assert_eq!(sent.concat(), "aé");
    }

    #[test]
    fn no_stops_passes_through() {
        let (sent, stopped) = run(&[], &["x", "y"]);
        assert!(!stopped);
        assert_eq!(sent, vec!["x", "y", ""]);
    }
}
