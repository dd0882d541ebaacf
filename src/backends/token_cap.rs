//! The client's `max_tokens`, held against an upstream that ignores it.
//!
//! The request's completion budget is passed upstream, but an OpenAI-compatible server is not
//! bound by it: some ignore it, some apply their own default instead. What the client asked for
//! is a contract the gateway keeps, so the remote backend's stream goes through [`TokenCap`],
//! which counts each choice's tokens and, past the budget, ends that choice with
//! `finish_reason: "length"` as an upstream that honoured it would have.
//!
//! Tokens are counted as the gateway counts a stream it has no usage for: one per delta that
//! carries output (text, a tool-call fragment), since a streaming upstream sends a delta per
//! token. The upstream's usage, which arrives only after the last token, cannot move the cut; where
//! a cut was made, the usage passed on says what the client received (the smaller of the
//! upstream's count and the tokens delivered), since that is the answer the client is charged for.
//! Once every choice is finished and one was cut, the stream ends at once, dropping the upstream
//! request so a runaway generation stops: its usage never arrives, so the usage passed on is the
//! tokens delivered and the gateway's estimate of the prompt.
//!
//! A whole `chat.completion` (an upstream that also ignored `stream: true`) has no deltas to count:
//! its content is cut only where the upstream's own usage says it went past the budget, at the
//! share of its text that the budget is of the upstream's count ([`cap_completion`]).

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_util::Stream;
use smallvec::SmallVec;

use super::EventStream;
use crate::api::types::{BackendEvent, ChoiceDelta, Usage};
use crate::error::Result;

/// The finish reason of a choice cut at the budget.
const LENGTH: &str = "length";

/// A backend stream with each choice cut at `limit` tokens.
pub struct TokenCap {
    /// `None` once the stream ended (dropping it drops the upstream request).
    inner: Option<EventStream>,
    limit: u64,
    /// How many choices the answer has (`n`).
    choices: u32,
    /// The gateway's estimate of the prompt, for the usage of a stream ended at a cut.
    prompt_estimate: u64,
    /// Per choice seen, in order of appearance (nearly always one).
    counts: SmallVec<[Count; 1]>,
    /// Events to hand out before reading on.
    pending: VecDeque<BackendEvent>,
    /// The upstream's usage has been passed on.
    usage_sent: bool,
}

/// What one choice has delivered.
#[derive(Debug, Clone, Copy)]
struct Count {
    index: u32,
    tokens: u64,
    finished: bool,
    cut: bool,
}

// === impl TokenCap ===

impl TokenCap {
    /// Caps `inner` at `limit` tokens per choice of an answer of `choices`.
    pub fn new(inner: EventStream, limit: u32, choices: u32, prompt_estimate: u64) -> Self {
        TokenCap {
            inner: Some(inner),
            limit: u64::from(limit),
            choices: choices.max(1),
            prompt_estimate,
            counts: SmallVec::new(),
            pending: VecDeque::new(),
            usage_sent: false,
        }
    }

    fn count(&mut self, index: u32) -> &mut Count {
        let at = match self.counts.iter().position(|c| c.index == index) {
            Some(at) => at,
            None => {
                self.counts.push(Count {
                    index,
                    tokens: 0,
                    finished: false,
                    cut: false,
                });
                self.counts.len() - 1
            }
        };
        &mut self.counts[at]
    }

    fn any_cut(&self) -> bool {
        self.counts.iter().any(|c| c.cut)
    }

    /// Tokens delivered over every choice.
    fn delivered(&self) -> u64 {
        self.counts.iter().map(|c| c.tokens).sum()
    }

    /// Every choice of the answer is finished, and one of them by a cut: nothing the upstream
    /// still sends can reach the client.
    fn over(&self) -> bool {
        let finished = (0..self.choices).all(|i| {
            self.counts
                .iter()
                .any(|c| c.index == i && (c.finished || c.cut))
        });
        finished && self.any_cut()
    }

    fn on_delta(&mut self, d: ChoiceDelta) {
        let limit = self.limit;
        let count = self.count(d.index);
        if count.cut {
            return;
        }
        if carries_output(&d) {
            if count.tokens >= limit {
                count.cut = true;
                let index = d.index;
                self.pending.push_back(BackendEvent::Delta(ChoiceDelta {
                    index,
                    finish_reason: Some(LENGTH.to_owned()),
                    ..ChoiceDelta::default()
                }));
                return;
            }
            count.tokens += 1;
        }
        if d.finish_reason.is_some() {
            count.finished = true;
        }
        self.pending.push_back(BackendEvent::Delta(d));
    }

    fn on_usage(&mut self, u: Usage) {
        let u = if self.any_cut() {
            Usage::new(u.prompt_tokens, u.completion_tokens.min(self.delivered()))
        } else {
            u
        };
        self.usage_sent = true;
        self.pending.push_back(BackendEvent::Usage(u));
    }

    /// Ends the stream after a cut: the upstream request is dropped, and the usage it will not
    /// send is the tokens delivered.
    fn end_at_cut(&mut self) {
        self.inner = None;
        if !self.usage_sent {
            self.usage_sent = true;
            let u = Usage::new(self.prompt_estimate, self.delivered());
            self.pending.push_back(BackendEvent::Usage(u));
        }
    }
}

impl Stream for TokenCap {
    type Item = Result<BackendEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(ev) = this.pending.pop_front() {
                return Poll::Ready(Some(Ok(ev)));
            }
            let Some(inner) = this.inner.as_mut() else {
                return Poll::Ready(None);
            };
            match inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.inner = None;
                    return Poll::Ready(None);
                }
                Poll::Ready(Some(Err(e))) => {
                    this.inner = None;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(Some(Ok(BackendEvent::Delta(d)))) => this.on_delta(d),
                Poll::Ready(Some(Ok(BackendEvent::Usage(u)))) => this.on_usage(u),
            }
            if this.inner.is_some() && this.over() {
                this.end_at_cut();
            }
        }
    }
}

// === whole completions ===

/// Cuts a whole completion's content where its usage says it went past `limit` (see the module
/// doc), and clamps the usage to match.
pub fn cap_completion(events: &mut [BackendEvent], limit: u32) {
    let limit = u64::from(limit);
    let Some(usage) = events.iter_mut().find_map(|e| match e {
        BackendEvent::Usage(u) => Some(u),
        BackendEvent::Delta(_) => None,
    }) else {
        return;
    };
    let counted = usage.completion_tokens;
    if counted <= limit {
        return;
    }
    *usage = Usage::new(usage.prompt_tokens, limit);
    for e in events.iter_mut() {
        let BackendEvent::Delta(d) = e else { continue };
        if let Some(text) = d.content.as_mut() {
            let keep = (text.len() as u128 * u128::from(limit) / u128::from(counted)) as usize;
            let mut at = keep.min(text.len());
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.truncate(at);
        }
        if d.finish_reason.is_some() {
            d.finish_reason = Some(LENGTH.to_owned());
        }
    }
}

fn carries_output(d: &ChoiceDelta) -> bool {
    d.content.as_deref().is_some_and(|c| !c.is_empty()) || !d.extra.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn text(index: u32, s: &str) -> BackendEvent {
        BackendEvent::Delta(ChoiceDelta {
            index,
            content: Some(s.into()),
            ..ChoiceDelta::default()
        })
    }

    fn finish(index: u32, reason: &str) -> BackendEvent {
        BackendEvent::Delta(ChoiceDelta {
            index,
            finish_reason: Some(reason.into()),
            ..ChoiceDelta::default()
        })
    }

    fn role() -> BackendEvent {
        BackendEvent::Delta(ChoiceDelta {
            role: Some("assistant".into()),
            content: Some(String::new()),
            ..ChoiceDelta::default()
        })
    }

    /// What the cap lets out of `events`, and how many of them it read.
    async fn capped(
        events: Vec<BackendEvent>,
        limit: u32,
        choices: u32,
    ) -> (Vec<BackendEvent>, usize) {
        let read = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = read.clone();
        let inner: EventStream = Box::pin(futures_util::stream::iter(events).map(move |e| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(e)
        }));
        let out: Vec<_> = TokenCap::new(inner, limit, choices, 9)
            .map(|e| e.unwrap())
            .collect()
            .await;
        (out, read.load(std::sync::atomic::Ordering::SeqCst))
    }

    #[tokio::test]
    async fn a_runaway_choice_ends_at_the_limit_with_length_and_the_upstream_is_left() {
        let mut events = vec![role()];
        events.extend((0..100).map(|_| text(0, "tok ")));
        events.push(finish(0, "stop"));
        events.push(BackendEvent::Usage(Usage::new(4, 100)));
        let (out, read) = capped(events, 3, 1).await;
        assert_eq!(
            out,
            vec![
                role(),
                text(0, "tok "),
                text(0, "tok "),
                text(0, "tok "),
                finish(0, "length"),
                BackendEvent::Usage(Usage::new(9, 3)),
            ]
        );
        assert_eq!(
            read, 5,
            "nothing is read past the first token over the limit"
        );
    }

    #[tokio::test]
    async fn an_answer_within_the_limit_passes_unchanged() {
        for limit in [2, 3] {
            let events = vec![
                role(),
                text(0, "a"),
                text(0, "b"),
                finish(0, "stop"),
                BackendEvent::Usage(Usage::new(4, 2)),
            ];
            let (out, _) = capped(events.clone(), limit, 1).await;
            assert_eq!(out, events, "limit {limit}");
        }
        // Finishing on the last token of the budget is the upstream honouring it.
        let events = vec![text(0, "a"), text(0, "b"), finish(0, "length")];
        assert_eq!(capped(events.clone(), 2, 1).await.0, events);
    }

    #[tokio::test]
    async fn choices_are_counted_apart_and_usage_after_a_cut_is_what_was_delivered() {
        let events = vec![
            text(0, "a"),
            text(1, "x"),
            text(0, "b"),
            text(0, "c"),
            finish(1, "stop"),
            text(0, "d"),
            BackendEvent::Usage(Usage::new(4, 40)),
        ];
        let (out, _) = capped(events, 2, 2).await;
        assert_eq!(
            out,
            vec![
                text(0, "a"),
                text(1, "x"),
                text(0, "b"),
                finish(0, "length"),
                finish(1, "stop"),
                BackendEvent::Usage(Usage::new(9, 3)),
            ]
        );
        // With a choice still open, the upstream's usage comes through, clamped.
        let events = vec![
            text(0, "a"),
            text(0, "b"),
            text(1, "x"),
            BackendEvent::Usage(Usage::new(4, 40)),
        ];
        let (out, _) = capped(events, 1, 2).await;
        assert_eq!(out.last(), Some(&BackendEvent::Usage(Usage::new(4, 2))));
    }

    #[test]
    fn a_whole_completion_is_cut_only_where_its_usage_went_past_the_limit() {
        let completion = |text: &str, tokens: u64| {
            vec![
                BackendEvent::Delta(ChoiceDelta {
                    role: Some("assistant".into()),
                    content: Some(text.into()),
                    ..ChoiceDelta::default()
                }),
                finish(0, "stop"),
                BackendEvent::Usage(Usage::new(1, tokens)),
            ]
        };
        let mut events = completion("aaaa bbbb cccc dddd", 4);
        cap_completion(&mut events, 2);
        let BackendEvent::Delta(d) = &events[0] else {
            panic!()
        };
        assert_eq!(d.content.as_deref(), Some("aaaa bbbb"));
        assert_eq!(events[1], finish(0, "length"));
        assert_eq!(events[2], BackendEvent::Usage(Usage::new(1, 2)));
        // A char boundary is respected.
        let mut events = completion("ééé", 3);
        cap_completion(&mut events, 1);
        let BackendEvent::Delta(d) = &events[0] else {
            panic!()
        };
        assert_eq!(d.content.as_deref(), Some("é"));
        let untouched = completion("aaaa bbbb", 2);
        let mut events = untouched.clone();
        cap_completion(&mut events, 2);
        assert_eq!(events, untouched);
    }
}
