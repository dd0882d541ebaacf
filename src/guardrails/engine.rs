//! The one-pass matcher and its incremental form.
//!
//! All of a direction's probes are compiled together: one automaton ([`super::occurs`]) tells in a
//! single pass which patterns occur at all (on clean text: none, and the scan ends there), one
//! Aho-Corasick automaton finds every keyword of every rule, and only the patterns that occur are
//! run again to locate their matches and validate them.
//!
//! The same code serves a whole text and a stream. [`Engine::advance`] is given the text seen so
//! far and reports only the matches that no further text can change; everything before the
//! returned *settled* position is final. A match is final when no suffix of the buffer that starts
//! at or before it can still grow into a match (see [`super::prefix`]) and the bytes its validator
//! looks at have arrived. A whole text is simply a stream that has finished, so both paths find
//! exactly the same matches.

use std::sync::Arc;

use aho_corasick::automaton::{Automaton, OverlappingState};
use aho_corasick::{dfa::DFA, Anchored, Input as AcInput, MatchKind, StartKind};

use regex::Regex;
use regex_syntax::hir::Hir;

use super::occurs::{Footprint, Found, Occurs};
use super::probe::{Candidate, ProbeSpec, CONTEXT_BEFORE};
use super::viable::Viable;
use super::Action;

/// Bounded repetitions (`{1,80}`) compile to one NFA state per repetition, so a policy of bounded
/// patterns needs more room than the `regex` defaults give.
const NFA_SIZE_LIMIT: usize = 256 << 20;
/// Lazy DFA cache per search; large enough that match-dense text does not thrash it.
const DFA_CACHE: usize = 16 << 20;

/// A compiled probe of one rule.
#[derive(Clone)]
pub(crate) struct Probe {
    pub rule: usize,
    pub spec: ProbeSpec,
    pub regex: Regex,
    /// The `value` capture group, when the reported span is narrower than the match.
    pub value_group: Option<usize>,
    pub extra_positive: Vec<String>,
    pub min_score: f32,
}

/// One keyword of one rule.
pub(crate) struct Keyword {
    pub rule: usize,
    pub text: String,
    pub case_sensitive: bool,
    pub whole_word: bool,
    pub entity: &'static str,
    pub label: &'static str,
    pub weight: f32,
}

/// All keywords of a direction in one automaton.
struct Keywords {
    dfa: DFA,
    entries: Vec<Keyword>,
    max_len: usize,
}

/// A confirmed match of one probe or keyword, in absolute byte offsets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Hit {
    /// Probe index, or `probes.len() + keyword index`.
    pub source: usize,
    pub rule: usize,
    pub start: usize,
    pub end: usize,
    pub weight: f32,
}

/// How far each matcher has got in a text, and the occurrence set its steps refill (kept so
/// that a streamed answer's steps do not allocate one each).
#[derive(Debug, Clone)]
pub(crate) struct ScanState {
    /// Per probe: every match starting before this offset has been reported.
    done: Vec<usize>,
    /// Every entry of `done` is the same offset (the usual case: no probe is mid-match), so the
    /// earliest of them is the first.
    uniform: bool,
    kw_done: usize,
    /// The patterns that occur in the unsettled text, refilled at each step.
    found: Option<Found>,
}

/// `(from, viable)` pairs computed during one step, on the stack: a step asks for a handful of
/// offsets at most (one per probe that has not settled), and a state kept per open stream
/// should not hold a buffer for it. When full, further offsets are computed, not remembered.
struct Memo {
    pairs: [(usize, usize); 8],
    len: usize,
}

/// A direction's probes, compiled. A clone shares every automaton but none of the search caches.
#[derive(Clone)]
pub(crate) struct Engine {
    pub probes: Vec<Probe>,
    set: Option<Occurs>,
    /// The prefix closures of every probe, ending at the end of the text.
    viable: Option<Viable>,
    /// Whether text is scanned as it streams. Requests are only ever checked whole, so the input
    /// engine has no hold-back automaton (1.5 MB of NFA with the shipped policy, never
    /// searched); streamed anyway, it would hold everything back until the end.
    streamed: bool,
    keywords: Option<Arc<Keywords>>,
    /// Bytes of already released text kept for look-behind and context words.
    pub lookbehind: usize,
}

/// Where a source's findings come from, for reports.
pub(crate) struct SourceInfo<'a> {
    pub entity: &'static str,
    pub label: &'a str,
}

// === impl Engine ===

impl Engine {
    /// Compiles probes and keywords; `hirs` are the probes' parsed patterns. Only a `streamed`
    /// engine can release text before the end, and only it builds the automaton that says what
    /// may be released.
    pub fn new(
        probes: Vec<Probe>,
        hirs: &[Hir],
        keywords: Vec<Keyword>,
        streamed: bool,
    ) -> Result<Self, String> {
        let set = if probes.is_empty() {
            None
        } else {
            let patterns: Vec<&str> = probes.iter().map(|p| p.spec.pattern.as_str()).collect();
            Some(Occurs::new(&patterns, NFA_SIZE_LIMIT, DFA_CACHE)?)
        };
        let viable = if streamed {
            hold_back(hirs, &keywords)?
        } else {
            None
        };
        let keywords = if keywords.is_empty() {
            None
        } else {
            let dfa = DFA::builder()
                .match_kind(MatchKind::Standard)
                .start_kind(StartKind::Both)
                .ascii_case_insensitive(true)
                .build(keywords.iter().map(|k| k.text.as_bytes()))
                .map_err(|e| e.to_string())?;
            let max_len = keywords.iter().map(|k| k.text.len()).max().unwrap_or(0);
            Some(Arc::new(Keywords {
                dfa,
                entries: keywords,
                max_len,
            }))
        };
        let after = probes.iter().map(|p| p.spec.after).max().unwrap_or(0);
        Ok(Engine {
            probes,
            set,
            viable,
            streamed,
            keywords,
            lookbehind: CONTEXT_BEFORE + 8 + after,
        })
    }

    /// A fresh state for a text starting at offset 0.
    pub fn start(&self) -> ScanState {
        ScanState {
            done: vec![0; self.probes.len()],
            uniform: true,
            kw_done: 0,
            found: self.set.as_ref().map(Occurs::none_found),
        }
    }

    /// The occurrence and hold-back automata's sizes, with this thread's caches for them.
    pub fn footprint(&self) -> (Option<Footprint>, Option<Footprint>) {
        (
            self.set.as_ref().map(Occurs::footprint),
            self.viable.as_ref().map(Viable::footprint),
        )
    }

    /// The entity and label of a hit's source.
    pub fn source(&self, source: usize) -> SourceInfo<'_> {
        match self.probes.get(source) {
            Some(p) => SourceInfo {
                entity: p.spec.entity,
                label: p.spec.label,
            },
            None => {
                let k = self
                    .keywords
                    .as_ref()
                    .and_then(|k| k.entries.get(source - self.probes.len()));
                SourceInfo {
                    entity: k.map_or("keyword", |k| k.entity),
                    label: k.map_or("[REDACTED]", |k| k.label),
                }
            }
        }
    }

    /// Reports every match that is final in `hay` (the text from absolute offset `base` to the
    /// end seen so far) and returns the settled offset: no match not yet reported can start before
    /// it. With `finished`, the text is complete and everything is final. `actions` holds the
    /// action of each rule; a rule without one (`None`) is not reported, though its probes
    /// still hold text back, which is safe, only slower.
    pub fn advance(
        &self,
        hay: &str,
        base: usize,
        st: &mut ScanState,
        finished: bool,
        actions: &[Option<Action>],
        out: &mut Vec<Hit>,
    ) -> usize {
        let n = base + hay.len();
        let ScanState {
            done,
            uniform,
            kw_done,
            found,
        } = st;
        let mut memo = Memo {
            pairs: [(0, 0); 8],
            len: 0,
        };
        let mut viable_from = |from: usize| -> usize {
            if finished {
                return n;
            }
            if let Some(&(_, v)) = memo.pairs[..memo.len].iter().find(|(f, _)| *f == from) {
                return v;
            }
            let v = match &self.viable {
                None if !self.streamed => from,
                None => n,
                Some(viable) => viable.earliest(hay, from - base) + base,
            };
            if let Some(slot) = memo.pairs.get_mut(memo.len) {
                *slot = (from, v);
                memo.len += 1;
            }
            v
        };
        let mut settled = n;
        if let (Some(set), Some(matched)) = (&self.set, found) {
            let from = if *uniform {
                done.first().copied()
            } else {
                done.iter().copied().min()
            }
            .unwrap_or(n);
            set.matches_into(hay, from - base, matched);
            *uniform = *uniform || done.iter().all(|&d| d == from);
            if matched.is_empty() && *uniform {
                // The common step (a token of plain text): no probe can match anywhere from
                // `from` on and every probe has scanned up to it, so one viability check stands
                // for the one each probe would make.
                let v = viable_from(from);
                done.fill(v);
                settled = settled.min(v);
            } else {
                *uniform = false;
                for (i, probe) in self.probes.iter().enumerate() {
                    let mut pos = done[i];
                    if !matched.matched(i) {
                        let v = viable_from(pos);
                        done[i] = v;
                        settled = settled.min(v);
                        continue;
                    }
                    loop {
                        let found = match probe.value_group {
                            None => probe.regex.find_at(hay, pos - base).map(|m| {
                                let (s, e) = (m.start() + base, m.end() + base);
                                (s, e, s, e)
                            }),
                            Some(g) => probe.regex.captures_at(hay, pos - base).and_then(|c| {
                                let m = c.get(0)?;
                                let (s, e) = (m.start() + base, m.end() + base);
                                let v = c
                                    .get(g)
                                    .map_or((s, e), |v| (v.start() + base, v.end() + base));
                                Some((s, e, v.0, v.1))
                            }),
                        };
                        let Some((s, e, fs, fe)) = found else {
                            let v = viable_from(pos);
                            done[i] = v;
                            settled = settled.min(v);
                            break;
                        };
                        let v = viable_from(pos);
                        if s >= v {
                            done[i] = v;
                            settled = settled.min(v);
                            break;
                        }
                        if !finished && fe + probe.spec.after > n {
                            // Final match, but its validator needs bytes that have not arrived.
                            done[i] = s;
                            settled = settled.min(s);
                            break;
                        }
                        if actions.get(probe.rule).is_some_and(Option::is_some) {
                            let cand = Candidate::new(hay, fs - base, fe - base, probe.spec.after);
                            if let Some(score) = probe.spec.score(&cand, &probe.extra_positive) {
                                if score >= probe.min_score && fe > fs {
                                    out.push(Hit {
                                        source: i,
                                        rule: probe.rule,
                                        start: fs,
                                        end: fe,
                                        weight: probe.spec.weight,
                                    });
                                }
                            }
                        }
                        // Patterns that match the empty string are refused at compile time; the
                        // guard keeps a bug from looping forever.
                        pos = if e > pos {
                            e
                        } else {
                            next_char(hay, base, pos)
                        };
                        if pos >= n {
                            done[i] = n;
                            break;
                        }
                    }
                }
            }
        }
        if let Some(kw) = &self.keywords {
            let v = if finished {
                n
            } else {
                kw.viable_from(hay, base, (*kw_done).max(n.saturating_sub(kw.max_len)))
            };
            kw.report(
                hay,
                base,
                *kw_done,
                v,
                finished,
                actions,
                self.probes.len(),
                out,
            );
            *kw_done = v.max(*kw_done);
            settled = settled.min(*kw_done);
        }
        settled
    }
}

fn next_char(hay: &str, base: usize, pos: usize) -> usize {
    let rel = pos - base;
    let step = hay[rel..].chars().next().map_or(1, char::len_utf8);
    pos + step
}

/// The automaton that says how much of a stream may be released: the prefix closures of every
/// probe and keyword, or `None` when there are none.
fn hold_back(hirs: &[Hir], keywords: &[Keyword]) -> Result<Option<Viable>, String> {
    let mut prefixes: Vec<Hir> = hirs.iter().map(super::prefix::closure).collect();
    for k in keywords {
        // Keywords are held back like patterns; their closure is case-folded, which is wider
        // than a case-sensitive keyword needs and so only errs towards holding back.
        let lit = regex_syntax::escape(&k.text);
        let hir = super::prefix::parse(&format!("(?i){lit}"))?;
        prefixes.push(super::prefix::closure(&hir));
    }
    if prefixes.is_empty() {
        return Ok(None);
    }
    Viable::new(prefixes, NFA_SIZE_LIMIT, DFA_CACHE).map(Some)
}

// === impl Keywords ===

impl Keywords {
    /// The earliest offset at or after `from` where the rest of the buffer could still begin a
    /// keyword (or is one waiting for its word boundary).
    fn viable_from(&self, hay: &str, base: usize, from: usize) -> usize {
        let n = base + hay.len();
        let bytes = hay.as_bytes();
        let mut p = from.max(base);
        while p < n {
            if hay.is_char_boundary(p - base) && self.alive(&bytes[p - base..]) {
                return p;
            }
            p += 1;
        }
        n
    }

    fn alive(&self, tail: &[u8]) -> bool {
        let Ok(mut sid) = self.dfa.start_state(Anchored::Yes) else {
            return true;
        };
        for b in tail {
            sid = self.dfa.next_state(Anchored::Yes, sid, *b);
            if self.dfa.is_dead(sid) {
                return false;
            }
        }
        true
    }

    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        hay: &str,
        base: usize,
        from: usize,
        before: usize,
        finished: bool,
        actions: &[Option<Action>],
        offset: usize,
        out: &mut Vec<Hit>,
    ) {
        let input = AcInput::new(hay).range(from - base..);
        let mut state = OverlappingState::start();
        let mut found: Vec<Hit> = Vec::new();
        loop {
            if self.dfa.try_find_overlapping(&input, &mut state).is_err() {
                break;
            }
            let Some(m) = state.get_match() else { break };
            let (s, e) = (m.start() + base, m.end() + base);
            if s >= before {
                continue;
            }
            let k = &self.entries[m.pattern().as_usize()];
            if !actions.get(k.rule).is_some_and(Option::is_some) {
                continue;
            }
            let text = &hay[m.start()..m.end()];
            if k.case_sensitive && text != k.text {
                continue;
            }
            if k.whole_word {
                let word = |c: char| c.is_alphanumeric() || c == '_';
                let first = text.chars().next().is_some_and(word);
                let last = text.chars().next_back().is_some_and(word);
                let prev = hay[..m.start()].chars().next_back().is_some_and(word);
                let next = hay[m.end()..].chars().next().is_some_and(word);
                // At the end of an unfinished buffer the next character is unknown; such a
                // match is still viable and was excluded by `before` above.
                debug_assert!(finished || m.end() < hay.len() || !last);
                if (first && prev) || (last && next) {
                    continue;
                }
            }
            found.push(Hit {
                source: offset + m.pattern().as_usize(),
                rule: k.rule,
                start: s,
                end: e,
                weight: k.weight,
            });
        }
        out.extend(found);
    }
}
