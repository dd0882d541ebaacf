//! One candidate pattern and the check that confirms it.
//!
//! Every detector (a user's regex, a PII entity, a secret format, an injection signal) is reduced
//! to the same shape, a [`ProbeSpec`]: a bounded pattern, an optional validator that turns a
//! candidate into a confidence, and context words. The engine compiles all of a direction's probes
//! into one scan; this module only describes them and scores a candidate.

/// Bytes before a candidate searched for context words.
pub const CONTEXT_BEFORE: usize = 40;

/// Confirms a candidate: `None` rejects it, `Some(confidence)` keeps it with that base confidence.
pub type Validate = fn(&Candidate<'_>) -> Option<f32>;

/// A detector as the engine sees it.
#[derive(Clone)]
pub struct ProbeSpec {
    /// The entity reported in findings (`email`, `aws_access_key`, `keyword`, …).
    pub entity: &'static str,
    /// The default redaction label.
    pub label: &'static str,
    /// Rust regex syntax. A named group `value` narrows the reported span to that group.
    pub pattern: String,
    pub validate: Option<Validate>,
    /// Words that raise confidence when found just before a candidate.
    pub positive: &'static [&'static str],
    /// Words that lower it.
    pub negative: &'static [&'static str],
    /// Bytes after a match the validator looks at; a streamed match waits for them.
    pub after: usize,
    /// For injection signals: what the candidate adds to the rule's score.
    pub weight: f32,
    /// Shannon entropy (bits per character) the reported span needs.
    pub min_entropy: Option<f32>,
}

/// A candidate match, with the text around it.
pub struct Candidate<'a> {
    hay: &'a str,
    start: usize,
    end: usize,
    after: usize,
}

// === impl ProbeSpec ===

impl ProbeSpec {
    pub fn new(entity: &'static str, pattern: &str) -> Self {
        ProbeSpec {
            entity,
            label: "[REDACTED]",
            pattern: pattern.to_string(),
            validate: None,
            positive: &[],
            negative: &[],
            after: 0,
            weight: 1.0,
            min_entropy: None,
        }
    }

    pub fn label(mut self, label: &'static str) -> Self {
        self.label = label;
        self
    }

    pub fn validate(mut self, f: Validate) -> Self {
        self.validate = Some(f);
        self
    }

    pub fn context(
        mut self,
        positive: &'static [&'static str],
        negative: &'static [&'static str],
    ) -> Self {
        self.positive = positive;
        self.negative = negative;
        self
    }

    pub fn after(mut self, bytes: usize) -> Self {
        self.after = bytes;
        self
    }

    pub fn min_entropy(mut self, bits: f32) -> Self {
        self.min_entropy = Some(bits);
        self
    }

    pub fn weight(mut self, w: f32) -> Self {
        self.weight = w;
        self
    }

    /// The candidate's confidence after context words, or `None` if the validator rejects it.
    pub fn score(&self, c: &Candidate<'_>, extra_positive: &[String]) -> Option<f32> {
        if let Some(min) = self.min_entropy {
            if super::secrets::entropy(c.text()) < min {
                return None;
            }
        }
        let base = match self.validate {
            Some(f) => f(c)?,
            None => 1.0,
        };
        if self.positive.is_empty() && self.negative.is_empty() && extra_positive.is_empty() {
            return Some(base);
        }
        let before = c.before().to_lowercase();
        let mut score = base;
        if self
            .positive
            .iter()
            .copied()
            .chain(extra_positive.iter().map(String::as_str))
            .any(|w| contains_word(&before, w))
        {
            score += 0.35;
        }
        if self.negative.iter().any(|w| contains_word(&before, w)) {
            score -= 0.5;
        }
        Some(score.clamp(0.0, 1.0))
    }
}

/// Whether `word` occurs in `hay` not glued to letters or digits on either side.
fn contains_word(hay: &str, word: &str) -> bool {
    let word = word.to_lowercase();
    if word.is_empty() {
        return false;
    }
    hay.match_indices(&word).any(|(i, _)| {
        let before_ok = !hay[..i]
            .chars()
            .next_back()
            .is_some_and(char::is_alphanumeric);
        let after_ok = !hay[i + word.len()..]
            .chars()
            .next()
            .is_some_and(char::is_alphanumeric);
        before_ok && after_ok
    })
}

// === impl Candidate ===

impl<'a> Candidate<'a> {
    /// `start..end` must lie on character boundaries of `hay`.
    pub fn new(hay: &'a str, start: usize, end: usize, after: usize) -> Self {
        Candidate {
            hay,
            start,
            end,
            after,
        }
    }

    /// The candidate itself.
    pub fn text(&self) -> &'a str {
        &self.hay[self.start..self.end]
    }

    /// Up to [`CONTEXT_BEFORE`] bytes before the candidate.
    pub fn before(&self) -> &'a str {
        let from = floor_boundary(self.hay, self.start.saturating_sub(CONTEXT_BEFORE));
        &self.hay[from..self.start]
    }

    /// The `after` bytes following the candidate (rounded up to a whole character).
    pub fn after(&self) -> &'a str {
        let to = ceil_boundary(self.hay, (self.end + self.after).min(self.hay.len()));
        &self.hay[self.end..to]
    }
}

/// The largest character boundary at or before `i`.
pub fn floor_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The smallest character boundary at or after `i`.
pub fn ceil_boundary(s: &str, i: usize) -> usize {
    let mut i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_words_need_word_edges() {
        assert!(contains_word("my ssn is", "ssn"));
        assert!(!contains_word("getting", "tin"));
        assert!(contains_word("order #", "#"));
    }

    #[test]
    fn candidate_context_is_char_aligned() {
        let hay = "é".repeat(30) + "X" + "ü";
        let start = hay.len() - 3;
        let c = Candidate::new(&hay, start, start + 1, 1);
        assert_eq!(c.text(), "X");
        assert_eq!(c.after(), "ü");
        assert!(c.before().chars().all(|ch| ch == 'é'));
    }
}
