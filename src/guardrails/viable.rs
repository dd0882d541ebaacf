//! The hold-back search: the earliest byte from which the text seen so far could still grow into
//! a match.
//!
//! [`super::prefix`] turns every pattern into the regex of its prefixes. The question the
//! streaming scanner asks of a buffer is always the same: from which offset on is the rest of the
//! buffer such a prefix? That is one search backwards from the end of the buffer, so only the
//! reversed automaton is built: a lazy DFA over the reversed NFA that runs back from the end and
//! remembers the last (leftmost) offset at which it was in a matching state.
//!
//! A `meta::Regex` would answer the same question, but it also compiles the forward NFA and keeps
//! caches for every engine that runs on it. Bounded repetitions (`{8,2048}`) compile to one NFA
//! state per repetition and the closure holds most patterns twice, so this automaton is the
//! largest a policy has; building half of it, and one cache per thread instead of six, is most of
//! what a loaded policy costs in memory.
//!
//! The lazy DFA cannot decide a Unicode word boundary next to a non-ASCII byte; a search that meets
//! one is answered by a `meta::Regex` of the same closure, compiled the first time it is needed.

use std::sync::{Arc, OnceLock};

use regex_automata::hybrid::dfa::DFA;
use regex_automata::meta;
use regex_automata::nfa::thompson::{self, WhichCaptures};
use regex_automata::{Anchored, Input};
use regex_syntax::hir::{Hir, Look};

use super::occurs::{caches, lazy_dfa_config, Caches, Footprint};

/// The prefix closures of a direction's patterns, searched backwards from the end of a buffer.
pub(crate) struct Viable {
    dfa: Arc<DFA>,
    caches: Caches,
    /// Only when the closures hold a Unicode word boundary, which the lazy DFA may give up on.
    fallback: Option<Fallback>,
}

/// The closures, kept to compile a `meta::Regex` of them if a search ever needs it.
struct Fallback {
    hir: Arc<Hir>,
    nfa_size_limit: usize,
    regex: OnceLock<Result<meta::Regex, String>>,
}

// === impl Viable ===

impl Viable {
    /// Builds the search over `closures`, each the prefix closure of one pattern or keyword.
    pub fn new(
        closures: Vec<Hir>,
        nfa_size_limit: usize,
        cache_capacity: usize,
    ) -> Result<Self, String> {
        let hir = Hir::alternation(closures);
        let nfa = thompson::Compiler::new()
            .configure(
                thompson::Config::new()
                    .reverse(true)
                    .which_captures(WhichCaptures::None)
                    .nfa_size_limit(Some(nfa_size_limit)),
            )
            .build_from_hir(&hir)
            .map_err(|e| e.to_string())?;
        let dfa = DFA::builder()
            .configure(lazy_dfa_config(cache_capacity))
            .build_from_nfa(nfa)
            .map_err(|e| e.to_string())?;
        let dfa = Arc::new(dfa);
        let fallback = hir
            .properties()
            .look_set()
            .contains_word_unicode()
            .then(|| Fallback {
                hir: Arc::new(hir),
                nfa_size_limit,
                regex: OnceLock::new(),
            });
        Ok(Viable {
            caches: caches(&dfa),
            dfa,
            fallback,
        })
    }

    /// The earliest offset at or after `from` such that `hay[offset..]` is a prefix of some
    /// match; `hay.len()` when only the empty suffix is.
    pub fn earliest(&self, hay: &str, from: usize) -> usize {
        let input = Input::new(hay).range(from..).anchored(Anchored::Yes);
        let found = {
            let mut cache = self.caches.get();
            self.dfa.try_search_rev(&mut cache, &input)
        };
        match found {
            Ok(m) => m.map_or(hay.len(), |m| m.offset()),
            Err(_) => self.earliest_slow(hay, from),
        }
    }

    /// The automaton's size, and this thread's cache for it.
    pub fn footprint(&self) -> Footprint {
        Footprint::of(&self.dfa, &self.caches)
    }

    fn earliest_slow(&self, hay: &str, from: usize) -> usize {
        let Some(fb) = &self.fallback else {
            // Only a Unicode word boundary makes the lazy DFA give up, and then there is a
            // fallback; holding everything back is the safe answer if it ever happens otherwise.
            return from;
        };
        let re = fb.regex.get_or_init(|| {
            let hir = Hir::concat(vec![(*fb.hir).clone(), Hir::look(Look::End)]);
            meta::Regex::builder()
                .configure(
                    meta::Config::new()
                        .nfa_size_limit(Some(fb.nfa_size_limit))
                        // The PikeVM it falls back to needs the implicit group to report where
                        // a match starts.
                        .which_captures(WhichCaptures::Implicit),
                )
                .build_from_hir(&hir)
                .map_err(|e| e.to_string())
        });
        match re {
            Ok(re) => re
                .search(&Input::new(hay).range(from..))
                .map_or(hay.len(), |m| m.start()),
            // The same closures compiled as a lazy DFA, so this cannot fail; as above.
            Err(_) => from,
        }
    }
}

impl Clone for Viable {
    /// Shares the automaton, not the caches: a copy's searches fill caches of its own, which are
    /// freed with it.
    fn clone(&self) -> Self {
        Viable {
            dfa: Arc::clone(&self.dfa),
            caches: caches(&self.dfa),
            fallback: self.fallback.as_ref().map(|fb| Fallback {
                hir: Arc::clone(&fb.hir),
                nfa_size_limit: fb.nfa_size_limit,
                regex: OnceLock::new(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guardrails::prefix::{closure, parse};

    fn viable(patterns: &[&str]) -> Viable {
        let closures = patterns
            .iter()
            .map(|p| closure(&parse(p).unwrap()))
            .collect();
        Viable::new(closures, 64 << 20, 1 << 20).unwrap()
    }

    /// The same question put to a forward `meta::Regex` of the closures, anchored at the end.
    fn reference(patterns: &[&str], hay: &str, from: usize) -> usize {
        let closures: Vec<Hir> = patterns
            .iter()
            .map(|p| closure(&parse(p).unwrap()))
            .collect();
        let hir = Hir::concat(vec![Hir::alternation(closures), Hir::look(Look::End)]);
        let re = meta::Regex::builder().build_from_hir(&hir).unwrap();
        re.search(&Input::new(hay).range(from..))
            .map_or(hay.len(), |m| m.start())
    }

    #[test]
    fn finds_the_earliest_suffix_that_can_still_match() {
        let pats = [
            r"(?-u:\b)[A-Za-z0-9._%+\-]{1,64}@[A-Za-z0-9\-]{1,63}\.[A-Za-z]{2,24}",
            r"(?-u:\b)(?:[0-9][ \-]?){11,18}[0-9](?-u:\b)",
        ];
        let v = viable(&pats);
        let cases = [
            ("write to bob@exa", "bob@exa"),
            ("card 4111 1111 11", "4111 1111 11"),
            ("nothing to hold!", ""),
            // `.` may continue the local part of an address.
            ("nothing to hold.", "hold."),
            ("", ""),
            ("trailing word", "word"),
        ];
        for (hay, held) in cases {
            let at = v.earliest(hay, 0);
            assert_eq!(&hay[at..], held, "{hay:?}");
            assert_eq!(at, reference(&pats, hay, 0), "{hay:?}");
        }
    }

    #[test]
    fn never_reports_before_from() {
        let pats = [r"[a-z]{1,10}"];
        let v = viable(&pats);
        let hay = "abcdefgh";
        for from in 0..=hay.len() {
            assert_eq!(v.earliest(hay, from), from.min(hay.len()));
            assert_eq!(v.earliest(hay, from), reference(&pats, hay, from));
        }
        // Longer than any match: only the last ten letters can still be one.
        assert_eq!(v.earliest("abcdefghijklmnop", 0), 6);
    }

    #[test]
    fn unicode_word_boundaries_next_to_non_ascii_text_fall_back() {
        let pats = [r"\bgeheim[a-zäöü]{0,8}\b"];
        let v = viable(&pats);
        assert!(v.fallback.is_some());
        assert!(viable(&[r"(?-u:\b)geheim"]).fallback.is_none());
        for hay in ["das ist geheimä", "Straße geh", "ÄÖÜ geheim", "plain geh"] {
            assert_eq!(v.earliest(hay, 0), reference(&pats, hay, 0), "{hay:?}");
        }
        assert_eq!(
            &"das ist geheimä"[v.earliest("das ist geheimä", 0)..],
            "geheimä"
        );
    }

    #[test]
    fn a_copy_shares_the_automaton_and_answers_the_same() {
        let pats = [r"[0-9]{3}-[0-9]{4}"];
        let v = viable(&pats);
        let c = v.clone();
        assert!(Arc::ptr_eq(&v.dfa, &c.dfa));
        assert_eq!(c.earliest("call 555-12", 0), v.earliest("call 555-12", 0));
        assert_eq!(&"call 555-12"[c.earliest("call 555-12", 0)..], "555-12");
    }
}
