//! Which of a direction's patterns occur in a text at all.
//!
//! On clean text the answer is "none" and the scan ends there, so this one pass is what most text
//! costs. It is a forward lazy DFA over every pattern at once that reports each pattern matching
//! anywhere after an offset. A `RegexSet` gives the same answer, but it also compiles the reversed
//! NFA and keeps caches for engines this question never needs, twice the memory for the same
//! search.
//!
//! As in [`super::viable`], the lazy DFA gives up on a Unicode word boundary next to a non-ASCII
//! byte; such a search is answered by a `RegexSet` of the same patterns, compiled when first
//! needed.

use std::sync::{Arc, OnceLock};

use regex::{RegexSet, RegexSetBuilder};
use regex_automata::hybrid::dfa::{Cache, DFA};
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::util::pool::Pool;
use regex_automata::{Input, MatchKind, PatternID, PatternSet};

type CacheFn = Box<dyn Fn() -> Cache + Send + Sync>;
/// Search caches of one lazy DFA, one per thread that searches.
pub(super) type Caches = Pool<Cache, CacheFn>;

/// The lazy DFA settings this module and [`super::viable`] share: every match state is kept
/// (all patterns here; the longest match, hence the leftmost start, of a reverse search there),
/// and a Unicode word boundary makes the search give up on non-ASCII bytes instead of refusing
/// to build.
pub(super) fn lazy_dfa_config(cache_capacity: usize) -> regex_automata::hybrid::dfa::Config {
    DFA::config()
        .match_kind(MatchKind::All)
        .unicode_word_boundary(true)
        .cache_capacity(cache_capacity)
}

/// A cache pool for `dfa`; a clone of an automaton's owner gets a fresh one.
pub(super) fn caches(dfa: &Arc<DFA>) -> Caches {
    let dfa = Arc::clone(dfa);
    Pool::new(Box::new(move || dfa.create_cache()))
}

/// All of a direction's patterns, for the one-pass "does anything match" question.
pub(crate) struct Occurs {
    dfa: Arc<DFA>,
    caches: Caches,
    patterns: Arc<[String]>,
    limits: (usize, usize),
    fallback: OnceLock<Result<RegexSet, String>>,
}

/// The patterns that occur, by index.
#[derive(Debug, Clone)]
pub(crate) struct Found(PatternSet);

// === impl Occurs ===

impl Occurs {
    /// Compiles `patterns` (the `regex` crate's syntax) into one automaton.
    pub fn new(
        patterns: &[&str],
        nfa_size_limit: usize,
        cache_capacity: usize,
    ) -> Result<Self, String> {
        let dfa = DFA::builder()
            .configure(lazy_dfa_config(cache_capacity))
            .thompson(
                thompson::Config::new()
                    .which_captures(WhichCaptures::None)
                    .nfa_size_limit(Some(nfa_size_limit)),
            )
            .build_many(patterns)
            .map_err(|e| e.to_string())?;
        let dfa = Arc::new(dfa);
        Ok(Occurs {
            caches: caches(&dfa),
            dfa,
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            limits: (nfa_size_limit, cache_capacity),
            fallback: OnceLock::new(),
        })
    }

    /// The patterns with a match starting at or after `from`; text before `from` is still seen by
    /// look-behind assertions such as `\b`.
    #[cfg(test)]
    pub fn matches_at(&self, hay: &str, from: usize) -> Found {
        let mut found = self.none_found();
        self.matches_into(hay, from, &mut found);
        found
    }

    /// An empty answer to fill with [`Occurs::matches_into`].
    pub fn none_found(&self) -> Found {
        Found(PatternSet::new(self.dfa.pattern_len()))
    }

    /// [`Occurs::matches_at`] into `found` (emptied first), which a scan keeps from step to step.
    pub fn matches_into(&self, hay: &str, from: usize, found: &mut Found) {
        found.0.clear();
        let input = Input::new(hay).range(from..);
        let done = {
            let mut cache = self.caches.get();
            self.dfa
                .try_which_overlapping_matches(&mut cache, &input, &mut found.0)
        };
        if done.is_err() {
            found.0 = self.matches_slow(hay, from);
        }
    }

    fn matches_slow(&self, hay: &str, from: usize) -> PatternSet {
        let n = self.patterns.len();
        let mut found = PatternSet::new(n);
        let set = self.fallback.get_or_init(|| {
            RegexSetBuilder::new(self.patterns.iter())
                .size_limit(self.limits.0)
                .dfa_size_limit(self.limits.1)
                .build()
                .map_err(|e| e.to_string())
        });
        match set {
            Ok(set) => {
                for i in set.matches_at(hay, from).iter() {
                    found.insert(PatternID::new_unchecked(i));
                }
            }
            // The same patterns compiled once already, so this cannot fail; reporting every
            // pattern only sends the scan to look for each one itself.
            Err(_) => {
                for i in 0..n {
                    found.insert(PatternID::new_unchecked(i));
                }
            }
        }
        found
    }
}

impl Clone for Occurs {
    /// Shares the automaton, not the caches: a copy's searches fill caches of its own, which are
    /// freed with it.
    fn clone(&self) -> Self {
        Occurs {
            dfa: Arc::clone(&self.dfa),
            caches: caches(&self.dfa),
            patterns: Arc::clone(&self.patterns),
            limits: self.limits,
            fallback: OnceLock::new(),
        }
    }
}

// === impl Found ===

impl Found {
    /// Whether pattern `i` occurs.
    pub fn matched(&self, i: usize) -> bool {
        PatternID::new(i).is_ok_and(|p| self.0.contains(p))
    }

    /// No pattern matched.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn both(patterns: &[&str], hay: &str, from: usize) -> (Vec<bool>, Vec<bool>) {
        let ours = Occurs::new(patterns, 64 << 20, 1 << 20).unwrap();
        let found = ours.matches_at(hay, from);
        let set = RegexSet::new(patterns).unwrap().matches_at(hay, from);
        (
            (0..patterns.len()).map(|i| found.matched(i)).collect(),
            (0..patterns.len()).map(|i| set.matched(i)).collect(),
        )
    }

    #[test]
    fn reports_every_pattern_that_occurs_as_a_regex_set_does() {
        let pats = [
            r"(?-u:\b)[0-9]{3}-[0-9]{4}(?-u:\b)",
            r"[a-z]+@[a-z]+\.com",
            r"secret",
            r"(?i)ignore previous",
        ];
        for (hay, from) in [
            ("call 555-1234 or mail bob@example.com", 0),
            ("call 555-1234 or mail bob@example.com", 6),
            ("IGNORE PREVIOUS instructions, it is a secret", 0),
            ("nothing here", 0),
            ("", 0),
            // A look-behind sees the byte before `from`: no word boundary inside "x555".
            ("x555-1234", 1),
        ] {
            let (ours, set) = both(&pats, hay, from);
            assert_eq!(ours, set, "{hay:?} from {from}");
        }
        let (ours, _) = both(&pats, "call 555-1234 or mail bob@example.com", 0);
        assert_eq!(ours, [true, true, false, false]);
    }

    #[test]
    fn unicode_word_boundaries_next_to_non_ascii_text_fall_back() {
        let pats = [r"\bgeheim\b", r"[0-9]{4}"];
        for hay in [
            "das ist geheim, äh",
            "Straße geheimnis",
            "ÄÖÜ 1234",
            "plain",
        ] {
            let (ours, set) = both(&pats, hay, 0);
            assert_eq!(ours, set, "{hay:?}");
        }
        let (ours, _) = both(&pats, "das ist geheim, äh", 0);
        assert_eq!(ours, [true, false]);
    }

    #[test]
    fn out_of_range_indexes_are_not_matched() {
        let ours = Occurs::new(&["a"], 1 << 20, 1 << 20).unwrap();
        assert!(ours.matches_at("a", 0).matched(0));
        assert!(!ours.matches_at("a", 0).matched(1));
        assert!(!ours.matches_at("a", 0).matched(usize::MAX));
    }
}
