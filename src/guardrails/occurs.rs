//! Which of a direction's patterns occur in a text at all.
//!
//! On clean text the answer is "none" and the scan ends there, so this one pass is what most text
//! costs. It is a forward lazy DFA over every pattern at once that reports each pattern matching
//! anywhere after an offset. A `RegexSet` gives the same answer, but it also compiles the reversed
//! NFA and keeps caches for engines this question never needs, twice the memory for the same
//! search.
//!
//! The automaton answers for the patterns *widened*: each wide bounded repetition (`{8,2048}`)
//! made unbounded (`{8,}`). A widened pattern matches wherever the pattern does, so no pattern
//! that occurs is missed, and the scan confirms every reported pattern with its own regex, so
//! text that only the widened form matches costs one search and changes no decision. What it
//! buys is size: a bounded repetition compiles to one NFA state per repetition, and each search
//! cache holds sets as large as the NFA. With the shipped policy the input automaton goes from
//! 1.4 MB to a tenth of that, and each scanning thread's cache shrinks with it.
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
use regex_syntax::hir::{Hir, HirKind, Repetition};

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

/// What a lazy DFA weighs: its NFA, and the cache of the calling thread as its searches left it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    pub nfa_states: usize,
    pub nfa_bytes: usize,
    pub cache_bytes: usize,
}

impl Footprint {
    pub(super) fn of(dfa: &DFA, caches: &Caches) -> Self {
        let nfa = dfa.get_nfa();
        Footprint {
            nfa_states: nfa.states().len(),
            nfa_bytes: nfa.memory_usage(),
            cache_bytes: caches.get().memory_usage(),
        }
    }
}

/// The patterns that occur, by index.
#[derive(Debug, Clone)]
pub(crate) struct Found(PatternSet);

// === impl Occurs ===

impl Occurs {
    /// Compiles `patterns` (the `regex` crate's syntax), widened, into one automaton.
    pub fn new(
        patterns: &[&str],
        nfa_size_limit: usize,
        cache_capacity: usize,
    ) -> Result<Self, String> {
        let widened = patterns
            .iter()
            .map(|p| super::prefix::parse(p).map(|h| widen(&h)))
            .collect::<Result<Vec<_>, _>>()?;
        let nfa = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .which_captures(WhichCaptures::None)
                    .nfa_size_limit(Some(nfa_size_limit)),
            )
            .build_many_from_hir(&widened)
            .map_err(|e| e.to_string())?;
        let dfa = DFA::builder()
            .configure(lazy_dfa_config(cache_capacity))
            .build_from_nfa(nfa)
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

    /// The patterns whose widened form has a match starting at or after `from` (every pattern
    /// with a match there, and perhaps others); text before `from` is still seen by look-behind
    /// assertions such as `\b`.
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

    /// The automaton's size, and this thread's cache for it.
    pub fn footprint(&self) -> Footprint {
        Footprint::of(&self.dfa, &self.caches)
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

/// Repetitions whose count can vary by at least this much are made unbounded by [`widen`]; the
/// narrower ones cost few states and widening them would only make clean text look suspect.
const WIDEN_SPAN: u32 = 16;

/// `hir` with every wide bounded repetition made unbounded, and no capture groups: a pattern
/// that matches wherever `hir` does, with an NFA that no longer grows with the bound.
fn widen(hir: &Hir) -> Hir {
    match hir.kind() {
        HirKind::Repetition(rep) => Hir::repetition(Repetition {
            min: rep.min,
            max: rep
                .max
                .filter(|&max| max.saturating_sub(rep.min) < WIDEN_SPAN),
            greedy: rep.greedy,
            sub: Box::new(widen(&rep.sub)),
        }),
        HirKind::Capture(c) => widen(&c.sub),
        HirKind::Concat(items) => Hir::concat(items.iter().map(widen).collect()),
        HirKind::Alternation(items) => Hir::alternation(items.iter().map(widen).collect()),
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) | HirKind::Look(_) => hir.clone(),
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
    fn wide_repetitions_are_widened_and_nothing_that_occurs_is_missed() {
        let pats = [
            r"(?-u:\b)eyJ[A-Za-z0-9_\-]{8,1024}\.eyJ[A-Za-z0-9_\-]{8,2048}",
            r"x[0-9]{2,4}y",
            r"a(?:b{1,40}c){0,20}d",
        ];
        let run = |n: usize| "b".repeat(n);
        let texts = [
            "eyJabcdefgh.eyJabcdefgh".to_string(),
            format!("eyJ{}.eyJabcdefgh", "q".repeat(1100)),
            "x12y and x12345y".to_string(),
            format!("a{}cd", run(40)),
            format!("a{}cd", run(41)),
            format!("a{}d", format!("{}c", run(3)).repeat(25)),
            "plain text".to_string(),
        ];
        for hay in &texts {
            let (ours, set) = both(&pats, hay, 0);
            for (i, (o, s)) in ours.iter().zip(&set).enumerate() {
                assert!(o | !s, "pattern {i} occurs in {hay:?} but was not reported");
            }
        }
        // What only a widened form matches is reported too, for the scan to confirm: a run past
        // a wide bound, a repeated group past its count. A narrow repetition keeps its bound.
        let (ours, set) = both(&pats, &texts[1], 0);
        assert_eq!((ours[0], set[0]), (true, false));
        let (ours, set) = both(&pats, &texts[4], 0);
        assert_eq!((ours[2], set[2]), (true, false));
        let (ours, set) = both(&pats, &texts[5], 0);
        assert_eq!((ours[2], set[2]), (true, false));
        assert_eq!(both(&pats, "x12345y", 0), (vec![false; 3], vec![false; 3]));
        // The automaton no longer grows with a wide bound.
        let states = |p: &str| {
            let o = Occurs::new(&[p], 64 << 20, 1 << 20).unwrap();
            o.dfa.get_nfa().states().len()
        };
        assert_eq!(states("ab{1,40}c"), states("ab{1,4000}c"));
        assert!(states("ab{1,4}c") < states("ab{1,15}c"));
    }

    #[test]
    fn out_of_range_indexes_are_not_matched() {
        let ours = Occurs::new(&["a"], 1 << 20, 1 << 20).unwrap();
        assert!(ours.matches_at("a", 0).matched(0));
        assert!(!ours.matches_at("a", 0).matched(1));
        assert!(!ours.matches_at("a", 0).matched(usize::MAX));
    }
}
