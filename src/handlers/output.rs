//! Output guardrails on the delta stream.
//!
//! Every delta of choice 0 passes through the policy's streaming scanner before it is framed, so
//! streamed and collected answers are filtered by the same code. Text that could still become part
//! of a match is held back and released (redacted if need be) as soon as it cannot; a block ends
//! the answer with `finish_reason: "content_filter"` without releasing a byte of the blocked span.

use std::sync::Arc;
use std::time::Instant;

use crate::api::types::ChoiceDelta;
use crate::guardrails::OutputScanner;
use crate::routing::{ModelRouter, Target};

/// What the filter lets through for one backend delta. Almost always one delta or none, which
/// need no allocation; the end of an answer or a block can make up to three.
pub enum Deltas {
    One(Option<ChoiceDelta>),
    Many(std::vec::IntoIter<ChoiceDelta>),
}

impl Deltas {
    fn one(d: ChoiceDelta) -> Self {
        Deltas::One(Some(d))
    }

    fn none() -> Self {
        Deltas::One(None)
    }

    fn many(out: Vec<ChoiceDelta>) -> Self {
        Deltas::Many(out.into_iter())
    }
}

impl Iterator for Deltas {
    type Item = ChoiceDelta;

    fn next(&mut self) -> Option<ChoiceDelta> {
        match self {
            Deltas::One(d) => d.take(),
            Deltas::Many(it) => it.next(),
        }
    }
}

/// Filters one response's deltas; a no-op without a policy.
pub struct OutputFilter {
    scanner: Option<OutputScanner>,
    blocked: bool,
    flushed: bool,
    /// Where a block is reported, for the serving target's canary guard.
    served_by: Option<(Arc<ModelRouter>, Arc<Target>, Instant)>,
}

fn is_empty(d: &ChoiceDelta) -> bool {
    d.role.is_none()
        && d.content.as_deref().is_none_or(str::is_empty)
        && d.finish_reason.is_none()
        && d.extra.is_empty()
}

fn content(index: u32, text: String) -> ChoiceDelta {
    ChoiceDelta {
        index,
        content: Some(text),
        ..ChoiceDelta::default()
    }
}

impl OutputFilter {
    /// A filter over `scanner`, or a pass-through without one.
    pub fn new(scanner: Option<OutputScanner>) -> Self {
        OutputFilter {
            scanner,
            blocked: false,
            flushed: false,
            served_by: None,
        }
    }

    /// Reports a block to `target`'s canary guard, with the time since `started`.
    pub fn report_to(
        mut self,
        router: Arc<ModelRouter>,
        target: Arc<Target>,
        started: Instant,
    ) -> Self {
        self.served_by = Some((router, target, started));
        self
    }

    /// Whether a rule blocked the answer: nothing more may be sent but the end of the stream.
    pub fn blocked(&self) -> bool {
        self.blocked
    }

    /// The deltas to send for one backend delta (none, one, or released text then the finish).
    /// `clock` is a time the caller read just before (the delta's arrival); where the filter
    /// scans, it times the scan from there and moves `clock` to when the scan ended, which is
    /// when the deltas may leave.
    pub fn filter(&mut self, mut d: ChoiceDelta, clock: &mut Instant) -> Deltas {
        let Some(scanner) = self.scanner.as_mut() else {
            return Deltas::one(d);
        };
        if self.blocked {
            return Deltas::none();
        }
        if d.index != 0 {
            return Deltas::one(d);
        }
        if let Some(text) = d.content.take().filter(|t| !t.is_empty()) {
            let pushed = scanner.push_timed(text, clock);
            d.content = Some(pushed.release);
            if pushed.blocked {
                let mut out = Vec::with_capacity(2);
                self.block(d, &mut out);
                return Deltas::many(out);
            }
        } else if d.role.is_some() {
            d.content = d.content.or(Some(String::new()));
        }
        if d.finish_reason.is_some() {
            let mut out = Vec::with_capacity(3);
            let finish = d.finish_reason.take();
            if !is_empty(&d) {
                out.push(d);
            }
            let flushed = scanner.finish_timed(clock);
            self.flushed = true;
            let mut tail = content(0, flushed.release);
            if flushed.blocked {
                self.block(tail, &mut out);
                return Deltas::many(out);
            }
            tail.finish_reason = finish;
            tail.content = tail.content.filter(|t| !t.is_empty());
            out.push(tail);
            return Deltas::many(out);
        }
        if !is_empty(&d) || d.role.is_some() {
            Deltas::one(d)
        } else {
            Deltas::none()
        }
    }

    /// At the end of a backend stream that sent no finish reason: releases what was held.
    pub fn end(&mut self) -> Vec<ChoiceDelta> {
        if self.blocked || self.flushed {
            return Vec::new();
        }
        self.flushed = true;
        let Some(scanner) = self.scanner.as_mut() else {
            return Vec::new();
        };
        let flushed = scanner.finish();
        if flushed.blocked {
            let mut out = Vec::with_capacity(2);
            self.block(content(0, flushed.release), &mut out);
            return out;
        }
        let d = content(0, flushed.release);
        if is_empty(&d) {
            Vec::new()
        } else {
            vec![d]
        }
    }

    fn block(&mut self, released: ChoiceDelta, out: &mut Vec<ChoiceDelta>) {
        self.blocked = true;
        if let Some((router, target, started)) = &self.served_by {
            router.guardrail_tripped(target, started.elapsed());
        }
        if !is_empty(&released) {
            out.push(released);
        }
        out.push(ChoiceDelta {
            finish_reason: Some("content_filter".into()),
            ..ChoiceDelta::default()
        });
    }
}
