//! Text normalisation for the matching scorers.
//!
//! A model that answers `Paris.` to "What is the capital of France?" is right; one that answers
//! `paris` is too. Golden sets are written by people, answers by models, and the two rarely agree on
//! case, spacing or a final full stop, so the lenient scorers compare normalised text. Each step is
//! optional so a suite can keep what matters to it (a code answer keeps its punctuation).
//!
//! Punctuation is every character that is neither a letter, a digit nor white space, in any script
//! (`¿`, `。` and `«` as well as ASCII), so a symbol such as `€` or an emoji is removed too.

/// Which differences a comparison ignores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Normalise {
    /// Compare lower-cased text (Unicode case folding by `to_lowercase`).
    pub ignore_case: bool,
    /// Trim and collapse every run of white space to one space.
    pub collapse_whitespace: bool,
    /// Remove punctuation and symbols (see the module doc).
    pub strip_punctuation: bool,
}

// === impl Normalise ===

impl Normalise {
    /// Every step on: what the `normalised` scorer does by default.
    pub const ALL: Normalise = Normalise {
        ignore_case: true,
        collapse_whitespace: true,
        strip_punctuation: true,
    };

    /// Case and spacing only: the default of the `contains` family, whose needles may carry
    /// punctuation that matters (`3.14`, `C++`).
    pub const LENIENT: Normalise = Normalise {
        ignore_case: true,
        collapse_whitespace: true,
        strip_punctuation: false,
    };

    /// Nothing but the surrounding white space, which no answer means.
    pub const NONE: Normalise = Normalise {
        ignore_case: false,
        collapse_whitespace: false,
        strip_punctuation: false,
    };

    /// The text with the chosen differences removed.
    pub fn apply(&self, text: &str) -> String {
        let mut out = String::with_capacity(text.len());
        // A removed punctuation mark separates words (`yes,no`), so it becomes a space when
        // spacing is collapsed anyway, and is dropped otherwise.
        for c in text.chars() {
            if self.strip_punctuation && is_punctuation(c) {
                if self.collapse_whitespace {
                    out.push(' ');
                }
                continue;
            }
            if self.ignore_case {
                out.extend(c.to_lowercase());
            } else {
                out.push(c);
            }
        }
        if self.collapse_whitespace {
            collapse(&out)
        } else {
            out.trim().to_owned()
        }
    }
}

/// Punctuation in the sense of the module doc.
pub fn is_punctuation(c: char) -> bool {
    !c.is_alphanumeric() && !c.is_whitespace()
}

/// Trimmed, every run of white space one space.
pub fn collapse(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// SQuAD's answer normalisation, for token overlap: lower case, punctuation and the articles
/// `a`, `an`, `the` removed, split on white space.
pub fn squad_tokens(text: &str) -> Vec<String> {
    Normalise::ALL
        .apply(text)
        .split(' ')
        .filter(|w| !w.is_empty() && !matches!(*w, "a" | "an" | "the"))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_step_is_separate() {
        let t = "  Hello,   World!\n";
        assert_eq!(Normalise::NONE.apply(t), "Hello,   World!");
        assert_eq!(Normalise::LENIENT.apply(t), "hello, world!");
        assert_eq!(Normalise::ALL.apply(t), "hello world");
        let punct_only = Normalise {
            strip_punctuation: true,
            ..Normalise::NONE
        };
        assert_eq!(punct_only.apply("yes,no."), "yesno");
    }

    #[test]
    fn unicode_case_and_punctuation() {
        assert_eq!(Normalise::ALL.apply("¿QUÉ?  «Straße»。"), "qué straße");
        assert_eq!(Normalise::ALL.apply("ÀÉÎ"), "àéî");
        assert_eq!(Normalise::ALL.apply(""), "");
        assert_eq!(Normalise::ALL.apply("?!."), "");
    }

    #[test]
    fn squad_drops_articles_and_punctuation() {
        assert_eq!(
            squad_tokens("The Eiffel tower, a landmark."),
            ["eiffel", "tower", "landmark"]
        );
        assert!(squad_tokens("  the a an ").is_empty());
    }
}
