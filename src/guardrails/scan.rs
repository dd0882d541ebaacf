//! Scanning a text, whole or as it streams, and deciding what to release.
//!
//! A [`Scanner`] is fed text in pieces and answers each piece with the text that can be released
//! now. It holds back only what the engine has not settled (a suffix that may still become a
//! match), replaces redacted spans before they leave, and stops at the first blocked span, having
//! released everything before it. Streamed and non-streamed answers go through the same pushes;
//! a whole text (an input message) is one finished step of the same engine and decisions, which
//! the tests hold equal to the text streamed at every split.
//!
//! Decisions are made in text order over final matches only: the redaction label of overlapping
//! spans is the first span's, an injection rule's score accumulates match by match, and a block
//! cuts the text at its span, or at the start of a redacted span it falls inside.

use std::sync::Arc;

use super::compile::{Kind, Policy, Redaction};
use super::engine::{Hit, ScanState};
use super::probe::floor_boundary;
use super::{Action, Direction};

/// Released text kept behind the lookbehind before the window is trimmed.
const MIN_WINDOW: usize = 256;

/// One decision about a span of the text.
#[derive(Debug, Clone, PartialEq)]
pub struct Finding {
    /// Index of the rule in [`Policy::rules`].
    pub rule: usize,
    /// The entity (`email`, `aws_access_key`, `keyword`, `regex`, an injection signal).
    pub entity: &'static str,
    /// Byte offsets in the whole text.
    pub start: usize,
    pub end: usize,
    /// What was done.
    pub action: Action,
    /// A short excerpt around the span, with every finding of the policy labelled and anything
    /// else that could be data masked, safe to log ([`super::excerpt`]).
    pub excerpt: String,
}

/// What one push released.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Pushed {
    /// Text to send now, redactions applied.
    pub release: String,
    /// The text hit a block: send `release`, then end the response (`content_filter`).
    pub blocked: bool,
}

/// A redaction not yet written out.
#[derive(Debug, Clone)]
struct Group {
    start: usize,
    end: usize,
    rule: usize,
    source: usize,
}

/// Scans one text, incrementally.
pub struct Scanner {
    policy: Arc<Policy>,
    dir: Direction,
    /// The action of each rule, `None` where it does not apply.
    actions: Vec<Option<Action>>,
    /// The text from `base` to the end seen so far.
    buf: String,
    base: usize,
    /// Everything before this offset has been released (or replaced).
    released: usize,
    state: ScanState,
    /// Final hits not yet decided on, because a hit starting earlier may still be found.
    pending: Vec<Hit>,
    /// Injection score per rule; empty until the first injection signal (most texts have
    /// none, and a scanner is made per message and per response).
    scores: Vec<f32>,
    open: Option<Group>,
    findings: Vec<Finding>,
    blocked: Option<usize>,
    finished: bool,
    /// Whether findings carry an excerpt (off for the scan that builds an excerpt).
    excerpts: bool,
    /// Set while the last step runs: no more text follows what is in `buf`.
    ending: bool,
}

// === impl Scanner ===

impl Scanner {
    /// A scanner over `policy`'s engine for `dir` with per-rule `actions`.
    pub fn new(policy: Arc<Policy>, dir: Direction, actions: Vec<Option<Action>>) -> Self {
        let state = policy.engine(dir).start();
        Scanner {
            policy,
            dir,
            actions,
            buf: String::new(),
            base: 0,
            released: 0,
            state,
            pending: Vec::new(),
            scores: Vec::new(),
            open: None,
            findings: Vec::new(),
            blocked: None,
            finished: false,
            excerpts: true,
            ending: false,
        }
    }

    /// Scans a whole text: what it releases and everything found. One step over the finished
    /// text: the same decisions as a push and a finish (every match is final either way, and
    /// they are made in text order), without first working out what a stream would hold back.
    pub fn scan_text(
        policy: Arc<Policy>,
        dir: Direction,
        actions: Vec<Option<Action>>,
        text: &str,
    ) -> (Pushed, Vec<Finding>) {
        let mut s = Scanner::new(policy, dir, actions);
        s.buf.push_str(text);
        let out = s.finish();
        (out, s.take_findings())
    }

    /// Every finding of a whole text, without excerpts: what [`super::excerpt`] labels.
    pub(crate) fn scan_text_without_excerpts(
        policy: Arc<Policy>,
        dir: Direction,
        actions: Vec<Option<Action>>,
        text: &str,
    ) -> Vec<Finding> {
        let mut s = Scanner::new(policy, dir, actions);
        s.excerpts = false;
        s.buf.push_str(text);
        s.finish();
        s.take_findings()
    }

    /// Adds text; returns what may be released now.
    pub fn push(&mut self, text: &str) -> Pushed {
        self.push_owned(text.to_owned())
    }

    /// Adds text; returns what may be released now, written into `text`'s own allocation (a
    /// streamed token is usually released whole, so it costs no allocation of its own).
    pub fn push_owned(&mut self, mut text: String) -> Pushed {
        if self.blocked.is_some() || self.finished {
            return Pushed {
                release: String::new(),
                blocked: self.blocked.is_some(),
            };
        }
        if self.buf.capacity() == 0 {
            // Room for the window the scanner keeps (see `trim`), so a stream's tokens do not
            // grow it step by step.
            self.buf.reserve(text.len().max(2 * MIN_WINDOW));
        }
        self.buf.push_str(&text);
        text.clear();
        self.step(false, text)
    }

    /// Ends the text: releases whatever was held back.
    pub fn finish(&mut self) -> Pushed {
        if self.blocked.is_some() || self.finished {
            return Pushed {
                release: String::new(),
                blocked: self.blocked.is_some(),
            };
        }
        let out = self.step(true, String::new());
        self.finished = true;
        out
    }

    /// Findings decided since the last call.
    pub fn take_findings(&mut self) -> Vec<Finding> {
        std::mem::take(&mut self.findings)
    }

    /// The rule that blocked, if any.
    pub fn blocked_by(&self) -> Option<usize> {
        self.blocked
    }

    /// Bytes received but not yet released.
    pub fn held(&self) -> usize {
        self.base + self.buf.len() - self.released
    }

    /// Scans what was added; what may be released is appended to `out`.
    fn step(&mut self, finished: bool, mut out: String) -> Pushed {
        let policy = Arc::clone(&self.policy);
        let engine = policy.engine(self.dir);
        self.ending = finished;
        let settled = engine.advance(
            &self.buf,
            self.base,
            &mut self.state,
            finished,
            &self.actions,
            &mut self.pending,
        );
        // Decide on hits in text order; the ones at or after `settled` may still be preceded by a
        // hit not yet found, so they wait.
        self.pending.sort_by_key(|h| (h.start, h.source, h.end));
        let ready = self.pending.partition_point(|h| h.start < settled);
        let decide: Vec<Hit> = self.pending.drain(..ready).collect();
        for hit in decide {
            if self.decide(&policy, hit, &mut out) {
                self.trim();
                return Pushed {
                    release: out,
                    blocked: true,
                };
            }
        }
        // Release up to `settled`, except an open redaction that may still grow.
        let mut upto = settled;
        if let Some(g) = self.open.take() {
            if g.end <= settled {
                self.write_group(&policy, &g, &mut out);
            } else {
                upto = g.start;
                self.open = Some(g);
            }
        }
        if upto > self.released {
            let from = self.released - self.base;
            out.push_str(&self.buf[from..upto - self.base]);
            self.released = upto;
        }
        self.trim();
        Pushed {
            release: out,
            blocked: false,
        }
    }

    /// Applies one hit; returns true when it blocks.
    fn decide(&mut self, policy: &Arc<Policy>, hit: Hit, out: &mut String) -> bool {
        let rule = &policy.rules[hit.rule];
        let Some(action) = self.actions.get(hit.rule).copied().flatten() else {
            return false;
        };
        if rule.kind == Kind::Injection {
            if self.scores.is_empty() {
                self.scores = vec![0.0; policy.rules.len()];
            }
            let before = self.scores[hit.rule];
            self.scores[hit.rule] += hit.weight;
            if self.scores[hit.rule] < rule.threshold && before < rule.threshold {
                return false;
            }
        }
        self.record(policy, &hit, action);
        match action {
            Action::Flag => false,
            Action::Redact => {
                match &mut self.open {
                    Some(g) if hit.start < g.end => g.end = g.end.max(hit.end),
                    _ => {
                        if let Some(g) = self.open.take() {
                            self.write_group(policy, &g, out);
                        }
                        self.open = Some(Group {
                            start: hit.start,
                            end: hit.end,
                            rule: hit.rule,
                            source: hit.source,
                        });
                    }
                }
                false
            }
            Action::Block => {
                let mut cut = hit.start;
                if let Some(g) = self.open.take() {
                    if hit.start < g.end {
                        cut = g.start;
                    } else {
                        self.write_group(policy, &g, out);
                    }
                }
                if cut > self.released {
                    out.push_str(&self.buf[self.released - self.base..cut - self.base]);
                    self.released = cut;
                }
                self.blocked = Some(hit.rule);
                true
            }
        }
    }

    /// Writes the text before a redaction and its replacement.
    fn write_group(&mut self, policy: &Policy, g: &Group, out: &mut String) {
        if g.start > self.released {
            out.push_str(&self.buf[self.released - self.base..g.start - self.base]);
        }
        let from = g.start.max(self.released);
        let span = &self.buf[from - self.base..g.end - self.base];
        match &policy.rules[g.rule].redaction {
            Redaction::Mask(c) => out.extend(span.chars().map(|_| *c)),
            Redaction::Label(Some(l)) => out.push_str(l),
            Redaction::Label(None) => out.push_str(policy.engine(self.dir).source(g.source).label),
        }
        self.released = g.end;
    }

    fn record(&mut self, policy: &Arc<Policy>, hit: &Hit, action: Action) {
        let entity = policy.engine(self.dir).source(hit.source).entity;
        let excerpt = if self.excerpts {
            super::excerpt::build(
                policy,
                self.dir,
                &self.buf,
                self.base,
                hit.start..hit.end,
                entity,
                !self.ending,
            )
        } else {
            String::new()
        };
        self.findings.push(Finding {
            rule: hit.rule,
            entity,
            start: hit.start,
            end: hit.end,
            action,
            excerpt,
        });
    }

    /// Drops text that is released and no longer needed as context.
    fn trim(&mut self) {
        let keep_from = self
            .released
            .saturating_sub(self.policy.engine(self.dir).lookbehind);
        if keep_from > self.base + MIN_WINDOW {
            let cut = floor_boundary(&self.buf, keep_from - self.base);
            self.buf.drain(..cut);
            self.base += cut;
        }
    }
}
